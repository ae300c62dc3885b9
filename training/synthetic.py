"""The synthetic motion benchmark: real mp4 files whose labels live either in temporal order or in a still.

Eight *temporal* classes show one asymmetric object (an L shape) that moves left / right / up / down,
rotates clockwise / anticlockwise, grows or shrinks. Three *static* classes show a motionless circle, square
or triangle: one frame is enough. Everything else is random per clip — object colour and size, start
position, speed, a cluttered background (a smooth random colour field crossed by lines), per-frame sensor
noise and camera jitter — so that no pixel gives the answer away.

The direction of a temporal class lives only in the order of the frames. A single frame can hint at the
*axis*: an L far off centre is more likely a mover, an unusually large or small one is growing or shrinking.
So frame-averaging models (TSN) should solve the static classes and at best tell the four opposite pairs
apart (half of the temporal clips right); temporal models should solve both.

The default difficulty (noise, clutter, object size) is the synthetic benchmark's
(``benchmarks/synthetic.py``): TSM-R18-tiny reaches about 90% top-1 in ten epochs of 200 clips per class.
With noise 12, six clutter lines and objects of 0.12–0.18 frame widths it reached 88% only after twelve.

Output, in the layout of mmaction2's video lists::

    OUT/classes.txt                 one label per line, index = line number
    OUT/train.txt, OUT/val.txt      "videos/<label>/<split>_<i>.mp4 <index>" lines
    OUT/videos/<label>/*.mp4        MPEG-4 Part 2, yuv420p, constant quantiser

Clips are a function of (seed, split, label, index) alone: the same seed gives the same bytes. The codec
is FFmpeg's own MPEG-4 encoder because it is exactly reproducible: libx264 (even on one thread) gave
different bytes for the same frames depending on what the process had allocated before, measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEMPORAL_CLASSES = (
    "moving_left",
    "moving_right",
    "moving_up",
    "moving_down",
    "rotating_cw",
    "rotating_ccw",
    "growing",
    "shrinking",
)
STATIC_CLASSES = ("static_circle", "static_square", "static_triangle")
CLASSES = TEMPORAL_CLASSES + STATIC_CLASSES
SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SynthConfig:
    """Geometry and timing of the generated clips."""

    frames: int = 16
    size: int = 112
    fps: int = 8
    noise: float = 8.0  # standard deviation of per-frame pixel noise, in 0..255 units
    jitter: int = 2  # camera shake, in pixels
    clutter_lines: int = 4  # straight lines across the background
    object_scale: tuple[float, float] = (0.16, 0.24)  # range of the object's half size, in frame widths


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _convex_mask(xs: np.ndarray, ys: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Pixels inside a convex polygon given anticlockwise (in image coordinates: y down) vertices."""
    mask = np.ones(xs.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        mask &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return mask


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float32)


def _l_shape(xs, ys, cx: float, cy: float, scale: float, angle: float) -> np.ndarray:
    """An L made of two rectangles: asymmetric, so its rotation direction is visible."""
    stem = np.array([[-0.5, -1.0], [-0.5, 1.0], [0.0, 1.0], [0.0, -1.0]], dtype=np.float32)
    foot = np.array([[0.0, 0.5], [0.0, 1.0], [0.9, 1.0], [0.9, 0.5]], dtype=np.float32)
    mask = np.zeros(xs.shape, dtype=bool)
    for part in (stem, foot):
        vertices = _rotate(part * scale, angle) + np.array([cx, cy], dtype=np.float32)
        mask |= _convex_mask(xs, ys, vertices) | _convex_mask(xs, ys, vertices[::-1])
    return mask


def _static_shape(xs, ys, label: str, cx: float, cy: float, scale: float, angle: float) -> np.ndarray:
    if label == "static_circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= scale**2
    corners = 4 if label == "static_square" else 3
    turns = np.arange(corners, dtype=np.float32) * 2 * math.pi / corners + angle
    vertices = np.stack([cx + scale * np.cos(turns), cy + scale * np.sin(turns)], axis=1)
    return _convex_mask(xs, ys, vertices) | _convex_mask(xs, ys, vertices[::-1])


def _background(rng: np.random.Generator, cfg: SynthConfig, xs, ys) -> np.ndarray:
    """A smooth random colour field crossed by straight lines, larger than the frame to allow jitter.

    Clutter made of lines and gradients, never of closed shapes, so it cannot pass for a class object.
    """
    cells = 5
    coarse = rng.uniform(30, 225, size=(cells, cells, 3)).astype(np.float32)
    gx = xs / (xs.shape[1] - 1) * (cells - 1)
    gy = ys / (ys.shape[0] - 1) * (cells - 1)
    x0, y0 = np.minimum(gx.astype(int), cells - 2), np.minimum(gy.astype(int), cells - 2)
    fx, fy = (gx - x0)[..., None], (gy - y0)[..., None]
    canvas = (
        coarse[y0, x0] * (1 - fx) * (1 - fy)
        + coarse[y0, x0 + 1] * fx * (1 - fy)
        + coarse[y0 + 1, x0] * (1 - fx) * fy
        + coarse[y0 + 1, x0 + 1] * fx * fy
    )
    for _ in range(cfg.clutter_lines):
        angle = rng.uniform(0, math.pi)
        offset = rng.uniform(-0.5, 0.5) * xs.shape[1]
        centre = xs.shape[1] / 2
        distance = (xs - centre) * math.sin(angle) - (ys - centre) * math.cos(angle) - offset
        canvas[np.abs(distance) <= rng.uniform(0.5, 1.5)] = rng.uniform(0, 255, size=3)
    return canvas


