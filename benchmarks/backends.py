"""ONNX Runtime against torch eager on the CPU, and whether ONNX Runtime keeps the adaptive savings (issue 6).

Static presets, at their tiny size and at a mid size: latency of one clip through each backend's runner
(``export.runtime``: what the service calls, execution record included), interleaved, medians; the target
is ONNX Runtime ≥ 1.2× faster.

Adaptive presets, under ONNX Runtime only, interleaved: the dense graph (AdaFuse exported inside
``full_compute``: plain convolutions; Ada3D with its full plan), the policy graph keeping everything (AdaFuse
following all-keep decisions through its gated operators; Ada3D: the same full-plan graph) and the graph
exported under a forced 40% saving (AdaFuse: ``force_saving(0.4)``, once skipping only and once mixing reuse
and skip; Ada3D: ``saving_plan(0.4)``). The FLOPs ratio is
executed / full from the runner's execution record; the target is (forced latency / dense latency) / (FLOPs
ratio) ≤ 1.25. The last column divides by the keep-everything latency instead: what the gating operators
save once their own overhead is paid.

Every model is saved to a temporary repository and exported as ``clipwise export onnx`` would; weights are
random (latency does not depend on them). Runs in one process, one clip a call.

    .venv/bin/python benchmarks/backends.py
    .venv/bin/python benchmarks/backends.py --repeats 20 --static tsn_r18_tiny --adaptive adafuse_tsn_r18_tiny
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from export.onnx import save_onnx, to_onnx
from export.runtime import OnnxRunner, Runner, TorchRunner
from models import VideoClassifier, create_model
from models.ada3d import Ada3D
from models.adafuse import KEEP
from models.checkpoint import LoadedVersion, load_version, save_version

STATIC_TARGET, ADAPTIVE_TARGET, SAVING = 1.2, 1.25, 0.4
STATIC_TINY = [
    "tsn_r18_tiny",
    "tsm_r50_tiny",
    "ctnet_r50_tiny",
    "i3d_r50_tiny",
    "x3d_s_tiny",
    "fusion_densenet121_tiny",
]
STATIC_MID = ["tsn_r50@112", "tsm_r50@112", "ctnet_r50@112", "i3d_r50@112", "x3d_s", "fusion_densenet121@112"]
ADAPTIVE = ["adafuse_tsn_r50@112", "ada3d_i3d_r50@112", "adafuse_tsn_r50_tiny", "ada3d_i3d_r50_tiny"]


@dataclass
class Contender:
    """One runner to time."""

    name: str
    runner: Runner
    latencies: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.latencies)


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleave(contenders: list[Contender], clip: torch.Tensor, repeats: int) -> None:
    """A warm-up call each, then ``repeats`` rounds of one call each, the order alternating between rounds."""
    for contender in contenders:
        contender.runner.execute(clip)
    for round_index in range(repeats):
        order = contenders if round_index % 2 == 0 else contenders[::-1]
        for contender in order:
            contender.latencies.append(timed(lambda runner=contender.runner: runner.execute(clip)))


def build(spec: str, repository: Path) -> LoadedVersion:
    """``preset`` or ``preset@size``, saved (random weights) and loaded back as the service would."""
    name, _, size = spec.partition("@")
    torch.manual_seed(0)
    model = create_model(name, **({"size": int(size)} if size else {}))
    labels = [str(index) for index in range(model.config.num_classes)]
    version_dir = save_version(model, labels, repository, name, trained=False)
    return load_version(repository, name, int(version_dir.name))


def exported(loaded: LoadedVersion, policy: contextlib.AbstractContextManager, path: Path, **options) -> OnnxRunner:
    with policy:
        proto = to_onnx(loaded.model, weights_sha256=loaded.manifest.weights_sha256, **options)
    return OnnxRunner(save_onnx(proto, path), loaded)


def a_clip(model: VideoClassifier) -> torch.Tensor:
    config = model.config
    return torch.randn(1, 3, config.frames, config.size, config.size, generator=torch.Generator().manual_seed(0))


def bench_static(spec: str, repository: Path, repeats: int) -> float:
    """Print the two backends' medians; returns the speed-up of ONNX Runtime."""
    loaded = build(spec, repository)
    path = repository / f"{spec}.onnx"
    contenders = [
        Contender("torch", TorchRunner(loaded.model)),
        Contender("onnxruntime", exported(loaded, contextlib.nullcontext(), path)),
    ]
    interleave(contenders, a_clip(loaded.model), repeats)
    torch_ms, onnx_ms = (contender.median() * 1e3 for contender in contenders)
    speedup = torch_ms / onnx_ms
    print(f"{spec:<28} {loaded.manifest.full_gflops:>8.3f} {torch_ms:>10.1f} {onnx_ms:>10.1f} {speedup:>8.2f}")
    return speedup


