"""What decoding in worker processes costs a request: the same server decoding in process, as before isolation
(``CLIPWISE_DECODE_WORKERS=0``), and in its decode workers (the default), at one client.

Both serve the bundled ``tsn_r18_tiny`` on loopback from this process, with the same settings otherwise. One
client sends each clip to one server then to the other, the order alternating from round to round,
``--requests`` times per clip and server after ``--warmup`` rounds; a request's time is its wall time at the
client. Clips: the videos of ``examples/`` and 60 s of 640×360 H.264 at 30 fps (``benchmarks/decode.py``'s clip;
``--clip-dir`` keeps it between runs). Both servers must give every clip the same scores.

Prints, per clip, each server's p50 and the overhead: the difference of the p50s, in ms and as a share of the
in-process p50; beside it, the median of the rounds' differences (each round's two requests back to back).
Targets: at most 5% of the in-process p50 and at most 2 ms, for every clip. Exits 1 when one is missed.
``--json PATH`` writes the report.

Run: ``.venv/bin/python benchmarks/decode_isolation.py`` (``--requests 200``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from decode import make_clip

from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.service.local import serve_in_thread, wait_until_ready

MODEL = "tsn_r18_tiny"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIDES = ("in_process", "isolated")
WORKERS = {"in_process": 0, "isolated": None}
TARGET_SHARE, TARGET_MS = 0.05, 2.0


@contextlib.contextmanager
def servers() -> Iterator[dict[str, httpx.Client]]:
    """A client of each server, both ready."""
    with contextlib.ExitStack() as stack:
        clients = {}
        for side in SIDES:
            app = create_app(Settings(models=[MODEL], decode_workers=WORKERS[side], log_level="warning"))
            url = stack.enter_context(serve_in_thread(app))
            wait_until_ready(url)
            clients[side] = stack.enter_context(httpx.Client(base_url=url, timeout=120))
        yield clients


def timed_request(client: httpx.Client, data: bytes) -> tuple[float, dict[int, float]]:
    """Milliseconds of one prediction, and its top-5 scores by class index."""
    started = time.perf_counter()
    response = client.post(f"/v1/models/{MODEL}/predict", files={"file": ("clip", data)})
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, {prediction["index"]: prediction["score"] for prediction in response.json()["predictions"]}


def measure(clients: dict[str, httpx.Client], data: bytes, requests: int, warmup: int) -> dict[str, float]:
    """Both servers' p50 (ms) on one clip, interleaved, and the median of each round's difference (less moved by
    load that drifts during the run); raises when their scores differ."""
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_number in range(warmup + requests):
        order = SIDES if round_number % 2 == 0 else SIDES[::-1]
        answers = {side: timed_request(clients[side], data) for side in order}
        (_, in_process), (_, isolated) = answers["in_process"], answers["isolated"]
        if in_process.keys() != isolated.keys() or any(abs(in_process[i] - isolated[i]) > 1e-6 for i in in_process):
            raise AssertionError("the two servers scored the clip differently")
        if round_number >= warmup:
            for side in SIDES:
                times[side].append(answers[side][0])
    differences = [isolated - in_process for in_process, isolated in zip(*times.values(), strict=True)]
    return {**{side: statistics.median(times[side]) for side in SIDES}, "paired_ms": statistics.median(differences)}


def clips(clip_dir: Path) -> dict[str, bytes]:
    videos = {path.name: path.read_bytes() for path in sorted(EXAMPLES.glob("*.mp4"))}
    return {**videos, "h264_640x360_60s.mp4": make_clip(clip_dir, 640, 360)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed requests per clip and server")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds per clip first")
    parser.add_argument("--clip-dir", type=Path, default=None, help="keeps the 60 s clip between runs")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        videos = clips(args.clip_dir or Path(scratch))
        with servers() as clients:
            report = {name: measure(clients, data, args.requests, args.warmup) for name, data in videos.items()}
    missed = []
    print(f"{'clip':28} {'in process p50':>15} {'isolated p50':>13} {'overhead':>10} {'share':>7} {'paired':>10}")
    for name, p50 in report.items():
        overhead = p50["isolated"] - p50["in_process"]
        share = overhead / p50["in_process"]
        p50.update(overhead_ms=overhead, overhead_share=share)
        print(
            f"{name:28} {p50['in_process']:12.2f} ms {p50['isolated']:10.2f} ms {overhead:7.2f} ms {share:7.1%} "
            f"{p50['paired_ms']:7.2f} ms"
        )
        if overhead > TARGET_MS or share > TARGET_SHARE:
            missed.append(name)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if missed:
        print(f"target missed (overhead <= {TARGET_SHARE:.0%} of p50 and <= {TARGET_MS:g} ms): {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
