"""``clipwise bench``: latency, throughput, compute and policy of served models under concurrent load.

For every model, backend and concurrency level, ``--requests`` predictions are sent by ``C`` clients in
a closed loop (each sends its next request when the last one is answered), cycling through the
``--video`` files, after ``--warmup`` unmeasured requests. Reported per level: p50 / p90 / p99 latency
as the client sees it (upload sent to response read), throughput (answered requests / wall time), the
mean batch size (requests that shared a forward pass: what batching does at each concurrency), mean
executed and full GFLOPs per request, mean policy usage (AdaFuse keep / reuse / skip; Ada3D frames and
3D stages kept; fusion units), the mean time of each server stage and the share of the server's time
spent decoding (from each response's ``timing_ms``). A table on stdout, ``--json`` and ``--chart``.

Without ``--url`` the service runs in this process: ``service.app.create_app`` under uvicorn in a thread,
on a free 127.0.0.1 port, with the settings of the environment (``CLIPWISE_*``) plus ``--model-repository``
and the models benchmarked. Requests cross a real socket and the real HTTP stack (h11, the streamed
multipart upload), the path ``clipwise serve`` takes, rather than an ASGI transport that would skip both
and run client and server on one event loop. Client and server still share the interpreter (the GIL):
for a server on its own, start ``clipwise serve`` and pass ``--url``. Traffic goes to loopback or to
``--url`` only. Each level stops early at ``--time-limit``; each request gives up at ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI
    from matplotlib.axes import Axes

    from service.config import Settings
    from service.schemas import PredictResponse

PERCENTILES = (50, 90, 99)
MAX_CONCURRENCY = 256
READY_POLL_S = 0.1
READY_TIMEOUT_S = 60.0
# (header, width): negative widths are left-aligned
TABLE_COLUMNS = (
    ("model", -28),
    ("backend", -11),
    ("conc", 4),
    ("ok", 9),
    *((f"p{q} ms", 8) for q in PERCENTILES),
    ("req/s", 7),
    ("batch", 5),
    ("GFLOPs exec/full", 17),
    ("decode", 6),
    ("policy", 0),
)


class BenchError(RuntimeError):
    """The benchmark cannot run as asked."""


class RequestFailed(RuntimeError):
    """A request got no usable answer; the message says why (status, error code, server message)."""


@dataclass(frozen=True)
class Video:
    name: str
    data: bytes


@dataclass(frozen=True)
class Plan:
    """What to send, how many and how fast."""

    models: list[str] | None
    backends: list[str | None]
    videos: list[Video]
    requests: int
    concurrency: list[int]
    clips: int
    crops: int
    warmup: int
    timeout_s: float
    time_limit_s: float


@dataclass
class LevelReport:
    """One model and backend at one concurrency level: counts, client latency (ms), and means over the answered
    requests of their GFLOPs, batch size, policy numbers and server stage times (ms)."""

    model: str
    backend: str
    concurrency: int
    sent: int
    answered: int
    errors: dict[str, int]
    wall_s: float
    throughput_rps: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    version: int | None = None
    executed_gflops: float | None = None
    full_gflops: float | None = None
    batch_size: float | None = None
    policy: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    decode_share: float | None = None


# ---------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark latency, throughput, FLOPs and policy of served models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("target")
    target.add_argument("--url", help="a running server (default: serve in this process on 127.0.0.1)")
    target.add_argument(
        "--model-repository", type=Path, metavar="DIR", help="in-process server: repository (default: the bundled)"
    )
    target.add_argument("--models", type=_names, metavar="A,B,...", help="models to benchmark (default: all served)")
    target.add_argument(
        "--backend",
        type=_names,
        metavar="B,...",
        help="runtimes to ask for, e.g. torch,onnxruntime (default: the model's)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--video", type=Path, nargs="+", required=True, metavar="FILE", help="clips to upload, in turn")
    load.add_argument("--requests", type=_bounded(1, 100_000), default=50, metavar="N", help="per level (default: 50)")
    load.add_argument(
        "--concurrency",
        type=_levels,
        default=[1],
        metavar="C[,C2,...]",
        help=f"clients in flight, one level per value, 1..{MAX_CONCURRENCY} (default: 1)",
    )
    load.add_argument(
        "--clips", type=_bounded(1, 10), default=1, metavar="N", help="temporal clips per request (default: 1)"
    )
    load.add_argument("--crops", type=int, choices=(1, 3), default=1, help="spatial crops per clip (default: 1)")
    load.add_argument(
        "--warmup", type=_bounded(0, 1000), default=2, metavar="N", help="unmeasured requests per level (default: 2)"
    )
    load.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per request, seconds (default: 120)")
    load.add_argument(
        "--time-limit", type=float, default=300.0, metavar="S", help="per level: no new request after it (default: 300)"
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, required=True, metavar="OUT", help="write the full report here")
    output.add_argument("--chart", type=Path, metavar="OUT.png", help="draw latency, throughput and stages here")
    parser.set_defaults(run=run)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more comma-separated names")
    return names


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def _levels(text: str) -> list[int]:
    return [_bounded(1, MAX_CONCURRENCY)(value) for value in _names(text)]


def plan_from(args: argparse.Namespace) -> Plan:
    """The benchmark the flags describe; raises ``BenchError`` for a video that cannot be read."""
    videos = []
    for path in args.video:
        try:
            videos.append(Video(path.name, path.read_bytes()))
        except OSError as error:
            raise BenchError(f"cannot read video {path}: {error.strerror}") from None
    if args.timeout <= 0 or args.time_limit <= 0:
        raise BenchError("--timeout and --time-limit must be positive")
    return Plan(
        models=args.models,
        backends=args.backend or [None],
        videos=videos,
        requests=args.requests,
        concurrency=args.concurrency,
        clips=args.clips,
        crops=args.crops,
        warmup=args.warmup,
        timeout_s=args.timeout,
        time_limit_s=args.time_limit,
    )


def run(args: argparse.Namespace) -> int:
    try:
        plan = plan_from(args)
        server, reports = measure(args, plan)
    except BenchError as error:
        print(f"clipwise bench: {error}", file=sys.stderr)
        return 2
    print(format_table(reports))
    write_json(args.json, plan, server, reports)
    print(f"wrote {args.json}")
    if args.chart:
        draw_chart(args.chart, reports, title=chart_title(plan, server))
        print(f"wrote {args.chart}")
    failed = sum(sum(report.errors.values()) for report in reports)
    if failed:
        print(f"clipwise bench: {failed} request(s) failed; see 'errors' above and in {args.json}", file=sys.stderr)
    return 1 if failed else 0


def measure(args: argparse.Namespace, plan: Plan) -> tuple[dict[str, Any], list[LevelReport]]:
    """The server benchmarked (``--url`` or one started here) and the reports of its levels."""
    if args.url:
        wait_until_ready(args.url, READY_TIMEOUT_S)
        return {"url": args.url, "in_process": False}, asyncio.run(bench(args.url, plan))
    from service.app import create_app
    from service.log import configure_logging

    settings = in_process_settings(args.model_repository, plan.models)
    configure_logging(settings.log_level)
    with local_server(create_app(settings)) as url:
        reports = asyncio.run(bench(url, plan))
    return {"url": url, "in_process": True, "settings": settings.model_dump(mode="json")}, reports


# ---------------------------------------------------------------- the in-process server


def in_process_settings(repository: Path | None, models: list[str] | None) -> Settings:
    """The environment's settings, serving ``models`` from ``repository`` (when given), logging warnings only."""
    from service.config import Settings

    overrides: dict[str, Any] = {"log_level": "warning", "models": models}
    if repository is not None:
        overrides["model_repository"] = repository
    return Settings(**overrides)


