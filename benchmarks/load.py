"""Load test on loopback: concurrent clients sending good and bad videos to a real ``clipwise serve`` process,
with model reloads and a corrupt version appearing under load.

Starts the server as a subprocess on a temporary repository (two versions of ``tsn_r18_tiny``), then runs
``--clients`` threads for ``--duration-s`` seconds, each posting uploads in turn from a mix of good videos
(H.264 MP4, VP9 WebM, Matroska, AVI) and every odd or broken one of ``tests/edge_cases.py``, under the decode
limits those were made for. Meanwhile, every ``--reload-every-s`` seconds, the served model is reloaded
through the management route (versions 1 and 2 in turn), and a third version with truncated weights
(its sha256 matching them) is offered, which the server must refuse while the old version keeps serving.
The server's resident memory is read from ``/proc/<pid>/status`` every 0.5 s.

Every 200 is checked for content too: the version it names must be one of the good ones, and its top-1 and
scores (every class's, within 1e-4) those that version gives the same upload run in this process with the
service's preprocessing (``clipwise.video.load_clips`` with the version's ``ClipSpec``, then ``model.execute``),
computed
once per upload and version before the load starts (``tests/answers.py``). The two versions' scores differ by
far more than the tolerance on every upload, so an answer from the other version than the one it names is
wrong too.

Reports the requests by status, the server errors (5xx: the target is 0), the answers other than expected
(200 for a good video, the documented 4xx for a bad one: the target is 0), the requests that got no answer
(transport errors: connection refused or reset, timeouts; the target is 0), the wrong answers among the 200s
(the target is 0), the reloads, the threads that died of an exception (clients, reloader, memory sampler: the
target is none), whether the server process is still running at the end (it must be), and the resident
memory growth after warm-up: the peak after the first ``--warmup-s`` seconds over the peak during them
(target < 10%; not measured without samples on both sides). Exits 1 when a target is missed. ``--json
PATH`` writes the report as JSON.

Run: ``.venv/bin/python benchmarks/load.py`` (8 clients, 2 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import torch

from clipwise.models import create_model
from clipwise.models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_version, save_version, sha256_file
from clipwise.service.errors import VIDEO_ERRORS
from clipwise.service.local import free_port, wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from answers import SCORE_TOLERANCE, in_process_scores, wrong_answer  # noqa: E402 - test support, beside the tests
from edge_cases import EDGE_CASES, LIMITS, coded_video  # noqa: E402

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(10)]
TOKEN = "load-benchmark-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD_VERSIONS = (1, 2)
CLIPS = 2  # temporal clips per request
MEMORY_TARGET = 0.10
RSS_PERIOD_S = 0.5

Scores = dict[str, dict[int, list[float]]]  # upload name -> version -> class scores, run in-process


@dataclasses.dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    expected: int  # the status the server must answer


@dataclasses.dataclass
class Report:
    requests: int
    statuses: dict[str, int]
    server_errors: int
    unexpected: dict[str, int]  # "upload name: status" -> count, for answers other than expected
    transport_errors: dict[str, int]  # "upload name: error" -> count, for requests without an answer
    answers_checked: int  # 200s compared with their version run in-process
    wrong_answers: dict[str, int]  # "upload name: why" -> count
    reloads: int
    reloads_failed: int
    corrupt_refused: int
    corrupt_accepted: int
    threads_died: list[str]  # "thread: exception", for each thread an exception ended
    server_exit: int | None  # the server's exit status if it was no longer running at the end
    rss_warmup_peak_mib: float
    rss_peak_mib: float
    rss_end_mib: float
    rss_growth: float
    requests_per_s: float

    def passed(self) -> bool:
        """Every target met; a NaN memory growth (no samples) fails too."""
        answered = not (self.server_errors or self.unexpected or self.transport_errors or self.wrong_answers)
        reloaded = self.reloads_failed == 0 and self.corrupt_accepted == 0
        whole = not self.threads_died and self.server_exit is None
        return answered and reloaded and whole and self.rss_growth < MEMORY_TARGET


def uploads() -> list[Upload]:
    """The mix: four good videos and every edge case, each with the status it must get."""
    good = {
        "h264_mp4": coded_video(64, 120, 160, gop=16),
        "vp9_webm": coded_video(48, container_format="webm", codec="vp9"),
        "h264_mkv": coded_video(96, container_format="matroska"),
        "mpeg4_avi": coded_video(40, container_format="avi", codec="mpeg4"),
    }
    mix = [Upload(name, data, 200) for name, data in good.items()]
    for name, case in EDGE_CASES.items():
        expected = VIDEO_ERRORS[case.refusal][0] if case.refusal else 200
        mix.append(Upload(name, case.make(), expected))
    return mix


def make_repository(root: Path) -> Path:
    repository = root / "repository"
    for seed in GOOD_VERSIONS:
        torch.manual_seed(seed)
        save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, repository, MODEL, trained=False)
    return repository


def expected_scores(repository: Path, mix: list[Upload]) -> Scores:
    """Per upload that must be answered, the scores each good version gives it in this process. Refuses to
    start when two versions give some upload scores too close to tell which one answered."""
    versions = [load_version(repository, MODEL, version) for version in GOOD_VERSIONS]
    expected = {}
    for upload in (upload for upload in mix if upload.expected == 200):
        scores = {v.version: in_process_scores(v, upload.data, clips=CLIPS, limits=LIMITS) for v in versions}
        apart = max(abs(a - b) for a, b in zip(*scores.values(), strict=True))
        if apart <= 10 * SCORE_TOLERANCE:
            raise RuntimeError(f"{upload.name}: versions {GOOD_VERSIONS} give scores {apart:.1e} apart at most")
        expected[upload.name] = scores
    return expected


def add_corrupt_version(repository: Path) -> int:
    """Version 3: version 2 with its weights cut in half and the manifest's sha256 updated to match them."""
    corrupt = repository / MODEL / "3"
    staging = repository / MODEL / ".staging-corrupt"
    staging.mkdir()
    weights = (repository / MODEL / "2" / WEIGHTS_FILE).read_bytes()
    (staging / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    manifest = json.loads((repository / MODEL / "2" / MANIFEST_FILE).read_text())
    manifest["weights_sha256"] = sha256_file(staging / WEIGHTS_FILE)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest))
    staging.rename(corrupt)
    return 3


