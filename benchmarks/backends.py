"""Which runtime runs each model fastest here, what ``auto`` picks, and how near the machine's peak it comes
(issue 20).

Static presets at their paper configuration (the preset's frames and size; ``preset@size`` for another size),
one clip a call: torch eager, ONNX Runtime and OpenVINO on the graph ``clipwise export onnx`` writes, through
the backends the service uses (``clipwise.export.runtime``, execution record included), interleaved rounds, medians. The
``auto`` column is the backend ``clipwise.service.backends.choose_backend`` picks, run as a loading version runs it
(its own interleaved rounds, after the warm-up); its speed-up is torch's median over the picked backend's
median in this benchmark's rounds. GMAC/s = the preset's full GMACs / median seconds, against the machine's
sgemm GMAC/s (``torch.mm`` of 2048² float32 matrices on the same threads): a peak, the fastest of many runs
after a warm-up, measured before and after the static rows in this run (the higher of the two). A backend
above it means the peak was not reached by sgemm, and is reported as a missed target.

Adaptive presets (``--adaptive``), per backend, the graph of a policy against that backend's static graph of
the same network, in ``benchmarks/adaptive.py``'s cases (``preset_policies``: random and fixed policies on the
paper presets; learned ones on the bundled models): ONNX Runtime's rows are that script's own
(``learned_rows``, ``preset_rows``); torch's (the eager executor against its full compute) and OpenVINO's
(Ada3D only: AdaFuse cannot run there) are made here from the same cases.

Targets (exit status 1 when one is missed, or NOT MEASURED where its rows were not produced): ``auto`` ≥
1.2× torch on every static preset at its paper configuration, ≥ 1.5× on X3D-S and ≥ 1.3× on I3D-R50; the
fastest backend on TSN-R50 at ≥ 0.75 of sgemm GMAC/s and no backend above it; every adaptive row's time
ratio (policy / static graph, same backend) ≤ 1.0, with random and fixed rows of each adaptive preset on
every backend it runs on (``ADAPTIVE``).

    .venv/bin/python benchmarks/backends.py                              # every static preset, 2 threads
    .venv/bin/python benchmarks/backends.py --static tsn_r50 x3d_s i3d_r50@224 --adaptive --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import adaptive  # noqa: E402
from clipwise.export.onnx import save_onnx, to_onnx  # noqa: E402
from clipwise.export.runtime import BackendUnavailable, OnnxBackend, OpenVinoBackend, TorchBackend, interleaved_ms  # noqa: E402
from clipwise.models import Execution, create_model  # noqa: E402
from clipwise.models.checkpoint import LoadedVersion, load_version, save_version  # noqa: E402
from clipwise.service.backends import Backends, choose_backend  # noqa: E402

STATIC = [
    "tsn_r18",
    "tsn_r50",
    "tsm_r18",
    "tsm_r50",
    "ctnet_r50",
    "i3d_r50",
    "slowonly_r50",
    "x3d_s",
    "x3d_m",
    "x3d_l",
    "e3d_s",
    "e3d_m",
    "e3d_l",
    "fusion_densenet121",
]
ADAPTIVE = {  # preset: the backends its rows must come from (OpenVINO cannot run AdaFuse's operators)
    "adafuse_tsn_r50": ("onnxruntime", "torch"),
    "ada3d_i3d_r50": ("onnxruntime", "torch", "openvino"),
}
BACKENDS = ("torch", "onnxruntime", "openvino")
AUTO_TARGET, PER_PRESET_TARGETS, SGEMM_TARGET = 1.2, {"x3d_s": 1.5, "i3d_r50": 1.3}, 0.75
SGEMM_SIZE = 2048


def sgemm_gmacs(least: int = 30, patience: int = 10) -> float:
    """Peak GMAC/s of one 2048³ float32 matrix product on torch's threads: its fastest run after a warm-up, of
    at least ``least`` runs and until ``patience`` runs in a row have not beaten it (a median of a few runs
    falls with any other load on the machine, and backends then seem to pass the peak)."""
    a, b = torch.randn(SGEMM_SIZE, SGEMM_SIZE), torch.randn(SGEMM_SIZE, SGEMM_SIZE)
    torch.mm(a, b)
    fastest, runs, unbeaten = math.inf, 0, 0
    while runs < least or unbeaten < patience:
        started = time.perf_counter()
        torch.mm(a, b)
        seconds = time.perf_counter() - started
        fastest, unbeaten = (seconds, 0) if seconds < fastest else (fastest, unbeaten + 1)
        runs += 1
    return SGEMM_SIZE**3 / fastest / 1e9


def build(spec: str, repository: Path) -> LoadedVersion:
    """``preset`` or ``preset@size``, saved (random weights) and loaded back as the service would."""
    name, _, size = spec.partition("@")
    torch.manual_seed(0)
    model = create_model(name, **({"size": int(size)} if size else {}))
    labels = [str(index) for index in range(model.config.num_classes)]
    version_dir = save_version(model, labels, repository, name, trained=False)
    return load_version(repository, name, int(version_dir.name))


def opened_backends(loaded: LoadedVersion, path: Path) -> Backends:
    """The three backends of ``loaded`` with its graph exported to ``path``, opened as the service opens them."""
    save_onnx(to_onnx(loaded.model, weights_sha256=loaded.manifest.weights_sha256), path)
    available, unavailable = {"torch": TorchBackend(loaded.model)}, {}
    for name, backend in (("onnxruntime", OnnxBackend), ("openvino", OpenVinoBackend)):
        try:
            available[name] = backend(path, loaded)
        except BackendUnavailable as reason:
            unavailable[name] = str(reason)
    return Backends(available, unavailable)


def bench_static(spec: str, repository: Path, repeats: int) -> tuple[float, float, str]:
    """Print one preset's row; returns auto's speed-up over torch, the fastest backend's GMAC/s and its name."""
    loaded = build(spec, repository)
    backends = opened_backends(loaded, repository / f"{spec}.onnx")
    clip_shape = (3, loaded.model.config.frames, loaded.model.config.size, loaded.model.config.size)
    clip = torch.randn(1, *clip_shape, generator=torch.Generator().manual_seed(0))
    calls = {name: (lambda backend=backend: backend.execute(clip)) for name, backend in backends.available.items()}
    for call in calls.values():
        call()  # the warm-up a loading version gets
    picked = choose_backend(backends, "auto", clip_shape).chosen
    medians, _ = interleaved_ms(calls, repeats)
    gflops = loaded.manifest.full_gflops
    fastest = min(medians, key=medians.__getitem__)
    cells = " ".join(f"{medians[name]:>9.1f} {gflops / medians[name] * 1e3:>6.1f}" for name in BACKENDS)
    speedup = medians["torch"] / medians[picked]
    print(f"{spec:<22} {gflops:>7.2f} {cells} {picked:>12} {speedup:>6.2f}", flush=True)
    return speedup, gflops / medians[fastest] * 1e3, fastest