@contextlib.contextmanager
def local_server(app: FastAPI) -> Iterator[str]:
    """A Clipwise ``app`` (``service.app.create_app``) under uvicorn in a daemon thread on a free 127.0.0.1
    port, once every default model is loaded and warmed up; yields its base URL and stops it on exit."""
    from service.local import serve_in_thread

    startup = app.state.service.startup
    try:
        with serve_in_thread(app) as url:
            while startup.status == "loading":
                time.sleep(READY_POLL_S)
            if startup.status == "failed":
                raise BenchError(f"the in-process server is not ready: {startup.detail}")
            yield url
    except RuntimeError as error:
        raise BenchError(f"the in-process server did not start: {error}") from None


def wait_until_ready(url: str, timeout_s: float) -> None:
    """Poll ``/readyz`` until it answers 200; raise ``BenchError`` with its last answer after ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get("/readyz")
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return
                last = describe_failure(response)
            time.sleep(READY_POLL_S)
    raise BenchError(f"{url} was not ready within {timeout_s:g} s: {last}")


# ---------------------------------------------------------------- load


async def bench(url: str, plan: Plan) -> list[LevelReport]:
    """Every model x backend x concurrency level of ``plan`` against the server at ``url``, in that order."""
    import httpx

    limits = httpx.Limits(max_connections=max(plan.concurrency), max_keepalive_connections=max(plan.concurrency))
    async with httpx.AsyncClient(base_url=url, timeout=plan.timeout_s, limits=limits) as client:
        models = plan.models or await served_models(client)
        reports = []
        for model, backend, concurrency in itertools.product(models, plan.backends, plan.concurrency):
            print(f"{model} backend={backend or 'default'} concurrency={concurrency} ...", file=sys.stderr, flush=True)
            reports.append(await measure_level(client, plan, model, backend, concurrency))
    return reports


async def served_models(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/models")
    if response.status_code != 200:
        raise BenchError(f"cannot list the served models: {describe_failure(response)}")
    names = [model["name"] for model in response.json()["models"]]
    if not names:
        raise BenchError("the server serves no model")
    return names


async def measure_level(
    client: httpx.AsyncClient, plan: Plan, model: str, backend: str | None, concurrency: int
) -> LevelReport:
    """Warm up, then ``plan.requests`` predictions from ``concurrency`` closed-loop clients."""
    videos = itertools.cycle(plan.videos)
    for _ in range(plan.warmup):
        try:
            await predict(client, plan, model, backend, next(videos))
        except RequestFailed as error:  # every request would fail the same way: report it once, move on
            return summarize(model, backend, concurrency, [], Counter([str(error)]), wall_s=0.0)
    answers: list[tuple[float, PredictResponse]] = []
    errors: Counter[str] = Counter()
    tickets = iter(range(plan.requests))
    deadline = time.perf_counter() + plan.time_limit_s

    async def client_loop() -> None:
        while time.perf_counter() < deadline and next(tickets, None) is not None:
            try:
                answers.append(await predict(client, plan, model, backend, next(videos)))
            except RequestFailed as error:
                errors[str(error)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return summarize(model, backend, concurrency, answers, errors, wall_s)


async def predict(
    client: httpx.AsyncClient, plan: Plan, model: str, backend: str | None, video: Video
) -> tuple[float, PredictResponse]:
    """One prediction: client-side latency in milliseconds and the parsed response."""
    import httpx

    from service.schemas import PredictResponse

    params: dict[str, Any] = {"clips": plan.clips, "crops": plan.crops}
    if backend is not None:
        params["backend"] = backend
    started = time.perf_counter()
    try:
        response = await client.post(
            f"/v1/models/{model}/predict", params=params, files={"file": (video.name, video.data)}
        )
    except httpx.TimeoutException:
        raise RequestFailed(f"no answer within {plan.timeout_s:g} s") from None
    except httpx.HTTPError as error:
        raise RequestFailed(f"{type(error).__name__}: {error}") from None
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RequestFailed(describe_failure(response))
    answer = PredictResponse.model_validate_json(response.content)
    if backend is not None and answer.backend != backend:
        raise RequestFailed(f"asked for backend {backend}, answered by {answer.backend}")
    return latency_ms, answer


def describe_failure(response: httpx.Response) -> str:
    """``STATUS code: message`` from a Clipwise error body, or the status and the start of the body."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"


