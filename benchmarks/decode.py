"""Decode benchmark: Clipwise's reader side by side with torchcodec 0.13, on the same clips and frame indices.

Clips, written with PyAV (``clipwise.video.synthetic``: index-coded frames, so every returned frame can be checked):
60 s of 640×360 and of 1280×720, 30 fps H.264 (libx264, B-frames), a keyframe every 2 s. ``--clip-dir``
keeps them between runs (the 1280×720 one takes a minute to encode).

Cases, per clip: ``tsn`` — the 8 segment centres of an 8-frame TSN test clip; ``dense`` — one 8×8 dense
clip (8 frames 8 apart, centred). Methods, interleaved in rotating order, each timed ``--repeats`` times
after a warm-up, all from the bytes in memory (opening, indexing and decoding included):

- ``clipwise/N``: ``clipwise.video.read_frames`` with a budget of N threads (runs between seeks decoded at once);
- ``torchcodec/<seek mode>/N``: ``VideoDecoder(bytes, seek_mode=..., num_ffmpeg_threads=N).get_frames_at``;
- ``torchcodec/2 decoders``: two approximate-mode decoders with one FFmpeg thread each, in two threads, each
  given every other index: the work split across threads, as Clipwise splits it.

N is the CPU threads a method may use: torch's intra-op threads are set to it for its calls (torchcodec
converts frames with torch's thread pool, which by default would give a "one-thread" setting all cores).
Every method's frames are compared with Clipwise's, pixel for pixel, and their index codes with the indices.
A third case, ``tsn→input``, times the model input of a TSN-R50 test view (short side 256, centre crop
224): ``clipwise.video.load_clips`` (frames scaled while converted to RGB) against full-size frames of Clipwise and of
torchcodec each resized by ``clipwise.video.make_views``, and prints how far the two inputs differ (0..255 units).

Prints each method's median and fastest run, and Clipwise's ratios to torchcodec's best setting on at most
as many threads (for clipwise/2: the best of all): of the medians, and of the fastest runs (the least
disturbed by other load on the machine). Targets, clipwise/2's ratio of medians on each clip (exit status 1
when one is missed, or NOT MEASURED where its rows were not produced): tsn ≤ 0.8, dense ≤ 1.0. Without
torchcodec (``pip install torchcodec==0.13.0`` or ``.[bench]``; it needs FFmpeg's shared libraries: Debian's
``ffmpeg``) only Clipwise's times are printed and every target is NOT MEASURED, as the 1280×720 ones are
under ``--quick``.

``--filters N`` instead compares swscale's filters for that scaling: the model input each makes against
torch's resize, and how every bundled model's predictions move on N synthetic validation clips per class.

Run: ``.venv/bin/python benchmarks/decode.py`` (``--quick``: the 640×360 clip only, fewer repeats).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from av.video.reformatter import Interpolation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clipwise.video.decode as video_decode  # noqa: E402
from benchmarks.adaptive import finish  # noqa: E402
from clipwise.video import ClipSpec, dense_indices, load_clips, make_views, probe, read_frames, segment_indices  # noqa: E402
from clipwise.video.parallel import ThreadBudget  # noqa: E402
from clipwise.video.synthetic import encode_video, index_coded_frames, read_frame_index, write_video  # noqa: E402

try:
    from torchcodec.decoders import VideoDecoder
except (ImportError, OSError, RuntimeError) as error:  # OSError / RuntimeError: FFmpeg's libraries are missing
    VideoDecoder = None
    TORCHCODEC_MISSING = str(error).splitlines()[0] if str(error) else type(error).__name__

SECONDS, FPS, KEYFRAME_INTERVAL_S = 60, 30, 2
SIZES = ((640, 360), (1280, 720))
INPUT_SPEC = ClipSpec(
    "segments", frames=8, stride=1, short_side=256, crop_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
TARGETS = {"tsn": 0.8, "dense": 1.0}
FILTERS = ("BILINEAR", "AREA", "BICUBIC", "GAUSS", "FAST_BILINEAR")  # swscale's, for --filters
REPOSITORY = ROOT / "model_repository"

Frames = list[np.ndarray]  # (H, W, 3) uint8 RGB, in index order
Decode = Callable[[bytes, list[int]], Frames]


@dataclass(frozen=True)
class Method:
    """A way to get frames, and the CPU threads it may use (torch's intra-op threads are set for its calls:
    torchcodec converts its frames with torch's thread pool)."""

    threads: int
    decode: Decode
    torch_threads: int | None = None  # default: ``threads``


def make_clip(directory: Path, width: int, height: int) -> bytes:
    """The benchmark clip of this size, encoded unless ``directory`` already holds it."""
    path = directory / f"h264_{width}x{height}_{SECONDS}s_{FPS}fps_key{KEYFRAME_INTERVAL_S}s.mp4"
    if not path.exists():
        started = time.perf_counter()
        frames = index_coded_frames(SECONDS * FPS, height, width)
        write_video(path, frames, fps=FPS, codec="h264", gop=KEYFRAME_INTERVAL_S * FPS)
        print(f"encoded {path.name} in {time.perf_counter() - started:.1f} s")
    return path.read_bytes()


def clipwise(threads: int) -> Decode:
    budget = ThreadBudget(threads)

    def decode(data: bytes, indices: list[int]) -> Frames:
        frames = read_frames(data, lambda _: [indices], threads=budget).frames
        return [frames[index] for index in indices]

    return decode


def torchcodec(seek_mode: str, ffmpeg_threads: int) -> Decode:
    def decode(data: bytes, indices: list[int]) -> Frames:
        decoder = VideoDecoder(data, seek_mode=seek_mode, num_ffmpeg_threads=ffmpeg_threads, dimension_order="NHWC")
        return list(decoder.get_frames_at(indices).data.numpy())

    return decode


def torchcodec_in_threads(pool: ThreadPoolExecutor) -> Decode:
    """Two approximate-mode decoders on two threads, each given every other index."""
    single = torchcodec("approximate", 1)

    def decode(data: bytes, indices: list[int]) -> Frames:
        halves = {start: pool.submit(single, data, indices[start::2]) for start in (0, 1)}
        frames: Frames = [np.empty(0)] * len(indices)
        for start, half in halves.items():
            frames[start::2] = half.result()
        return frames

    return decode


def methods(pool: ThreadPoolExecutor) -> dict[str, Method]:
    found = {f"clipwise/{threads}": Method(threads, clipwise(threads)) for threads in (1, 2)}
    if VideoDecoder is not None:
        for mode in ("exact", "approximate"):
            for threads in (1, 2):
                found[f"torchcodec/{mode}/{threads}"] = Method(threads, torchcodec(mode, threads))
        found["torchcodec/2 decoders"] = Method(2, torchcodec_in_threads(pool), torch_threads=1)
    return found


def check_frames(name: str, frames: Frames, reference: Frames, indices: list[int]) -> None:
    """``frames`` are the frames asked for (their index codes) and equal Clipwise's pixel for pixel."""
    if [read_frame_index(frame) for frame in frames] != indices:
        raise AssertionError(f"{name} returned frames other than {indices}")
    if not all(np.array_equal(frame, expected) for frame, expected in zip(frames, reference, strict=True)):
        raise AssertionError(f"{name}'s frames differ from Clipwise's")


def interleaved(runs: dict[str, tuple[int, Callable[[], object]]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each (torch threads, function), after one warm-up call each, the order rotating
    every repeat."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(-1, repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            torch_threads, run = runs[name]
            torch.set_num_threads(torch_threads)
            started = time.perf_counter()
            run()
            if repeat >= 0:
                times[name].append(time.perf_counter() - started)
    return times


def report(times: dict[str, list[float]]) -> None:
    for name, runs in times.items():
        print(f"  {name:>32}: median {statistics.median(runs) * 1000:7.1f} ms   fastest {min(runs) * 1000:7.1f} ms")


def ratio_line(name: str, times: dict[str, list[float]], peers: list[str], threads: int) -> tuple[str, float]:
    """Clipwise's time over the best of ``peers`` (those on at most ``threads`` threads): of the medians, and of
    the fastest runs; the line and the ratio of medians."""
    by_median = min(peers, key=lambda peer: statistics.median(times[peer]))
    by_fastest = min(peers, key=lambda peer: min(times[peer]))
    median_ratio = statistics.median(times[name]) / statistics.median(times[by_median])
    fastest_ratio = min(times[name]) / min(times[by_fastest])
    line = (
        f"  {name} / best torchcodec on <= {threads} thread(s): {median_ratio:.2f} of medians ({by_median}), "
        f"{fastest_ratio:.2f} of fastest runs ({by_fastest})"
    )
    return line, median_ratio


def compare(case: str, data: bytes, indices: list[int], candidates: dict[str, Method], repeats: int) -> float | None:
    """Time every method on ``indices`` of ``data`` after checking their frames; clipwise/2's ratio of medians
    to the best torchcodec (None without torchcodec)."""
    print(f"{case}: frames {indices}")
    reference = candidates["clipwise/1"].decode(data, indices)
    for name, method in candidates.items():
        check_frames(name, method.decode(data, indices), reference, indices)
    runs = {
        name: (method.torch_threads or method.threads, partial(method.decode, data, indices))
        for name, method in candidates.items()
    }
    times = interleaved(runs, repeats)
    report(times)
    peers = [name for name in candidates if name.startswith("torchcodec")]
    if not peers:
        print(f"  torchcodec not importable ({TORCHCODEC_MISSING}): no ratio")
        return None
    ratios = {}
    for name in ("clipwise/1", "clipwise/2"):
        threads = candidates[name].threads
        line, ratios[name] = ratio_line(
            name, times, [peer for peer in peers if candidates[peer].threads <= threads], threads
        )
        print(line)
    print(f"  target: clipwise/2 <= {TARGETS[case]}; every method returned the same frames")
    return ratios["clipwise/2"]


def missed_targets(measured: dict[tuple[str, str], float | None]) -> list[str]:
    """The targets that clipwise/2's ratios of medians, by (clip size, case), miss, each with the figure; NOT
    MEASURED for every size and case without its ratio."""
    missed = []
    for size in (f"{width}x{height}" for width, height in SIZES):
        for case, target in TARGETS.items():
            ratio = measured.get((size, case))
            if ratio is None:
                why = f"torchcodec: {TORCHCODEC_MISSING}" if VideoDecoder is None else "the clip was not run: --quick"
                missed.append(f"NOT MEASURED: {size} {case}, clipwise/2 against torchcodec ({why})")
            elif ratio > target:
                missed.append(f"{size} {case}: clipwise/2 at {ratio:.2f} of torchcodec's best median (≤ {target})")
    return missed


def compare_model_input(data: bytes, candidates: dict[str, Method], repeats: int) -> None:
    """The TSN-R50 view: frames scaled in the converter vs scaled after full-size RGB frames."""
    indices = INPUT_SPEC.frame_indices(probe(data).num_frames)[0]
    positions = [list(range(len(indices)))]

    def decoded_then_resized(name: str) -> tuple[int, Callable[[], torch.Tensor]]:
        method = candidates[name]
        return method.threads, lambda: make_views(np.stack(method.decode(data, indices)), positions, INPUT_SPEC)

    runs = {
        f"load_clips/{threads}": (threads, partial(load_clips, data, INPUT_SPEC, threads=ThreadBudget(threads)))
        for threads in (1, 2)
    }
    runs["clipwise/1 + make_views"] = decoded_then_resized("clipwise/1")
    runs.update(
        {f"{name} + make_views": decoded_then_resized(name) for name in candidates if name.endswith("approximate/1")}
    )
    difference = input_difference(data, INPUT_SPEC)
    print(
        f"tsn→input (short side {INPUT_SPEC.short_side}, crop {INPUT_SPEC.crop_size}): scaled in the converter vs "
        f"after, |difference| mean {difference.mean():.2f}, max {difference.max():.0f} (0..255 units)"
    )
    report(interleaved(runs, repeats))


def resized_after(data: bytes, spec: ClipSpec) -> torch.Tensor:
    """Model input from full-size RGB frames resized by torch (``make_views``): the way before scaling in the
    converter."""
    frames, positions = read_frames(data, spec.frame_indices, min_frames=spec.frames).stacked()
    return make_views(frames, positions, spec)


def input_difference(data: bytes, spec: ClipSpec) -> torch.Tensor:
    """|model input scaled in the converter − ``resized_after``|, in 0..255 units."""
    difference = load_clips(data, spec).clips - resized_after(data, spec)
    return difference.abs() * torch.tensor(spec.std).view(1, 3, 1, 1, 1) * 255


def compare_filters(clips: list[bytes], clips_per_class: int) -> None:
    """swscale's filters for scaling in the converter: the model input each makes against torch's resize, and
    how the bundled models' predictions move on synthetic validation clips (made as the benchmark's are)."""
    from clipwise.models.checkpoint import load_version
    from clipwise.training.synthetic import CLASSES, clip_rng, render_clip

    validation = [
        encode_video(frames, fps=8, codec="mpeg4", codec_options={"qscale": "3"})
        for label in CLASSES
        for frames in (render_clip(label, clip_rng(7, "val", label, i)) for i in range(clips_per_class))
    ]
    labels = torch.tensor([index for index in range(len(CLASSES)) for _ in range(clips_per_class)])
    models = {path.name: load_version(REPOSITORY, path.name) for path in sorted(REPOSITORY.iterdir()) if path.is_dir()}

    def scores(name: str, inputs: Callable[[bytes, ClipSpec], torch.Tensor]) -> torch.Tensor:
        loaded = models[name]
        spec = ClipSpec(**loaded.manifest.preprocessing.to_dict())
        model = loaded.model.eval()
        with torch.inference_mode():
            return torch.cat([model.execute(inputs(data, spec)).logits.softmax(-1) for data in validation])

    reference = {name: scores(name, resized_after) for name in models}
    print(
        f"{len(validation)} validation clips; top-1 of torch's resize: "
        + ", ".join(f"{name} {(reference[name].argmax(1) == labels).float().mean():.3f}" for name in models)
    )
    for name in FILTERS:
        video_decode.SCALING = Interpolation[name]
        means = ", ".join(f"{input_difference(data, INPUT_SPEC).mean():.2f}" for data in clips)
        print(f"{name}: input |difference| mean {means} (benchmark clips)")
        for model in models:
            scaled = scores(model, lambda data, spec: load_clips(data, spec).clips)
            moved = (scaled - reference[model]).abs().max().item()
            agree = (scaled.argmax(1) == reference[model].argmax(1)).float().mean().item()
            accuracy = (scaled.argmax(1) == labels).float().mean().item()
            print(f"  {model:>26}: top-1 {accuracy:.3f}, same top-1 {agree:.3f}, max |probability change| {moved:.3f}")
    video_decode.SCALING = Interpolation.BILINEAR


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clip-dir", type=Path, help="keep the clips here (encoded once, re-used after)")
    parser.add_argument("--quick", action="store_true", help="the 640x360 clip only, 5 repeats")
    parser.add_argument(
        "--filters", type=int, metavar="CLIPS_PER_CLASS", help="instead of timing: compare swscale's filters"
    )
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    sizes = SIZES[:1] if args.quick else SIZES
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(2) as pool:
        directory = args.clip_dir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        if args.filters:
            compare_filters([make_clip(directory, width, height) for width, height in sizes], args.filters)
            return 0
        candidates = methods(pool)
        measured = {}
        for width, height in sizes:
            data = make_clip(directory, width, height)
            num_frames = probe(data).num_frames
            print(f"\n== {width}x{height}, {num_frames} frames @ {FPS} fps, keyframe every {KEYFRAME_INTERVAL_S} s")
            cases = {"tsn": segment_indices(num_frames, 8), "dense": dense_indices(num_frames, 8, 8)}
            for case, indices in cases.items():
                measured[f"{width}x{height}", case] = compare(case, data, indices, candidates, repeats)
            compare_model_input(data, candidates, repeats)
    return finish(missed_targets(measured))


if __name__ == "__main__":
    raise SystemExit(main())
