"""``clipwise flops``: full-compute GMACs and parameters of a registered model."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("flops", help="count the MACs and parameters of a model")
    parser.add_argument("--model", required=True, help="registry preset name (see --list)")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the preset's)")
    parser.add_argument("--size", type=int, help="crop size in pixels (default: the preset's)")
    parser.add_argument("--classes", type=int, help="number of classes (default: the preset's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from models import count_flops, create_model

    overrides = {"num_classes": args.classes, "frames": args.frames, "size": args.size}
    with torch.device("meta"):
        model = create_model(args.model, **{k: v for k, v in overrides.items() if v is not None})
    result = count_flops(model, model.config.frames, model.config.size)
    if args.json:
        print(json.dumps({"gflops": round(result.gflops, 4), "params_m": round(result.params_m, 4)}))
    else:
        cfg = model.config
        print(
            f"{args.model}: {result.gflops:.3f} GFLOPs (MACs) per clip of {cfg.frames}x{cfg.size}x{cfg.size}, "
            f"{result.params_m:.3f} M parameters, {cfg.num_classes} classes"
        )
    return 0
