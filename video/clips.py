"""Clip assembly: an upload decoded into the model's input, ``clips`` temporal clips × ``crops`` spatial crops."""

from __future__ import annotations

import dataclasses
import time

import torch

from clipwise.video.container import DEFAULT_LIMITS, Buffer, DecodeLimits, VideoInfo
from clipwise.video.decode import read_frames
from clipwise.video.parallel import SINGLE_THREAD, ThreadBudget
from clipwise.video.sampling import ClipSpec
from clipwise.video.transforms import CROP_COUNTS, make_views


@dataclasses.dataclass
class LoadedClips:
    """Model input made from an upload, with what it took to make it."""

    clips: torch.Tensor  # (clips * crops, 3, T, crop, crop) float32, normalised, clip-major
    info: VideoInfo
    frame_indices: list[list[int]]  # per temporal clip, the frame index of each of its T frames
    frames_decoded: int
    decode_ms: float
    preprocess_ms: float
    truncated: bool = False


def load_clips(
    data: Buffer,
    spec: ClipSpec,
    *,
    clips: int = 1,
    crops: int = 1,
    limits: DecodeLimits = DEFAULT_LIMITS,
    threads: ThreadBudget = SINGLE_THREAD,
) -> LoadedClips:
    """Decode an upload into ``clips`` temporal clips × ``crops`` spatial crops of model input, the frames
    converted straight to the model's short side (see ``read_frames``).

    Raises ``VideoError`` for input that cannot be used and ``ValueError`` for bad ``clips`` / ``crops``.
    """
    if clips < 1 or crops not in CROP_COUNTS:
        raise ValueError(f"clips must be positive and crops one of {CROP_COUNTS}; got {clips} and {crops}")
    decoded = read_frames(
        data,
        lambda num_frames: spec.frame_indices(num_frames, clips=clips),
        limits=limits,
        min_frames=spec.frames,
        threads=threads,
        short_side=spec.short_side,
    )
    started = time.perf_counter()
    frames, positions = decoded.stacked()
    views = make_views(frames, positions, spec, crops)
    return LoadedClips(
        clips=views,
        info=decoded.info,
        frame_indices=decoded.frame_indices,
        frames_decoded=decoded.frames_decoded,
        decode_ms=decoded.decode_ms,
        preprocess_ms=(time.perf_counter() - started) * 1000,
        truncated=decoded.truncated,
    )
