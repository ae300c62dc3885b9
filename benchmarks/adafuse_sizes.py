"""At which size does an AdaFuse-TSN-R18 stop being bound by per-call overhead? (issue 12, item 4)

The bundled AdaFuse should save wall time, not only FLOPs; a model so small that its time is per-call overhead
cannot. For each (width, crop size) of the tiny layout (ResNet-18, two blocks a stage, 8 frames, 11 classes,
random weights), one clip at a time on ``--threads`` threads, interleaved medians (``benchmarks/adaptive.py``'s
timing, same clock options):

* the dense TSN of that size: ms and GMAC/s — a compute-bound size runs at a rate near the plateau, an
  overhead-bound one far below it;
* the AdaFuse of that size under two policies at ``--saving`` (default 40 %) of the full-compute MACs, each
  against the same model's full-compute path: ``fixed`` (``fixed_decisions``: one channel set of whole 16-channel
  blocks at every frame, the best case) and ``random`` (``random_decisions``: decisions drawn per frame and
  channel, the worst case); for each the executed-FLOPs ratio, the time ratio and their quotient
  (time / executed: 1.0 when time falls exactly with the FLOPs that ran).

    .venv/bin/python benchmarks/adafuse_sizes.py --threads 1 --clock cpu
    .venv/bin/python benchmarks/adafuse_sizes.py --sizes 16x64 32x64 32x96 --repeats 9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import adaptive  # noqa: E402

from clipwise.models import create_model  # noqa: E402

DEFAULT_SIZES = ("16x64", "16x96", "32x64", "32x96", "32x112", "64x96")


def parse_size(text: str) -> tuple[int, int]:
    width, size = text.lower().split("x")
    return int(width), int(size)


def measure(width: int, size: int, saving: float, repeats: int) -> dict[str, float]:
    """Dense TSN time and rate, and AdaFuse's fixed and random policies against its full compute, at one size."""
    shape = {"num_classes": 11, "width": width, "size": size}
    torch.manual_seed(0)
    dense = create_model("tsn_r18_tiny", **shape).eval()
    adafuse = create_model("adafuse_tsn_r18_tiny", **shape).eval()
    clip = torch.randn(1, 3, dense.config.frames, size, size, generator=torch.Generator().manual_seed(0))
    adafuse.calibrate()
    with torch.inference_mode():
        dense_seconds = adaptive.interleaved({"dense": lambda: dense(clip)}, repeats)["dense"]
    figures = {
        "gflops": dense.full_gflops(),
        "dense_ms": dense_seconds * 1e3,
        "dense_gmacs_per_s": dense.full_gflops() / dense_seconds,
    }
    decisions, fixed = adafuse.random_decisions(saving), adafuse.fixed_decisions(saving, reuse=False)
    policies = {  # decisions built once, outside what is timed
        "fixed": lambda: adafuse.follow_policy(fixed),
        "random": lambda: adafuse.follow_policy(decisions),
    }
    for name, policy in policies.items():
        row = adaptive.torch_row(adafuse, clip, policy, repeats, model="", kind=name, case="")
        figures[f"{name}_executed"] = row.executed_ratio
        figures[f"{name}_time"] = row.time_ratio
        figures[f"{name}_quotient"] = row.per_executed
        figures["adafuse_full_ms"] = row.full_ms
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="WIDTHxSIZE")
    parser.add_argument("--saving", type=float, default=0.4, help="policy saving of the AdaFuse rows")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(adaptive.CLOCKS), default="wall")
    args = parser.parse_args()
    adaptive.clock = adaptive.CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} rounds, medians, {args.clock} clock")
    print(
        "| width × crop | GFLOPs | TSN ms | TSN GMAC/s | AdaFuse full ms | fixed: executed / time / quotient "
        "| random: executed / time / quotient |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for text in args.sizes:
        width, size = parse_size(text)
        f = measure(width, size, args.saving, args.repeats)
        print(
            f"| {width} × {size}² | {f['gflops']:.3f} | {f['dense_ms']:.1f} | {f['dense_gmacs_per_s']:.1f} "
            f"| {f['adafuse_full_ms']:.1f} "
            f"| {f['fixed_executed']:.2f} / {f['fixed_time']:.2f} / {f['fixed_quotient']:.2f} "
            f"| {f['random_executed']:.2f} / {f['random_time']:.2f} / {f['random_quotient']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
