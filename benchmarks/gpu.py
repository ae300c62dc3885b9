"""The GPU timings of issue 14, run by ``benchmarks/gpu_check.sh`` on a machine with CUDA.

At 8×224², one clip, random weights: TSN-R50, AdaFuse-TSN-R50 under random decisions (``random_decisions``)
and its fixed pattern (``force_saving``) at ``--saving`` (40 %), I3D-R50, and Ada3D-I3D-R50 under a random
plan and its fixed plan at the same saving. Each case runs on every runtime present, as the service runs it
(``clipwise.export.runtime`` backends on ``cuda``: the clip copied over and the logits back included):

* ``torch-cuda``: the eager model, its full-compute path through cuDNN against its policy path (AdaFuse's
  gated pairs as the Triton kernels, Ada3D's gathered frames and stages);
* ``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: the graph exported under the policy against the graph
  exported under full compute (onnxruntime-gpu; TensorRT where the ``tensorrt`` package imports).

Per row: p50 milliseconds of the policy path and of full compute (interleaved rounds after a warm-up, each
call finished on the GPU before the next), their time ratio, the executed- and policy-FLOPs ratios, and
time / executed. Written to ``--out`` as ``gpu_check.json`` and ``gpu_check.md`` (a table). Targets (exit 1
when missed, or NOT MEASURED where their row was not produced: another ``--saving``, ``--presets`` or
``--device``): AdaFuse-TSN-R50, random decisions at 40 %, on torch-cuda: its p50 no slower than full compute
(dense cuDNN) and a time ratio ≤ 1.2 × its executed-FLOPs ratio. TF32 is left at PyTorch's default for
cuDNN (on), which the Triton kernels then use too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import adaptive  # noqa: E402
from clipwise.export.onnx import save_onnx, to_onnx  # noqa: E402
from clipwise.export.runtime import BackendUnavailable, OnnxBackend, TorchBackend, providers_for  # noqa: E402
from clipwise.models import Execution, VideoClassifier, create_model  # noqa: E402
from clipwise.models.checkpoint import LoadedVersion, load_version, save_version  # noqa: E402
from clipwise.models.device import DeviceUnavailable, resolve_device  # noqa: E402

PRESETS = ("tsn_r50", "adafuse_tsn_r50", "i3d_r50", "ada3d_i3d_r50")
Policy = Callable[[], contextlib.AbstractContextManager]


@dataclass
class Row:
    model: str
    runtime: str
    case: str  # dense (static models), random-40%, fixed-40%
    policy_ms: float
    full_ms: float
    executed_ratio: float
    policy_ratio: float

    @property
    def time_ratio(self) -> float:
        return self.policy_ms / self.full_ms

    @property
    def per_executed(self) -> float:
        return self.time_ratio / self.executed_ratio


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def p50_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, one of each per round (order alternating), after two warm-up rounds;
    every call waits for the GPU."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(repeats + 2):
        order = list(runs.items()) if round_index % 2 == 0 else list(runs.items())[::-1]
        for name, run in order:
            synchronize()
            started = time.perf_counter()
            run()
            synchronize()
            if round_index >= 2:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def policies(model: VideoClassifier, saving: float) -> Iterator[tuple[str, Policy]]:
    """(case, policy) of a preset: its random and fixed decisions at ``saving``; static models: none."""
    level = f"{saving:.0%}"
    if model.capabilities.policy == "gated_pairs":
        decisions = model.random_decisions(saving)
        fixed = model.fixed_decisions(saving)  # built once, outside what is timed
        yield f"random-{level}", lambda: model.follow_policy(decisions)
        yield f"fixed-{level}", lambda: model.follow_policy(fixed)
    elif model.capabilities.policy == "clip_plans":
        plan, fixed_plan = model.random_plan(saving), model.saving_plan(saving).plan
        yield f"random-{level}", lambda: model.follow_plan(plan)
        yield f"fixed-{level}", lambda: model.follow_plan(fixed_plan)
    else:
        yield "dense", contextlib.nullcontext


def onnx_providers(device: torch.device) -> dict[str, list]:
    """The ONNX Runtime providers to time, by runtime label: CUDA, and TensorRT where it is present (the CPU's
    on the CPU)."""
    chosen = providers_for(device)  # raises BackendUnavailable on CUDA without onnxruntime-gpu
    if device.type == "cpu":
        return {"onnxruntime": chosen}
    names = [entry if isinstance(entry, str) else entry[0] for entry in chosen]
    runtimes = {"onnxruntime-cuda": [e for e, name in zip(chosen, names, strict=True) if "Tensorrt" not in name]}
    if names[0] == "TensorrtExecutionProvider":
        runtimes["onnxruntime-tensorrt"] = chosen
    return runtimes


def row_of(model: str, runtime: str, case: str, policy_call: Callable[[], Execution], full_call: Callable[[], object],
           repeats: int) -> Row:  # fmt: skip
    """One case: ``policy_call`` gives its FLOPs, the interleaved p50s of the two calls its times."""
    execution = policy_call()
    times = p50_interleaved({"policy": policy_call, "full": full_call}, repeats)
    full_gflops = execution.full_gflops
    return Row(
        model, runtime, case, times["policy"], times["full"],
        execution.executed_gflops[0] / full_gflops, execution.policy_gflops[0] / full_gflops,
    )  # fmt: skip


def preset_rows(
    preset: str, saving: float, repeats: int, work: Path, skip: dict[str, str], device: torch.device
) -> Iterator[Row]:
    torch.manual_seed(0)
    model = create_model(preset).eval()
    labels = [str(index) for index in range(model.config.num_classes)]
    loaded: LoadedVersion = load_version(
        work, preset, int(save_version(model, labels, work, preset, trained=False).name)
    )
    model = loaded.model.eval()
    config = model.config
    clip = torch.randn(1, 3, config.frames, config.size, config.size, generator=torch.Generator().manual_seed(0))
    cases = list(policies(model, saving))
    graphs: dict[str, Path] = {}
    if "onnxruntime" not in skip:  # exported on the CPU, before the model moves to the GPU
        for case, policy in [("full", model.full_compute), *cases]:
            if case == "dense":  # a static model: its one graph
                graphs[case] = graphs["full"]
                continue
            with policy():
                proto = to_onnx(model, weights_sha256=loaded.manifest.weights_sha256)
            graphs[case] = save_onnx(proto, work / f"{preset}-{case}.onnx")
    backend = TorchBackend(model, device)
    backend.calibrate(tuple(clip.shape[1:]))
    execute = partial(backend.execute, clip)
    full = adaptive.under(model.full_compute, execute)
    for case, policy in cases:
        yield row_of(preset, backend.label, case, adaptive.under(policy, execute), full, repeats)
    if "onnxruntime" in skip:
        return
    for runtime, providers in onnx_providers(device).items():
        opened = {}
        for case, path in graphs.items():
            opened[case] = OnnxBackend(path, loaded, providers=providers)
            if case != "full":  # the full-compute graph has no gated node to calibrate
                opened[case].calibrate(tuple(clip.shape[1:]))
        full = partial(opened["full"].execute, clip)  # timed as the policy graphs are: run and decoded
        for case, _ in cases:  # the policy is in the graph
            yield row_of(preset, runtime, case, partial(opened[case].execute, clip), full, repeats)


HEADER = (
    "| model | runtime | case | policy p50 ms | full p50 ms | time ratio | executed FLOPs ratio | "
    "policy FLOPs ratio | time / executed |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
)


def table_line(row: Row) -> str:
    return (
        f"| {row.model} | {row.runtime} | {row.case} | {row.policy_ms:.2f} | {row.full_ms:.2f} | "
        f"{row.time_ratio:.3f} | {row.executed_ratio:.3f} | {row.policy_ratio:.3f} | {row.per_executed:.3f} |"
    )


TARGET_ROW = ("adafuse_tsn_r50", "torch-cuda", "random-40%")  # (model, runtime, case) the targets are about


def missed_targets(rows: list[Row]) -> list[str]:
    """The targets of the module docstring that ``rows`` miss, each with the figure, or NOT MEASURED."""
    target = [row for row in rows if (row.model, row.runtime, row.case) == TARGET_ROW]
    if not target:
        return [f"NOT MEASURED: {' '.join(TARGET_ROW)} (--saving 0.4, --presets adafuse_tsn_r50, --device cuda)"]
    missed = []
    for row in target:
        if row.policy_ms > row.full_ms:
            missed.append(f"{row.case} gated p50 {row.policy_ms:.2f} ms > dense cuDNN {row.full_ms:.2f} ms")
        if row.time_ratio > 1.2 * row.executed_ratio:
            missed.append(f"{row.case} time ratio {row.time_ratio:.3f} > 1.2 × executed {row.executed_ratio:.3f}")
    return missed


def environment(device: torch.device) -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
    for name in ("triton", "onnxruntime", "tensorrt"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "absent"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory of gpu_check.json and gpu_check.md")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--saving", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds after two warm-up rounds")
    parser.add_argument("--no-onnx", action="store_true", help="time the torch runtime only")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu: a dry run of this script)")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except DeviceUnavailable as error:
        raise SystemExit(f"benchmarks/gpu.py: {error}") from None
    skip: dict[str, str] = {}
    if args.no_onnx:
        skip["onnxruntime"] = "--no-onnx"
    else:
        try:
            onnx_providers(device)
        except (ImportError, BackendUnavailable) as reason:
            skip["onnxruntime"] = str(reason)
    found = environment(device)
    print(json.dumps(found), f"skipped: {skip}", sep="\n", flush=True)
    print(HEADER, flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="clipwise-gpu-") as scratch:
        for preset in args.presets:
            for row in preset_rows(preset, args.saving, args.repeats, Path(scratch), skip, device):
                print(table_line(row), flush=True)
                rows.append(row)
    missed = missed_targets(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "environment": found,
        "skipped": skip,
        "repeats": args.repeats,
        "rows": [{**asdict(row), "time_ratio": row.time_ratio, "per_executed": row.per_executed} for row in rows],
        "missed_targets": missed,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"Environment: {json.dumps(found)}; skipped: {skip or 'nothing'}", "", HEADER, *map(table_line, rows)]
    lines += ["", *(f"target MISSED: {line}" for line in missed)]
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return adaptive.finish(missed)


if __name__ == "__main__":
    raise SystemExit(main())
