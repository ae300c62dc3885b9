"""Which frames of a video make a model's input clips.

Frame indices count frames in presentation order from 0. Two samplers:

- **segments** (TSN): the video is cut into T equal segments (float length num_frames / T) and one frame
  is taken from each. At test time it is the centre frame, ``int(tick * (k + 0.5))``, exactly TSM's
  ``_get_test_indices``. Training takes a uniformly random frame in each segment (TSM floors the segment
  length, which leaves up to T - 1 tail frames unsampled; the float segments here cover the whole video).
  Multi-clip testing with N clips takes, for clip j, the frame at fraction (j + 0.5) / N of every segment:
  N = 1 is the centre frame, N > 1 spreads the clips' offsets evenly within the segments (TSN's multi-clip
  test; TSM's ``twice_sample`` uses the fractions 0 and 0.5).
- **dense** (I3D, SlowFast, X3D): T frames ``stride`` apart, spanning (T - 1) * stride + 1 frames. At
  test time clip j of N is placed at fraction (j + 0.5) / N of the free room, so one clip sits at the
  centre (PySlowFast's single-view ``floor(delta / 2)``) and N clips are evenly spaced (mmaction2's
  ``SampleFrames`` test placement). Training starts the clip uniformly at random within the video. The
  stride counts frames of the decoded video; PySlowFast rescales it to a 30 fps target, Clipwise trains
  and serves on the same native frames instead.

Videos shorter than the clip: segments repeat frames evenly (TSM's test formula does so naturally; TSM's
training falls back to frame 0 for every segment, we keep the even spread); dense clips start at frame 0
and repeat the last frame for the indices past the end (PySlowFast clamps the same way).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SAMPLINGS = ("segments", "dense")


@dataclass(frozen=True)
class ClipSpec:
    """How a model's clips are made: the fields of ``clipwise.models.base.Preprocessing``, made from its
    ``to_dict()`` (``video`` may not import ``models``, so it checks what it is given itself)."""

    sampling: str  # "segments" or "dense"
    frames: int
    stride: int  # dense sampling: frames between samples (ignored by segments)
    short_side: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        # manifests come from JSON: lists become tuples so the spec stays hashable
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, not {self.sampling!r}")
        if min(self.frames, self.stride, self.crop_size) < 1:
            raise ValueError("frames, stride and crop_size must be positive")
        if self.crop_size > self.short_side:
            raise ValueError(f"crop_size {self.crop_size} is larger than short_side {self.short_side}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std positive")

    def frame_indices(
        self, num_frames: int, *, clips: int = 1, train: bool = False, rng: random.Random | None = None
    ) -> list[list[int]]:
        """The frame indices of each of ``clips`` temporal clips of a video of ``num_frames`` frames."""
        if self.sampling == "segments":
            return [
                segment_indices(num_frames, self.frames, clip=clip, clips=clips, train=train, rng=rng)
                for clip in range(clips)
            ]
        return [
            dense_indices(num_frames, self.frames, self.stride, clip=clip, clips=clips, train=train, rng=rng)
            for clip in range(clips)
        ]


def segment_indices(
    num_frames: int,
    segments: int,
    *,
    clip: int = 0,
    clips: int = 1,
    train: bool = False,
    rng: random.Random | None = None,
) -> list[int]:
    """One frame from each of ``segments`` equal segments (TSN); see the module docstring."""
    _check(num_frames, segments, clip, clips)
    tick = num_frames / segments
    if train:
        rng = rng or random.Random()
        fractions = [rng.random() for _ in range(segments)]
    else:
        fractions = [(clip + 0.5) / clips] * segments
    return [min(int(tick * (k + fraction)), num_frames - 1) for k, fraction in enumerate(fractions)]


def dense_indices(
    num_frames: int,
    frames: int,
    stride: int,
    *,
    clip: int = 0,
    clips: int = 1,
    train: bool = False,
    rng: random.Random | None = None,
) -> list[int]:
    """``frames`` frames ``stride`` apart (dense clip); see the module docstring."""
    _check(num_frames, frames, clip, clips)
    if stride < 1:
        raise ValueError(f"stride must be positive, not {stride}")
    room = max(num_frames - ((frames - 1) * stride + 1), 0)
    start = (rng or random.Random()).randint(0, room) if train else int(room * (clip + 0.5) / clips)
    return [min(start + k * stride, num_frames - 1) for k in range(frames)]


def _check(num_frames: int, frames: int, clip: int, clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample from {num_frames} frames")
    if frames < 1:
        raise ValueError(f"cannot sample {frames} frames")
    if not 0 <= clip < clips:
        raise ValueError(f"clip {clip} is not one of {clips} clips")
