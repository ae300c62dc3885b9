"""``clipwise data``: datasets for training. ``clipwise data synth`` writes the synthetic motion benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="make datasets for training", description=__doc__)
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = actions.add_parser(
        "synth",
        help="write the synthetic motion benchmark (mp4 files, classes.txt, train.txt, val.txt)",
        description="Temporal-order classes (moving, rotating, growing / shrinking) and static-shape classes on "
        "cluttered, noisy backgrounds; the same seed writes the same clips.",
    )
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset directory to write")
    synth.add_argument("--clips-per-class", type=int, required=True, metavar="N", help="training clips per class")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--val-fraction", type=float, default=0.25, help="val clips per train clip (default: 0.25)")
    synth.add_argument("--frames", type=int, help="frames per clip (default: 16)")
    synth.add_argument("--size", type=int, help="frame width and height in pixels (default: 112)")
    synth.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    import dataclasses

    from clipwise.training.synthetic import SynthConfig, generate

    if args.clips_per_class < 1:
        raise SystemExit("clipwise data synth: --clips-per-class must be at least 1")
    sizes = {key: value for key, value in (("frames", args.frames), ("size", args.size)) if value}
    config = dataclasses.replace(SynthConfig(), **sizes)
    counts = generate(args.out, args.clips_per_class, args.seed, val_fraction=args.val_fraction, cfg=config)
    print(f"wrote {counts['train']} train and {counts['val']} val clips to {args.out}")
    return 0
