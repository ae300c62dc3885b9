"""The report of ``clipwise bench``: the table on stdout, the JSON document and the chart."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipwise.benching.load import PERCENTILES, LevelReport, Plan

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# (header, width): negative widths are left-aligned
TABLE_COLUMNS = (
    ("model", -28),
    ("backend", -11),
    ("conc", 4),
    ("ok", 9),
    *((f"p{q} ms", 8) for q in PERCENTILES),
    ("req/s", 7),
    ("batch", 5),
    ("GFLOPs exec/policy/full", 23),
    ("decode", 6),
    ("policy", 0),
)


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
        f"{report.executed_gflops:.3f}/{report.policy_gflops:.3f}/{report.full_gflops:.3f}",
        f"{report.decode_share:.0%}",
        policy_text(report.policy),
    ]


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
