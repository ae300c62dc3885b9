"""Decode benchmark: 8 TSN frames through Clipwise's reader vs decoding every frame.

Writes a synthetic H.264 clip (default: 60 s, 640×360, 30 fps, a keyframe every 2 s) to a temporary
directory, then times, interleaved over several repetitions in this one process:

- ``tsn``: ``video.read_frames`` with the TSN test plan (8 segment centres): index pass, seeks, RGB frames;
- ``tsn+preprocess``: ``video.load_clips`` (the same, plus resize to 256, centre crop 224, normalise);
- ``decode_all``: plain PyAV decoding of every frame into RGB with one reused converter and
  ``thread_type="AUTO"``, the cheapest way to get every frame.

Prints the medians and the ratio tsn / decode_all, of the medians and of the fastest runs (target: ≤ 0.25).
Run:
``.venv/bin/python benchmarks/decode.py``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from video import ClipSpec, load_clips, read_frames
from video.synthetic import index_coded_frames, read_frame_index, write_video

TSN_SPEC = ClipSpec(
    "segments", frames=8, stride=1, short_side=256, crop_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


def decode_all(data: bytes) -> int:
    """Every frame as an RGB array, the plain PyAV way with one converter; returns the frame count."""
    converter = VideoReformatter()
    decoded = 0
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            converter.reformat(frame, format="rgb24").to_ndarray()
            decoded += 1
    return decoded


def tsn_frames(data: bytes) -> int:
    return read_frames(data, TSN_SPEC.frame_indices).frames_decoded


def check_tsn_frames(data: bytes) -> None:
    """The reader returns the frames the plan names (read back from their index codes)."""
    decoded = read_frames(data, TSN_SPEC.frame_indices)
    if any(read_frame_index(frame) != index for index, frame in decoded.frames.items()):
        raise AssertionError("the reader returned a frame other than the one asked for")


def tsn_clips(data: bytes) -> int:
    return load_clips(data, TSN_SPEC).frames_decoded


def make_clip(directory: Path, args: argparse.Namespace) -> bytes:
    path = directory / "benchmark.mp4"
    num_frames = round(args.seconds * args.fps)
    started = time.perf_counter()
    write_video(
        path,
        index_coded_frames(num_frames, args.height, args.width),
        fps=args.fps,
        codec="h264",
        gop=round(args.keyframe_interval * args.fps),
    )
    data = path.read_bytes()
    print(
        f"clip: {num_frames} frames {args.width}x{args.height} @ {args.fps} fps, keyframe every "
        f"{args.keyframe_interval:g} s, {len(data) / 1e6:.1f} MB, encoded in {time.perf_counter() - started:.1f} s"
    )
    return data


def measure(data: bytes, repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each method, the methods interleaved in rotating order."""
    methods: dict[str, Callable[[bytes], int]] = {
        "tsn": tsn_frames,
        "tsn+preprocess": tsn_clips,
        "decode_all": decode_all,
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    frames: dict[str, int] = {}
    names = list(methods)
    for method in methods.values():  # warm-up: codec and torch initialisation
        method(data)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            started = time.perf_counter()
            frames[name] = methods[name](data)
            times[name].append(time.perf_counter() - started)
    for name, runs in times.items():
        print(
            f"{name:>15}: median {statistics.median(runs) * 1000:8.1f} ms  "
            f"(min {min(runs) * 1000:.1f}, max {max(runs) * 1000:.1f}), {frames[name]} frames decoded"
        )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--keyframe-interval", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        data = make_clip(Path(directory), args)
    check_tsn_frames(data)
    times = measure(data, args.repeats)
    full = times["decode_all"]
    for name in ("tsn", "tsn+preprocess"):
        median_ratio = statistics.median(times[name]) / statistics.median(full)
        fastest_ratio = min(times[name]) / min(full)  # least disturbed by other load on the machine
        print(f"ratio {name} / decode_all: {median_ratio:.3f} of medians, {fastest_ratio:.3f} of fastest runs")
    print("target: tsn / decode_all <= 0.25")


if __name__ == "__main__":
    main()
