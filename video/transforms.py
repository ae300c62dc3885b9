"""Spatial transforms: decoded RGB frames to normalised model input.

The short side is resized to ``spec.short_side`` (bilinear with antialiasing on uint8, as PIL does in the
TSM code base and torchvision's tensor path; the long side keeps the aspect ratio, floored like
torchvision and PySlowFast), then ``crop_size`` squares are cut: the centre, or for 3-crop testing three
squares along the long side (start, centre, end; PySlowFast's ``uniform_crop``, centre offsets rounded
up), and each value becomes (x / 255 - mean) / std. All frames of a request are resized in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipwise.video.sampling import ClipSpec

CROP_COUNTS = (1, 3)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side made ``size`` and the long side keeping the aspect ratio, floored."""
    if height <= width:
        return size, int(width * size / height)
    return int(height * size / width), size


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(F, 3, H, W) uint8 frames with the short side resized to ``size``."""
    height, width = frames.shape[-2:]
    if min(height, width) == size:
        return frames
    new_size = short_side_size(height, width, size)
    return F.interpolate(frames, size=new_size, mode="bilinear", align_corners=False, antialias=True)


def crop_origins(height: int, width: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of each ``size`` square: the centre, or start, centre and end of the long side."""
    if crops not in CROP_COUNTS:
        raise ValueError(f"crops must be one of {CROP_COUNTS}, not {crops}")
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if crops == 1:
        return [(top, left)]
    if height > width:
        return [(0, left), (top, left), (height - size, left)]
    return [(top, 0), (top, left), (top, width - size)]


def normalise(clips: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(V, 3, T, H, W) uint8 clips as float32 (x / 255 - mean) / std."""
    shape = (1, 3, 1, 1, 1)
    mean_255 = torch.tensor(mean, dtype=torch.float32).view(shape) * 255
    std_255 = torch.tensor(std, dtype=torch.float32).view(shape) * 255
    return clips.float().sub_(mean_255).div_(std_255)


def make_views(frames: np.ndarray, clip_positions: list[list[int]], spec: ClipSpec, crops: int = 1) -> torch.Tensor:
    """Model input from (F, H, W, 3) uint8 frames.

    ``clip_positions`` lists, for each temporal clip, the positions in ``frames`` of its T frames. Returns
    (clips * crops, 3, T, crop_size, crop_size) float32, clip-major (all crops of clip 0 first).
    """
    resized = resize_short_side(torch.from_numpy(frames).permute(0, 3, 1, 2), spec.short_side)
    size = spec.crop_size
    origins = crop_origins(resized.shape[-2], resized.shape[-1], size, crops)
    views = [
        resized[positions, :, top : top + size, left : left + size]
        for positions in clip_positions
        for top, left in origins
    ]
    return normalise(torch.stack(views).transpose(1, 2).contiguous(), spec.mean, spec.std)
