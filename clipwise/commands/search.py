"""``clipwise search e3d``: the training-free E3D search, written as an arch file the ``e3d`` preset builds."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="training-free architecture search")
    spaces = parser.add_subparsers(dest="space", required=True, metavar="SPACE")
    e3d = spaces.add_parser(
        "e3d",
        help="E3D: evolve a 3D inverted-bottleneck network for the highest entropy score under a FLOPs budget",
        description="Evolutionary search of E3D (ICLR 2023, Appendix E) from the paper's initial structure.",
    )
    e3d.add_argument("--budget-gflops", type=float, required=True, help="most GMACs per clip (E3D-S: 1.9)")
    e3d.add_argument("--frames", type=int, default=13, help="frames per clip (default: 13)")
    e3d.add_argument("--size", type=int, default=160, help="crop size in pixels (default: 160)")
    e3d.add_argument("--classes", type=int, default=400, help="number of classes (default: 400)")
    e3d.add_argument("--max-layers", type=int, default=83, help="most convs on the main path (paper: 83 S/M, 167 L)")
    e3d.add_argument("--iterations", type=int, default=10000, help="mutations to try (paper: 500000)")
    e3d.add_argument("--population", type=int, default=512, help="population size (paper: 512)")
    e3d.add_argument("--seed", type=int, default=0)
    e3d.add_argument("--score", choices=("stentr", "homoentr"), default="stentr", help="STEntr (default) or HomoEntr")
    e3d.add_argument("--out", required=True, help="arch file to write (JSON)")
    e3d.add_argument("--no-progress", action="store_true", help="no progress bar")
    e3d.set_defaults(run=run_e3d)


def run_e3d(args: argparse.Namespace) -> int:
    import torch

    from clipwise.models.e3d_search import SCORES, initial_structure, search, write_arch
    from clipwise.models.flops import count_params
    from clipwise.models.registry import get_preset

    initial = initial_structure(args.frames, args.size, args.classes)
    result = search(
        initial,
        budget_gflops=args.budget_gflops,
        max_layers=args.max_layers,
        iterations=args.iterations,
        population=args.population,
        seed=args.seed,
        score=SCORES[args.score],
        progress=not args.no_progress,
    )
    with torch.device("meta"):
        params_m = count_params(get_preset("e3d").model_cls(result.best.config)) / 1e6
    write_arch(
        args.out,
        result,
        budget_gflops=args.budget_gflops,
        max_layers=args.max_layers,
        iterations=args.iterations,
        population=args.population,
        seed=args.seed,
        scoring=args.score,
        params_m=params_m,
    )
    for label, candidate in (("initial", result.initial), ("best", result.best)):
        print(
            f"{label:>7}: {args.score} {candidate.score:.3f}, {candidate.gflops:.3f} GFLOPs, {candidate.depth} layers"
        )
    print(f"{result.evaluated} networks scored; best has {params_m:.2f} M parameters")
    print(
        f"wrote {args.out}: create_model('e3d', arch={args.out!r}, frames={args.frames}, size={args.size}, "
        f"num_classes={args.classes})"
    )
    return 0
