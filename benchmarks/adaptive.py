"""Does the wall clock fall as far as the FLOPs? Adaptive models under forced savings (issue 4, "Measured").

For every model named: the full policy (``full_compute``) and fixed policies that remove about 20%, 40% and
60% of the full-compute MACs (``force_saving``, the same for every clip), on one random clip. AdaFuse runs two
patterns at each level: skipping only (``reuse=False``), and skipping mixed with reuse (a share of channels
kept at even frames and reused at odd ones, which saves conv1's MACs only). Repetitions
run interleaved (one of each level per round, after a warm-up round) in one process; times are medians.
Per level it prints the FLOPs ratio achieved (executed / full, from the model's own execution record), the
time ratio against the full policy, and their quotient: 1.0 means the time falls exactly as far as the
FLOPs; the target is ≤ 1.15 at 40%. The exit status is 1 when a model misses it.

    .venv/bin/python benchmarks/adaptive.py                       # AdaFuse-TSN-R50, Ada3D-I3D-R50, 8×224²
    .venv/bin/python benchmarks/adaptive.py --models adafuse_tsn_r50_tiny --size 64 --repeats 20
    .venv/bin/python benchmarks/adaptive.py --threads 1 --clock cpu   # on cores other processes share
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from models import VideoClassifier, create_model

TARGET_SAVING, TARGET_QUOTIENT = 0.4, 1.15
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass
class Level:
    """A policy to time: ``saving`` None is the full policy; ``options`` go to ``force_saving``."""

    saving: float | None
    options: dict[str, bool] = field(default_factory=dict)
    flops_ratio: float = 1.0
    times: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.saving is None:
            return "full"
        pattern = {None: "", True: " reuse+skip", False: " skip"}[self.options.get("reuse")]
        return f"-{self.saving:.0%}{pattern}"

    def policy(self, model: VideoClassifier) -> contextlib.AbstractContextManager:
        return model.full_compute() if self.saving is None else model.force_saving(self.saving, **self.options)


def levels_of(model: VideoClassifier, savings: list[float]) -> list[Level]:
    """The full policy, then each saving (for AdaFuse, once per pattern)."""
    patterns = [{"reuse": False}, {"reuse": True}] if model.family == "adafuse" else [{}]
    return [Level(None), *(Level(saving, options) for saving in savings for options in patterns)]


@torch.inference_mode()
def measure(
    model: VideoClassifier, clip: torch.Tensor, savings: list[float], repeats: int, clock: Callable[[], float]
) -> list[Level]:
    """FLOPs ratio and times of the full policy and of each forced saving, repetitions interleaved."""
    levels = levels_of(model, savings)
    for level in levels:  # warm-up round, which also reads each policy's executed FLOPs
        with level.policy(model):
            execution = model.execute(clip)
            model(clip)
        level.flops_ratio = execution.executed_gflops[0] / execution.full_gflops
    for _ in range(repeats):
        for level in levels:
            with level.policy(model):
                start = clock()
                model(clip)
                level.times.append(clock() - start)
    return levels


def report(name: str, levels: list[Level]) -> bool:
    """Print one model's table; True when every pattern meets the target."""
    full_time = statistics.median(levels[0].times)
    print(f"\n{name}: full policy {full_time * 1e3:.1f} ms (median of {len(levels[0].times)})")
    print(f"{'level':>16} {'FLOPs ratio':>12} {'time ms':>9} {'time ratio':>11} {'time/FLOPs':>11}")
    met = True
    for level in levels:
        time_ratio = statistics.median(level.times) / full_time
        quotient = time_ratio / level.flops_ratio
        verdict = ""
        if level.saving == TARGET_SAVING:
            verdict = "  target met" if quotient <= TARGET_QUOTIENT else "  target MISSED"
            met &= quotient <= TARGET_QUOTIENT
        print(
            f"{level.name:>16} {level.flops_ratio:>12.3f} {time_ratio * full_time * 1e3:>9.1f} "
            f"{time_ratio:>11.3f} {quotient:>11.3f}{verdict}"
        )
    print(f"target: time/FLOPs ≤ {TARGET_QUOTIENT} at -{TARGET_SAVING:.0%}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["adafuse_tsn_r50", "ada3d_i3d_r50"], help="presets with force_saving"
    )
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--savings", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: latency; cpu: the process's CPU time, which with --threads 1 stays steady where other "
        "processes share the cores (with more threads it also counts the threads' spin-waits)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {args.threads} threads, clip 1×3×{args.frames}×{args.size}², "
        f"{args.repeats} interleaved rounds, {args.clock} clock"
    )
    all_met = True
    for name in args.models:
        model = create_model(name, frames=args.frames, size=args.size).eval()
        clip = torch.randn(1, 3, args.frames, args.size, args.size)
        all_met &= report(name, measure(model, clip, args.savings, args.repeats, CLOCKS[args.clock]))
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