@contextlib.contextmanager
def server_process(repository: Path, log: Path, torch_threads: int) -> Iterator[tuple[subprocess.Popen, str]]:
    """``clipwise serve`` on a free loopback port, with the edge cases' decode limits; (process, base URL)
    once it is ready."""
    port = free_port()
    flags = {
        "model-repository": repository,
        "port": port,
        "admin-token": TOKEN,
        "max-pixels": LIMITS.max_pixels,
        "max-duration-s": LIMITS.max_duration_s,
        "decode-timeout-s": LIMITS.decode_timeout_s,
        "torch-threads": torch_threads,
        "log-level": "warning",
    }
    command = [sys.executable, "-m", "clipwise.cli", "serve", *(f"--{flag}={value}" for flag, value in flags.items())]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 120, gave_up=lambda: server_exit(process, log))
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def server_exit(process: subprocess.Popen, log: Path) -> str | None:
    """Why the server process will not become ready: it exited (with the end of its log), or None."""
    if process.poll() is None:
        return None
    return f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}"


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Load:
    """The clients, the reloader and the memory sampler of one run against the server ``process``."""

    def __init__(
        self, url: str, process: subprocess.Popen, repository: Path, expected: Scores, args: argparse.Namespace
    ) -> None:
        self.url, self.process, self.repository, self.expected, self.args = url, process, repository, expected, args
        self.statuses: Counter[int] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.transport_errors: Counter[str] = Counter()
        self.died: list[str] = []
        self.answers_checked = 0
        self.wrong: Counter[str] = Counter()
        self.reloads = Counter[str]()
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MiB)
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self, mix: list[Upload]) -> Report:
        started = time.monotonic()
        threads = [self.thread(f"client {offset}", self.client, mix, offset) for offset in range(self.args.clients)]
        threads += [self.thread("reloader", self.reloader), self.thread("memory sampler", self.sample_memory)]
        for thread in threads:
            thread.start()
        self.stop.wait(self.args.duration_s)
        self.stop.set()
        for thread in threads:
            thread.join()
        return self.report(time.monotonic() - started)

    def thread(self, name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        """A thread running ``target``; an exception that ends it is recorded under ``name``, so the report
        fails rather than counting fewer requests."""

        def recorded() -> None:
            try:
                target(*args)
            except Exception as error:
                with self.lock:
                    self.died.append(f"{name}: {error!r}")

        return threading.Thread(target=recorded, name=name)

    def client(self, mix: list[Upload], offset: int) -> None:
        order = itertools.islice(itertools.cycle(mix), offset * 3, None)  # clients out of step
        with httpx.Client(base_url=self.url, timeout=120) as client:
            for upload in order:
                if self.stop.is_set():
                    return
                try:
                    response = client.post(
                        f"/v1/models/{MODEL}/predict",
                        files={"file": (upload.name, upload.data)},
                        params={"clips": CLIPS, "top_k": len(LABELS)},
                    )
                except httpx.TransportError as error:
                    with self.lock:
                        self.transport_errors[f"{upload.name}: {type(error).__name__}"] += 1
                    if self.process.poll() is not None:
                        return  # the server is gone: the report says so
                    continue
                wrong = None
                if response.status_code == 200 and upload.name in self.expected:
                    wrong = wrong_answer(response.json(), self.expected[upload.name])
                with self.lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code != upload.expected:
                        self.unexpected[f"{upload.name}: {response.status_code}"] += 1
                    elif response.status_code == 200:
                        self.answers_checked += 1
                        if wrong is not None:
                            self.wrong[f"{upload.name}: {wrong}"] += 1

    def reloader(self) -> None:
        """Every ``reload_every_s``: load the other good version, then offer the corrupt one (first time: write it)."""
        with httpx.Client(base_url=self.url, timeout=120, headers=AUTH) as client:
            for version in itertools.cycle((1, 2)):
                if self.stop.wait(self.args.reload_every_s):
                    return
                loaded = client.post(f"/v1/models/{MODEL}/load", params={"version": version})
                self.reloads["ok" if loaded.status_code == 200 else "failed"] += 1
                if not (self.repository / MODEL / "3").exists():
                    add_corrupt_version(self.repository)
                offered = client.post(f"/v1/models/{MODEL}/load", params={"version": 3})
                still = client.get(f"/v1/models/{MODEL}").json()["version"]
                refused = offered.status_code == 502 and still == version
                self.reloads["corrupt_refused" if refused else "corrupt_accepted"] += 1

    def sample_memory(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(RSS_PERIOD_S):
            self.rss.append((time.monotonic() - started, resident_mib(self.process.pid)))

    def report(self, elapsed_s: float) -> Report:
        warmup = [mib for at, mib in self.rss if at <= self.args.warmup_s]
        after = [mib for at, mib in self.rss if at > self.args.warmup_s]
        warmup_peak, peak = max(warmup, default=math.nan), max(after, default=math.nan)
        requests = sum(self.statuses.values())
        return Report(
            requests=requests,
            statuses={str(status): count for status, count in sorted(self.statuses.items())},
            server_errors=sum(count for status, count in self.statuses.items() if status >= 500),
            unexpected=dict(self.unexpected),
            transport_errors=dict(self.transport_errors),
            answers_checked=self.answers_checked,
            wrong_answers=dict(self.wrong),
            reloads=self.reloads["ok"] + self.reloads["failed"],
            reloads_failed=self.reloads["failed"],
            corrupt_refused=self.reloads["corrupt_refused"],
            corrupt_accepted=self.reloads["corrupt_accepted"],
            threads_died=list(self.died),
            server_exit=self.process.poll(),
            rss_warmup_peak_mib=warmup_peak,
            rss_peak_mib=peak,
            rss_end_mib=after[-1] if after else math.nan,
            rss_growth=peak / warmup_peak - 1,
            requests_per_s=requests / elapsed_s,
        )


def print_report(report: Report, args: argparse.Namespace) -> None:
    print(
        f"{args.clients} clients for {args.duration_s:g} s (warm-up {args.warmup_s:g} s), "
        f"a reload every {args.reload_every_s:g} s"
    )
    print(f"requests: {report.requests} ({report.requests_per_s:.1f}/s), by status: {report.statuses}")
    print(f"server errors (5xx): {report.server_errors}   answers other than expected: {report.unexpected or 0}")
    print(f"requests without an answer (transport errors): {report.transport_errors or 0}")
    print(
        f"200s checked against their version run in-process (version, top-1, scores within {SCORE_TOLERANCE:g}): "
        f"{report.answers_checked}, wrong: {report.wrong_answers or 0}"
    )
    print(
        f"reloads: {report.reloads} ({report.reloads_failed} failed); corrupt version refused "
        f"{report.corrupt_refused} times, accepted {report.corrupt_accepted} times"
    )
    print(
        f"resident memory: warm-up peak {report.rss_warmup_peak_mib:.1f} MiB, peak after {report.rss_peak_mib:.1f} "
        f"MiB, end {report.rss_end_mib:.1f} MiB: growth {report.rss_growth:+.1%} (target < {MEMORY_TARGET:.0%})"
    )
    print(f"threads ended by an exception: {report.threads_died or 0}")
    running = "running" if report.server_exit is None else f"EXITED with {report.server_exit}"
    print(f"server process at the end: {running}")
    print("PASS" if report.passed() else "FAIL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--warmup-s", type=float, default=20.0, help="memory growth is measured after this")
    parser.add_argument("--reload-every-s", type=float, default=10.0)
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    mix = uploads()
    with tempfile.TemporaryDirectory(prefix="clipwise-load-") as directory:
        repository = make_repository(Path(directory))
        expected = expected_scores(repository, mix)
        log = Path(directory) / "server.log"
        with server_process(repository, log, args.torch_threads) as (process, url):
            report = Load(url, process, repository, expected, args).run(mix)
        server_log = log.read_text()
    print_report(report, args)
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2))
    if not report.passed():
        print(f"server log (last lines):\n{server_log[-3000:]}", file=sys.stderr)
    return 0 if report.passed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
