"""``clipwise bench``: latency, throughput, compute and policy of served models under concurrent load.

For every model, backend and concurrency level, ``--requests`` predictions are sent by ``C`` clients in
a closed loop (each sends its next request when the last one is answered), cycling through the
``--video`` files, after ``--warmup`` unmeasured requests. Reported per level: p50 / p90 / p99 latency
as the client sees it (upload sent to response read), throughput (answered requests / wall time), the
mean batch size (requests that shared a forward pass: what batching does at each concurrency), mean
executed and full GFLOPs per request, mean policy usage (AdaFuse keep / reuse / skip; Ada3D frames and
3D stages kept; fusion units), the mean time of each server stage and the share of the server's time
spent decoding (from each response's ``timing_ms``). A table on stdout, ``--json`` and ``--chart``.

Without ``--url`` the service runs in this process: ``clipwise.service.app.create_app`` under uvicorn in a thread,
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
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipwise.benching.load import BenchError, LevelReport, Plan, Video, bench
from clipwise.benching.report import chart_title, draw_chart, format_table, write_json

if TYPE_CHECKING:
    from clipwise.service.config import Settings

MAX_CONCURRENCY = 256
READY_TIMEOUT_S = 60.0


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
    target.add_argument(
        "--device", metavar="D", help="in-process server: cpu, cuda or cuda:N (default: CLIPWISE_DEVICE, else cpu)"
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
    from clipwise.service.local import NotReady, local_server, wait_until_ready

    try:
        if args.url:
            wait_until_ready(args.url, READY_TIMEOUT_S)
            return {"url": args.url, "in_process": False}, asyncio.run(bench(args.url, plan))
        from pydantic import ValidationError

        from clipwise.service.app import ConfigurationError, create_app
        from clipwise.service.log import configure_logging

        settings = in_process_settings(args.model_repository, plan.models, args.device)
        configure_logging(settings.log_level)
        with local_server(create_app(settings)) as url:
            reports = asyncio.run(bench(url, plan))
    except (NotReady, ConfigurationError, ValidationError) as error:
        raise BenchError(str(error)) from None
    return {"url": url, "in_process": True, "settings": settings.model_dump(mode="json")}, reports


def in_process_settings(repository: Path | None, models: list[str] | None, device: str | None = None) -> Settings:
    """The environment's settings, serving ``models`` from ``repository`` and on ``device`` (those given),
    logging warnings only, over HTTP only (what is measured: a server on the gRPC port is left alone)."""
    from clipwise.service.config import Settings

    overrides: dict[str, Any] = {"log_level": "warning", "models": models, "grpc_port": 0}
    if repository is not None:
        overrides["model_repository"] = repository
    if device is not None:
        overrides["device"] = device
    return Settings(**overrides)