def policy_calls(
    loaded: LoadedVersion, backend: str, policy: adaptive.Policy, clip: torch.Tensor, path: Path
) -> tuple[Callable[[], Execution], Callable[[], object]]:
    """One clip through ``loaded``'s model under ``policy``, as an execution record and as the call to time:
    eagerly (torch: the forward pass, as ``adaptive.torch_row`` times it), or through the graph exported under
    the policy and compiled by OpenVINO."""
    model = loaded.model
    if backend == "torch":
        return adaptive.under(policy, lambda: model.execute(clip)), adaptive.under(policy, lambda: model(clip))
    with policy():
        proto = to_onnx(model, weights_sha256=loaded.manifest.weights_sha256)
    backend = OpenVinoBackend(save_onnx(proto, path), loaded)
    return (lambda: backend.execute(clip),) * 2


def own_rows(preset: str, backend: str, args: argparse.Namespace, work: Path) -> Iterator[adaptive.Row]:
    """``adaptive.preset_rows``' cases of ``preset`` on torch or OpenVINO (where it runs: Ada3D): each policy
    against full compute on the same backend."""
    loaded = build(preset, work)
    model = loaded.model.eval()
    if backend == "openvino" and not model.capabilities.policy == "clip_plans":
        return
    model.calibrate()
    config = model.config
    clip = torch.randn(1, 3, config.frames, config.size, config.size, generator=torch.Generator().manual_seed(0))
    _, full = policy_calls(loaded, backend, model.full_compute, clip, work / f"{preset}-full.onnx")
    for kind, case, policy in adaptive.preset_policies(model, args.savings, args.policies):
        record, call = policy_calls(loaded, backend, policy, clip, work / f"{preset}{case}.onnx".replace(" ", "_"))
        with torch.inference_mode():
            execution = record()
            seconds = adaptive.interleaved({"policy": call, "full": full}, args.repeats)
        yield adaptive.Row(
            model=preset,
            backend=backend,
            kind=kind,
            case=case,
            policy_ratio=execution.policy_gflops[0] / execution.full_gflops,
            executed_ratio=execution.executed_gflops[0] / execution.full_gflops,
            time_ratio=seconds["policy"] / seconds["full"],
            policy_ms=seconds["policy"] * 1e3,
            full_ms=seconds["full"] * 1e3,
        )