# ---------------------------------------------------------------- statistics


def summarize(
    model: str,
    backend: str | None,
    concurrency: int,
    answers: list[tuple[float, PredictResponse]],
    errors: Counter[str],
    wall_s: float,
) -> LevelReport:
    """The figures of one level from its answers (client latency, parsed response)."""
    import numpy as np

    from models.policy import policy_fractions

    report = LevelReport(
        model=model,
        backend=answers[0][1].backend if answers else backend or "default",
        concurrency=concurrency,
        sent=len(answers) + errors.total(),
        answered=len(answers),
        errors=dict(errors),
        wall_s=wall_s,
        throughput_rps=len(answers) / wall_s if wall_s else 0.0,
    )
    if not answers:
        return report
    latencies = np.array([latency for latency, _ in answers])
    responses = [response for _, response in answers]
    report.latency_ms = {f"p{q}": float(np.percentile(latencies, q)) for q in PERCENTILES}
    report.latency_ms |= {"mean": float(latencies.mean()), "max": float(latencies.max())}
    report.version = responses[-1].version
    report.executed_gflops = mean(response.flops.executed_gflops for response in responses)
    report.full_gflops = mean(response.flops.full_gflops for response in responses)
    report.batch_size = mean(response.batch_size for response in responses)
    views = [policy_fractions(policy) for response in responses for policy in response.policy or []]
    report.policy = {key: mean(numbers[key] for numbers in views) for key in views[0]} if views else {}
    timings = [response.timing_ms.model_dump() for response in responses]
    report.stages_ms = {stage: mean(timing[stage] for timing in timings) for stage in timings[0]}
    total = report.stages_ms["total"]
    report.decode_share = report.stages_ms["decode"] / total if total else 0.0
    return report


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def policy_text(policy: dict[str, float]) -> str:
    """Short table cell for a level's mean policy usage."""
    if "keep" in policy:
        return f"keep {policy['keep']:.2f} reuse {policy['reuse']:.2f} skip {policy['skip']:.2f}"
    if "frame_fraction" in policy:
        return f"frames {policy['frame_fraction']:.2f} 3D stages {policy['stage_fraction']:.2f}"
    return " ".join(f"{unit} {share:.2f}" for unit, share in policy.items()) or "-"