def keep_all(model: VideoClassifier) -> contextlib.AbstractContextManager:
    """AdaFuse following a policy that keeps every channel: the gating machinery with nothing skipped."""
    frames = model.config.frames
    decisions = [torch.full((frames, block.conv1.out_channels), KEEP) for block in model.gated_blocks()]
    return model.follow_policy(decisions)


def bench_adaptive(spec: str, repository: Path, repeats: int) -> list[float]:
    """Print the dense, keep-everything and forced-saving graphs' medians (AdaFuse: one forced graph skipping
    only, one mixing reuse and skip); returns (latency ratio) / (FLOPs ratio) of each forced graph against
    the dense one."""
    loaded = build(spec, repository)
    model = loaded.model
    clip = a_clip(model)

    def graph(name: str, policy: contextlib.AbstractContextManager, **options) -> Contender:
        return Contender(name, exported(loaded, policy, repository / f"{spec}-{name}.onnx", **options))

    if isinstance(model, Ada3D):  # its full plan is both the dense network and the policy keeping everything
        dense = keep = graph("dense", contextlib.nullcontext(), plan=model.full_plan())
        forced = [graph("forced", contextlib.nullcontext(), plan=model.saving_plan(SAVING).plan)]
    else:
        dense, keep = graph("dense", model.full_compute()), graph("keep-all", keep_all(model))
        forced = [
            graph(f"forced {pattern}", model.force_saving(SAVING, reuse=reuse))
            for pattern, reuse in (("skip", False), ("reuse+skip", True))
        ]
    interleave([dense, *([] if keep is dense else [keep]), *forced], clip, repeats)
    dense_ms, keep_ms = dense.median() * 1e3, keep.median() * 1e3
    quotients = []
    for contender in forced:
        execution = contender.runner.execute(clip)
        flops_ratio = execution.executed_gflops[0] / execution.full_gflops
        forced_ms = contender.median() * 1e3
        quotients.append(forced_ms / dense_ms / flops_ratio)
        print(
            f"{spec:<28} {contender.name:<18} {execution.full_gflops:>8.3f} {dense_ms:>9.1f} {keep_ms:>9.1f} "
            f"{forced_ms:>9.1f} {flops_ratio:>7.3f} {forced_ms / dense_ms:>8.3f} {quotients[-1]:>8.3f} "
            f"{forced_ms / keep_ms / flops_ratio:>10.3f}"
        )
    return quotients


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--static", nargs="*", default=STATIC_TINY + STATIC_MID, help="preset or preset@size")
    parser.add_argument("--adaptive", nargs="*", default=ADAPTIVE, help="preset or preset@size")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds after the warm-up (default: 10)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, one clip a call, {args.repeats} interleaved rounds")
    met = True
    with tempfile.TemporaryDirectory() as directory:
        repository = Path(directory)
        if args.static:
            print(f"\nstatic: target onnxruntime ≥ {STATIC_TARGET}× faster than torch eager")
            print(f"{'model':<28} {'GFLOPs':>8} {'torch ms':>10} {'ort ms':>10} {'speed-up':>8}")
            speedups = [bench_static(spec, repository, args.repeats) for spec in args.static]
            met &= min(speedups) >= STATIC_TARGET
            print(f"geometric mean {statistics.geometric_mean(speedups):.2f}×, lowest {min(speedups):.2f}×")
        if args.adaptive:
            print(f"\nadaptive under onnxruntime, forced {SAVING:.0%} saving: target latency/FLOPs ≤ {ADAPTIVE_TARGET}")
            print(
                f"{'model':<28} {'forced graph':<18} {'GFLOPs':>8} {'dense ms':>9} {'keep ms':>9} {'forced ms':>9} "
                f"{'FLOPs':>7} "
                f"{'latency':>8} {'lat/FL':>8} {'vs keep':>10}"
            )
            quotients = [q for spec in args.adaptive for q in bench_adaptive(spec, repository, args.repeats)]
            met &= max(quotients) <= ADAPTIVE_TARGET
    print(f"\ntargets {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