def bench_adaptive(args: argparse.Namespace, work: Path) -> list[adaptive.Row]:
    """Every adaptive row, printed as it comes: ONNX Runtime's from ``benchmarks/adaptive.py`` (learned, random
    and fixed), torch's and OpenVINO's random and fixed ones from ``own_rows``."""
    print("\nadaptive: policy against full compute on the same backend; target time ratio ≤ 1.0")
    print(adaptive.HEADER)
    rows = []
    for row in itertools.chain(
        adaptive.learned_rows(args.repository, adaptive.default_videos(), ["onnxruntime"], args.repeats, work),
        adaptive.preset_rows(args.adaptive, args.savings, args.policies, ["onnxruntime"], args.repeats, work),
        *(own_rows(preset, backend, args, work) for preset in args.adaptive for backend in ("torch", "openvino")),
    ):
        adaptive.print_row(row)
        rows.append(row)
    return rows


Static = dict[str, tuple[float, float, str]]  # spec: auto's speed-up over torch, the fastest GMAC/s and backend


def bench_statics(specs: list[str], work: Path, repeats: int) -> tuple[Static, float]:
    """Print the static rows between two sgemm peaks; returns them and the higher peak."""
    before = sgemm_gmacs()
    print(f"sgemm {SGEMM_SIZE}³: {before:.1f} GMAC/s\n")
    header = " ".join(f"{name[:9]:>9} {'GMAC/s':>6}" for name in BACKENDS)
    print(f"{'preset (ms, GMAC/s)':<22} {'GMACs':>7} {header} {'auto picks':>12} {'×torch':>6}")
    results = {spec: bench_static(spec, work, repeats) for spec in specs}
    after = sgemm_gmacs()
    print(f"sgemm {SGEMM_SIZE}³ before / after: {before:.1f} / {after:.1f} GMAC/s")
    for spec, (_, gmacs, fastest) in results.items():
        print(f"{spec}: fastest ({fastest}) at {gmacs / max(before, after):.2f} of sgemm")
    return results, max(before, after)


def static_missed(results: Static, sgemm: float) -> list[str]:
    """The static targets ``results`` miss, each with the figure, or NOT MEASURED (a static preset not run at
    its paper configuration)."""
    missed = [f"NOT MEASURED: {preset} (--static {preset})" for preset in STATIC if preset not in results]
    for spec, (speedup, gmacs, fastest) in results.items():
        target = PER_PRESET_TARGETS.get(spec.partition("@")[0], AUTO_TARGET)
        if speedup < target:
            missed.append(f"{spec}: auto {speedup:.2f}× torch (≥ {target})")
        if gmacs > sgemm:
            missed.append(f"{spec}: {fastest} at {gmacs:.1f} GMAC/s, above the sgemm peak {sgemm:.1f} GMAC/s")
        if spec == "tsn_r50" and gmacs / sgemm < SGEMM_TARGET:
            missed.append(f"{spec}: {fastest} at {gmacs / sgemm:.2f} of sgemm GMAC/s (≥ {SGEMM_TARGET})")
    return missed


def adaptive_missed(rows: list[adaptive.Row]) -> list[str]:
    """The adaptive targets ``rows`` miss, each with the figure, or NOT MEASURED (a random or fixed case of an
    ``ADAPTIVE`` preset on one of its backends)."""
    measured = {(row.model, row.backend, row.kind) for row in rows}
    missed = [
        f"NOT MEASURED: {preset} {kind} on {backend} (--adaptive {preset} --policies {kind})"
        for preset, backends in ADAPTIVE.items()
        for backend in backends
        for kind in ("random", "fixed")
        if (preset, backend, kind) not in measured
    ]
    missed += [
        f"{row.model} {row.backend} {row.kind} {row.case}: time ratio {row.time_ratio:.3f}"
        for row in rows
        if row.time_ratio > 1.0
    ]
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--static", nargs="*", default=STATIC, help="preset or preset@size (default: all static)")
    parser.add_argument("--adaptive", nargs="*", help=f"adaptive presets (flag alone: {' '.join(ADAPTIVE)})")
    parser.add_argument("--policies", nargs="+", choices=("random", "fixed"), default=["random", "fixed"])
    parser.add_argument("--savings", type=float, nargs="+", default=[0.4])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="learned policies' models")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds (default: 5)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.adaptive == []:
        args.adaptive = list(ADAPTIVE)

    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"{started}, torch {torch.__version__}, {args.threads} threads, one clip a call, {args.repeats} rounds")
    results: Static = {}
    sgemm, rows = math.nan, []
    with tempfile.TemporaryDirectory(prefix="clipwise-backends-") as directory:
        work = Path(directory)
        if args.static:
            results, sgemm = bench_statics(args.static, work, args.repeats)
        if args.adaptive:
            rows = bench_adaptive(args, work)
    return adaptive.finish(static_missed(results, sgemm) + adaptive_missed(rows))


if __name__ == "__main__":
    raise SystemExit(main())