def format_table(reports: list[LevelReport]) -> str:
    """One line per level, then the errors met, with their counts."""
    header = table_line([name for name, _ in TABLE_COLUMNS])
    lines = [header, "-" * len(header)] + [table_line(level_cells(report)) for report in reports]
    failures = [(report, error, count) for report in reports for error, count in report.errors.items()]
    if failures:
        lines += ["", "errors:"]
        lines += [
            f"  {report.model} {report.backend} c={report.concurrency}: {count} x {error}"
            for report, error, count in failures
        ]
    return "\n".join(lines)


def table_line(cells: list[str]) -> str:
    """Cells padded to their column's width (negative: left-aligned); a failed level has fewer cells."""
    widths = [width for _, width in TABLE_COLUMNS[: len(cells)]]
    padded = [
        f"{cell:<{-width}}" if width < 0 else f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True)
    ]
    return " ".join(padded).rstrip()


def level_cells(report: LevelReport) -> list[str]:
    cells = [report.model, report.backend, str(report.concurrency), f"{report.answered}/{report.sent}"]
    if not report.answered:
        return [*cells, "failed"]
    latency = report.latency_ms
    return [
        *cells,
        *(f"{latency[f'p{q}']:.1f}" for q in PERCENTILES),
        f"{report.throughput_rps:.2f}",
        f"{report.batch_size:.1f}",
        f"{report.executed_gflops:.3f}/{report.full_gflops:.3f}",
        f"{report.decode_share:.0%}",
        policy_text(report.policy),
    ]


