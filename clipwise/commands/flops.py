"""``clipwise flops``: full-compute GMACs and parameters of registered models."""

from __future__ import annotations

import argparse
import json

from clipwise.commands import json_object


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("flops", help="count the MACs and parameters of a model")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="registry preset name")
    target.add_argument("--all", action="store_true", help="every preset at its default input, as a table")
    parser.add_argument("--frames", type=int, help="frames per clip (default: the preset's)")
    parser.add_argument("--size", type=int, help="crop size in pixels (default: the preset's)")
    parser.add_argument("--classes", type=int, help="number of classes (default: the preset's)")
    parser.add_argument(
        "--model-args",
        type=json_object,
        default={},
        metavar="JSON",
        help="other config fields, as in a manifest's kwargs, e.g. '{\"res2_temporal_pool\": true}'",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clipwise.models import list_models

    overrides = {"num_classes": args.classes, "frames": args.frames, "size": args.size}
    overrides = {**args.model_args, **{k: v for k, v in overrides.items() if v is not None}}
    names = list_models(buildable=True) if args.all else [args.model]
    rows = [_measure(name, overrides) for name in names]
    if args.json:
        print(json.dumps(rows if args.all else {k: rows[0][k] for k in ("gflops", "params_m")}))
    elif args.all:
        print("| preset | family | input (T×S²) | classes | GFLOPs | params (M) |")
        print("| --- | --- | --- | --- | ---: | ---: |")
        for row in rows:
            print(
                f"| `{row['model']}` | {row['family']} | {row['frames']}×{row['size']}² | {row['classes']} "
                f"| {row['gflops']:.3f} | {row['params_m']:.2f} |"
            )
    else:
        row = rows[0]
        print(
            f"{row['model']}: {row['gflops']:.3f} GFLOPs (MACs) per clip of {row['frames']}x{row['size']}², "
            f"{row['params_m']:.3f} M parameters, {row['classes']} classes"
        )
    return 0


def _measure(name: str, overrides: dict[str, object]) -> dict[str, object]:
    import torch

    from clipwise.models import count_flops, create_model

    with torch.device("meta"):
        model = create_model(name, **overrides)
    cfg = model.config
    cost = count_flops(model, cfg.frames, cfg.size)
    return {
        "model": name,
        "family": model.family,
        "frames": cfg.frames,
        "size": cfg.size,
        "classes": cfg.num_classes,
        "gflops": round(cost.gflops, 4),
        "params_m": round(cost.params_m, 4),
    }
