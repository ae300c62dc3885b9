"""Frame folding (``clipwise.models.layers.FrameConv3d``) against PyTorch's plain conv3d, one clip at a time on CPU.

Every case runs with folding off (``frame_folding(False)``: each conv is ``F.conv3d``, as before the layer
existed) and on, interleaved in one process: a warm-up round, then rounds that alternate which goes first.

* I3D-R50 at 8×224² and at 4×224² (the frames Ada3D's 60% plan keeps);
* Ada3D-I3D-R50 at 8×224², full policy and the fixed plan saving 60% of the MACs (``saving_plan(0.6)``, built once:
  4 evenly spaced frames, one 3D stage), with the plan's latency ratio to the full policy against its FLOPs
  ratio (1.0: the time falls as far as the FLOPs);
* every tiny preset holding a ``FrameConv3d``, at 8×64².

Ratios are folded / conv3d: the median of the ratios of the runs made back to back in each round (a change in
the machine's load between rounds cancels), and the ratio of the fastest runs (the least disturbed).

    .venv/bin/python benchmarks/conv3d_fold.py
    .venv/bin/python benchmarks/conv3d_fold.py --tiny-only --repeats 20
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/conv3d_fold.py --clock cpu   # on a machine others share

On a shared machine the wall clock of a 2-thread run swings several-fold with the other processes' load.
Process CPU time with passive OpenMP waits (threads sleep instead of spinning at barriers) is steady; it
counts the work of both threads, not the latency: what a kernel gains by spreading over two threads does not
show in it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from clipwise.models import VideoClassifier, create_model, list_models
from clipwise.models.layers import FrameConv3d, frame_folding

PolicyFactory = Callable[[], contextlib.AbstractContextManager]
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class Case:
    """One model on one clip under one policy, timed with folding off (False) and on (True)."""

    name: str
    model: VideoClassifier
    clip: torch.Tensor
    policy: PolicyFactory = contextlib.nullcontext
    latencies: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})

    def run(self, fold: bool, clock: Callable[[], float]) -> float:
        with frame_folding(fold), self.policy():
            start = clock()
            self.model(self.clip)
            return clock() - start


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over rounds of the ratio of two latencies timed in the same round (load drifts cancel)."""
    return statistics.median(top / bottom for top, bottom in zip(numerators, denominators, strict=True))


def min_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Ratio of the fastest runs, the least disturbed ones."""
    return min(numerators) / min(denominators)


def random_clip(frames: int, size: int) -> torch.Tensor:
    return torch.randn(1, 3, frames, size, size)


def paper_cases() -> tuple[list[Case], Case, Case]:
    """I3D-R50 at 8 and 4 frames, and Ada3D's full policy and 60% plan (returned apart as well)."""
    i3d = create_model("i3d_r50", frames=8, size=224).eval()
    ada3d = create_model("ada3d_i3d_r50", frames=8, size=224).eval()
    full = Case("ada3d_i3d_r50 8×224² full", ada3d, random_clip(8, 224), ada3d.full_compute)
    plan = ada3d.saving_plan(0.6).plan  # built once, outside what is timed
    saving = Case("ada3d_i3d_r50 8×224² -60%", ada3d, full.clip, lambda: ada3d.follow_plan(plan))
    cases = [Case("i3d_r50 8×224²", i3d, random_clip(8, 224)), Case("i3d_r50 4×224²", i3d, random_clip(4, 224))]
    return [*cases, full, saving], full, saving


def tiny_cases(frames: int, size: int) -> list[Case]:
    """Every tiny preset with a ``FrameConv3d``, on one clip of ``frames`` × ``size``²."""
    cases = []
    for name in list_models():
        if not name.endswith("_tiny"):
            continue
        model = create_model(name, frames=frames, size=size).eval()
        if any(isinstance(module, FrameConv3d) for module in model.modules()):
            cases.append(Case(f"{name} {frames}×{size}²", model, random_clip(frames, size)))
    return cases


@torch.inference_mode()
def measure(cases: list[Case], repeats: int, clock: Callable[[], float]) -> None:
    """A warm-up round, then ``repeats`` rounds; each round runs every case folded and not, in turn."""
    for round_index in range(repeats + 1):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for case in cases:
            for fold in order:
                latency = case.run(fold, clock)
                if round_index > 0:
                    case.latencies[fold].append(latency)


def print_table(cases: list[Case]) -> None:
    print(f"\n{'case':<40} {'conv3d ms':>10} {'folded ms':>10} {'ratio (paired)':>15} {'ratio (min)':>12}")
    for case in cases:
        off, on = (statistics.median(case.latencies[fold]) * 1e3 for fold in (False, True))
        paired, fastest = (ratio(case.latencies[True], case.latencies[False]) for ratio in (paired_ratio, min_ratio))
        print(f"{case.name:<40} {off:>10.1f} {on:>10.1f} {paired:>15.2f} {fastest:>12.2f}")


@torch.inference_mode()
def print_adaptive_gain(full: Case, saving: Case) -> None:
    """The 60% plan's FLOPs ratio, and its latency ratio to the full policy with and without folding."""
    with saving.policy():
        execution = full.model.execute(saving.clip)
    flops_ratio = execution.executed_gflops[0] / execution.full_gflops
    print(f"\nAda3D 60% plan: FLOPs ratio {flops_ratio:.3f} (executed / full)")
    for fold, label in ((False, "conv3d"), (True, "folded")):
        for ratio, ratio_name in ((paired_ratio, "paired"), (min_ratio, "min")):
            latency_ratio = ratio(saving.latencies[fold], full.latencies[fold])
            print(
                f"  {label} ({ratio_name}): latency ratio {latency_ratio:.3f}, "
                f"latency/FLOPs {latency_ratio / flops_ratio:.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny-only", action="store_true", help="skip the paper-size cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="cpu: process CPU time, both threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch 1, {args.repeats} interleaved rounds, "
        f"{args.clock} clock"
    )
    clock = CLOCKS[args.clock]
    tiny = tiny_cases(frames=8, size=64)
    if args.tiny_only:
        measure(tiny, args.repeats, clock)
        print_table(tiny)
        return
    paper, full, saving = paper_cases()
    measure(paper + tiny, args.repeats, clock)
    print_table(paper + tiny)
    print_adaptive_gain(full, saving)


if __name__ == "__main__":
    main()