def _contrasting_colour(rng: np.random.Generator, backdrop: np.ndarray) -> np.ndarray:
    """A random colour far from the backdrop's mean, so the object is always visible."""
    mean = backdrop.reshape(-1, 3).mean(axis=0)
    return (mean + 128 + rng.uniform(-40, 40, size=3)) % 256


def _object_masks(label: str, rng: np.random.Generator, cfg: SynthConfig, xs, ys) -> list[np.ndarray]:
    """One boolean mask per frame for the clip's object, in padded-canvas coordinates."""
    margin = cfg.jitter
    centre = margin + cfg.size / 2
    scale = rng.uniform(*cfg.object_scale) * cfg.size
    angle = rng.uniform(0, 2 * math.pi)
    cx, cy = centre + rng.uniform(-0.12, 0.12, size=2) * cfg.size
    progress = np.linspace(-0.5, 0.5, cfg.frames)
    if label in STATIC_CLASSES:
        return [_static_shape(xs, ys, label, cx, cy, scale, angle)] * cfg.frames
    travel = rng.uniform(0.35, 0.55) * cfg.size
    spin = rng.uniform(0.6, 1.0) * math.pi
    growth = rng.uniform(0.5, 0.8)
    steps = {
        "moving_left": lambda p: (cx - p * travel, cy, scale, angle),
        "moving_right": lambda p: (cx + p * travel, cy, scale, angle),
        "moving_up": lambda p: (cx, cy - p * travel, scale, angle),
        "moving_down": lambda p: (cx, cy + p * travel, scale, angle),
        "rotating_cw": lambda p: (cx, cy, scale, angle + p * spin),
        "rotating_ccw": lambda p: (cx, cy, scale, angle - p * spin),
        "growing": lambda p: (cx, cy, scale * (1 + p * growth), angle),
        "shrinking": lambda p: (cx, cy, scale * (1 - p * growth), angle),
    }
    return [_l_shape(xs, ys, *steps[label](p)) for p in progress]


def render_clip(label: str, rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one clip of class ``label``."""
    padded = cfg.size + 2 * cfg.jitter
    xs, ys = _grid(padded)
    backdrop = _background(rng, cfg, xs, ys)
    colour = _contrasting_colour(rng, backdrop)
    frames = np.empty((cfg.frames, cfg.size, cfg.size, 3), dtype=np.uint8)
    for t, mask in enumerate(_object_masks(label, rng, cfg, xs, ys)):
        canvas = backdrop.copy()
        canvas[mask] = colour
        dx, dy = rng.integers(0, 2 * cfg.jitter + 1, size=2)
        view = canvas[dy : dy + cfg.size, dx : dx + cfg.size]
        view = view + rng.normal(0, cfg.noise, size=view.shape)
        frames[t] = np.clip(view, 0, 255).astype(np.uint8)
    return frames


def clip_rng(seed: int, split: str, label: str, index: int) -> np.random.Generator:
    """The random stream of one clip: independent of every other clip and of generation order."""
    return np.random.default_rng([seed, SPLITS[split], CLASSES.index(label), index])


def generate(
    out: Path, clips_per_class: int, seed: int, val_fraction: float = 0.25, cfg: SynthConfig = SynthConfig()
) -> dict[str, int]:
    """Write the benchmark under ``out``; returns the number of clips per split."""
    from tqdm import tqdm

    from clipwise.video.synthetic import write_video

    val_per_class = max(1, round(clips_per_class * val_fraction))
    counts = {"train": clips_per_class, "val": val_per_class}
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    jobs = [(split, label, i) for split, n in counts.items() for label in CLASSES for i in range(n)]
    lines: dict[str, list[str]] = {split: [] for split in counts}
    for split, label, i in tqdm(jobs, desc="synth", unit="clip"):
        relative = Path("videos") / label / f"{split}_{i:04d}.mp4"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        frames = render_clip(label, clip_rng(seed, split, label, i), cfg)
        write_video(out / relative, frames, fps=cfg.fps, codec="mpeg4", codec_options={"qscale": "3"})
        lines[split].append(f"{relative.as_posix()} {CLASSES.index(label)}")
    for split, rows in lines.items():
        (out / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return {split: len(rows) for split, rows in lines.items()}