# ---------------------------------------------------------------- files


def write_json(path: Path, plan: Plan, server: dict[str, Any], reports: list[LevelReport]) -> None:
    from clipwise import __version__

    document = {
        "clipwise": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpu_count()},
        "server": server,
        "load": {
            "requests_per_level": plan.requests,
            "concurrency": plan.concurrency,
            "warmup": plan.warmup,
            "clips": plan.clips,
            "crops": plan.crops,
            "timeout_s": plan.timeout_s,
            "time_limit_s": plan.time_limit_s,
            "videos": [{"name": video.name, "bytes": len(video.data)} for video in plan.videos],
        },
        "results": [asdict(report) for report in reports],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _cpu_count() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def chart_title(plan: Plan, server: dict[str, Any]) -> str:
    where = "in-process server" if server["in_process"] else server["url"]
    return (
        f"clipwise bench - {where}, {plan.requests} requests per level, "
        f"{plan.clips} clip(s) x {plan.crops} crop(s) per request"
    )


def draw_chart(path: Path, reports: list[LevelReport], title: str) -> None:
    """Three panels: p50 (solid) and p99 (dashed) latency and throughput against concurrency, one line per
    model and backend; the mean time of each server stage at every level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [report for report in reports if report.answered]
    series: dict[str, list[LevelReport]] = {}
    for report in measured:
        series.setdefault(f"{report.model} ({report.backend})", []).append(report)
    height = max(5.0, 1.5 + 0.35 * len(measured))
    figure, (latency, throughput, stages) = plt.subplots(
        1, 3, figsize=(17, height), gridspec_kw={"width_ratios": [1, 1, 1.3]}, layout="constrained"
    )
    for label, levels in series.items():
        concurrency = [level.concurrency for level in levels]
        (line,) = latency.plot(concurrency, [level.latency_ms["p50"] for level in levels], "o-", label=f"{label} p50")
        latency.plot(
            concurrency,
            [level.latency_ms["p99"] for level in levels],
            "s--",
            color=line.get_color(),
            label=f"{label} p99",
        )
        throughput.plot(
            concurrency, [level.throughput_rps for level in levels], "o-", color=line.get_color(), label=label
        )
    levels = sorted({report.concurrency for report in measured})
    for axis, ylabel in ((latency, "latency, ms"), (throughput, "answered requests / s")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    latency.set_title("latency")
    throughput.set_title("throughput")
    draw_stages(stages, measured)
    figure.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_stages(axis: Axes, reports: list[LevelReport]) -> None:
    """Horizontal stacked bars: the mean server time of each stage at every level."""
    labels = [f"{report.model} ({report.backend}) c={report.concurrency}" for report in reports]
    stages = [stage_times(report) for report in reports]
    left = [0.0] * len(reports)
    for stage in stages[0] if stages else []:
        widths = [times[stage] for times in stages]
        axis.barh(labels, widths, left=left, label=stage)
        left = [start + width for start, width in zip(left, widths, strict=True)]
    axis.invert_yaxis()
    axis.set_xlabel("mean server time per request, ms")
    axis.set_title("where the server's time goes")
    axis.legend(
        fontsize="small",
        ncols=len(stages[0]) if stages else 1,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        frameon=False,
    )
    axis.grid(axis="x", alpha=0.3)


def stage_times(report: LevelReport) -> dict[str, float]:
    """Mean milliseconds of each timed stage, plus 'other': the rest of the total (routing, serialising)."""
    stages = {stage: ms for stage, ms in report.stages_ms.items() if stage != "total"}
    return stages | {"other": max(report.stages_ms["total"] - sum(stages.values()), 0.0)}
