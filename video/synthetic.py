"""Deterministic test videos written with PyAV.

``index_coded_frames`` makes frames that carry their own frame index as a 16-bit binary code in a band of
large black/white cells at the top (each cell at least 8×8 pixels, so the code survives lossy
compression), over a textured background that drifts one pixel a frame so the encoder has real motion to
code. ``read_frame_index`` reads the code back from a decoded RGB frame: tests can check exactly which
frames a decoder returned. ``write_video`` encodes any (T, H, W, 3) uint8 frames with a fixed keyframe
interval, any timestamps and a display rotation; the synthetic datasets and the tests' ``edge_cases`` reuse it.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

CODE_BITS = 16
CODE_ROWS = 2
CODE_COLUMNS = CODE_BITS // CODE_ROWS
MIN_CELL = 8
_BLACK, _WHITE = 16, 235  # video-range luma extremes: no clipping in the YUV round trip

_X26X_PARAMS = {"libx264": "x264-params", "libx265": "x265-params"}
_FORMAT_FOR_SUFFIX = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".ts": "mpegts"}
_ENCODER_FOR_CODEC = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "vp8": "libvpx", "av1": "libsvtav1"}


def _cell_size(height: int, width: int) -> tuple[int, int]:
    cell_h, cell_w = height // 8, width // CODE_COLUMNS
    if min(cell_h, cell_w) < MIN_CELL:
        raise ValueError(f"{width}x{height} is too small for the index code (needs {MIN_CELL}px cells)")
    return cell_h, cell_w


def _background(height: int, width: int, seed: int) -> np.ndarray:
    """A random colour texture of 8×8 blocks, twice as wide as the frame so it can drift sideways."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, size=(height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, : 2 * width]


def index_coded_frames(
    count: int, height: int = 120, width: int = 160, *, first: int = 0, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 frames ``first`` ... ``first + count - 1``, frame i showing the code of i."""
    if first + count > 2**CODE_BITS:
        raise ValueError(f"the index code holds {CODE_BITS} bits: frame {first + count - 1} does not fit")
    cell_h, cell_w = _cell_size(height, width)
    texture = _background(height, width, seed)
    for index in range(first, first + count):
        shift = index % width
        frame = np.ascontiguousarray(texture[:, shift : shift + width])
        for bit in range(CODE_BITS):
            row, column = divmod(bit, CODE_COLUMNS)
            value = _WHITE if (index >> bit) & 1 else _BLACK
            frame[row * cell_h : (row + 1) * cell_h, column * cell_w : (column + 1) * cell_w] = value
        yield frame


def read_frame_index(rgb_frame: np.ndarray) -> int:
    """The frame index coded into an (H, W, 3) RGB frame made by ``index_coded_frames``."""
    height, width = rgb_frame.shape[:2]
    cell_h, cell_w = _cell_size(height, width)
    luma = rgb_frame.astype(np.float32).mean(axis=2)
    index = 0
    for bit in range(CODE_BITS):
        row, column = divmod(bit, CODE_COLUMNS)
        top, left = row * cell_h + cell_h // 4, column * cell_w + cell_w // 4
        cell_centre = luma[top : top + cell_h // 2, left : left + cell_w // 2]
        if cell_centre.mean() > (_BLACK + _WHITE) / 2:
            index |= 1 << bit
    return index


def write_video(
    destination: str | Path | BinaryIO,
    frames: Iterable[np.ndarray],
    *,
    fps: int | Fraction = 25,
    codec: str = "h264",
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
    container_format: str | None = None,
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    timestamps: Iterable[int] | None = None,
    rotation: int = 0,
    metadata: dict[str, str] | None = None,
) -> None:
    """Encode (H, W, 3) uint8 RGB frames (an array (T, H, W, 3) or any iterable of frames).

    ``gop`` fixes the keyframe interval exactly (no scene-cut keyframes); None keeps the encoder's default.
    ``container_format`` defaults to the one the path's suffix names; it is required for a buffer.
    ``timestamps``: each frame's pts in units of 1 / ``fps`` (default 0, 1, 2...): an offset start, or a
    variable frame rate. ``rotation``: the display matrix's counterclockwise rotation, degrees (players turn
    the frames by it). ``container_options`` go to the muxer, e.g. ``{"movflags": "faststart"}`` for an MP4
    index at the front (which needs a path, not a buffer). ``metadata``: tags (``title``...) written on the
    container and on the video stream alike.
    """
    if container_format is None:
        if not isinstance(destination, str | Path):
            raise ValueError("container_format is required when writing to a buffer")
        container_format = _FORMAT_FOR_SUFFIX[Path(destination).suffix.lower()]
    frame_iter = iter(frames)
    first = next(frame_iter, None)
    if first is None:
        raise ValueError("no frames to write")
    with av.open(destination, mode="w", format=container_format, options=container_options) as container:
        container.metadata.update(metadata or {})
        encoder = _ENCODER_FOR_CODEC.get(codec, codec)
        stream = container.add_stream(encoder, rate=fps)
        stream.metadata.update(metadata or {})
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = 1 / Fraction(fps)
        stream.options = {**_keyframe_options(encoder, gop), **(codec_options or {})}
        if rotation:
            stream.set_display_rotation(rotation)
        pts = itertools.count() if timestamps is None else timestamps
        for timestamp, array in zip(pts, itertools.chain([first], frame_iter), strict=False):  # pts may be endless
            _encode(container, stream, array, timestamp)
        container.mux(stream.encode(None))


def encode_video(frames: Iterable[np.ndarray], *, container_format: str = "mp4", **kwargs) -> bytes:
    """``write_video`` through a temporary file (muxers such as MP4's faststart rewrite it); returns its bytes."""
    with tempfile.TemporaryDirectory(prefix="clipwise-video-") as directory:
        path = Path(directory) / "video"
        write_video(path, frames, container_format=container_format, **kwargs)
        return path.read_bytes()


def _encode(container: av.container.OutputContainer, stream: av.VideoStream, array: np.ndarray, pts: int) -> None:
    frame = av.VideoFrame.from_ndarray(array, format="rgb24")
    frame.pts = pts
    container.mux(stream.encode(frame))


def _keyframe_options(encoder: str, gop: int | None) -> dict[str, str]:
    if gop is None:
        return {}
    if encoder in _X26X_PARAMS:  # x264 / x265 insert scene-cut keyframes unless told not to
        return {_X26X_PARAMS[encoder]: f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    return {"g": str(gop), "keyint_min": str(gop)}
