"""``clipwise export``: ONNX graphs, frozen fusion strategies and TensorRT engines of model versions."""

from __future__ import annotations

import argparse
from pathlib import Path

VERSION_HELP = "version directory REPO/NAME/VERSION (or REPO/NAME: the newest)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export model versions: ONNX, frozen fusion, TensorRT")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")

    onnx = targets.add_parser(
        "onnx",
        help="write model.onnx into the version directory (opset 18, dynamic batch, gating kept in the graph)",
        description="Export a version to ONNX and check it against PyTorch on a random clip.",
    )
    onnx.add_argument("--model-dir", type=Path, required=True, metavar="REPO/NAME/VERSION", help=VERSION_HELP)
    onnx.set_defaults(run=run_onnx)

    fusion = targets.add_parser(
        "fusion",
        help="rank fusion strategies of a v-DropPath template on validation data and freeze the best",
        description="Sample strategies from the learned drop rates, add S, ST and S+ST, evaluate each, write the "
        "ranking and the per-layer marginals, and save the best (or --strategy) as a static model version.",
    )
    fusion.add_argument("--model-dir", type=Path, required=True, metavar="REPO/NAME/VERSION", help=VERSION_HELP)
    fusion.add_argument("--data", type=Path, required=True, metavar="VAL", help="val list (beside classes.txt) or dir")
    fusion.add_argument("--samples", type=int, required=True, metavar="N", help="strategies sampled from the rates")
    fusion.add_argument("--out", type=Path, required=True, metavar="REPO/NAME", help="model to save the frozen one as")
    fusion.add_argument("--strategy", help='freeze this strategy instead of the best ("S+ST*29,ST*26,S+ST*3")')
    fusion.add_argument("--seed", type=int, default=0, help="seed of the strategy sampling (default: 0)")
    fusion.add_argument("--batch-size", type=int, default=8, help="clips per batch (default: 8)")
    fusion.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    fusion.set_defaults(run=run_fusion)

    tensorrt = targets.add_parser(
        "tensorrt",
        help="build a TensorRT engine (model.plan) from the version's model.onnx (needs tensorrt)",
        description="Build a TensorRT engine from model.onnx; the gating ops are expanded or bound to plugins.",
    )
    tensorrt.add_argument("--model-dir", type=Path, required=True, metavar="REPO/NAME/VERSION", help=VERSION_HELP)
    tensorrt.add_argument("--gating", choices=("expand", "plugin"), default="expand", help="default: expand")
    tensorrt.add_argument("--plugin-library", type=Path, action="append", default=[], help="plugin .so to load")
    tensorrt.add_argument("--max-batch", type=int, default=8, help="largest batch of the profile (default: 8)")
    tensorrt.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    tensorrt.set_defaults(run=run_tensorrt)


def run_onnx(args: argparse.Namespace) -> int:
    from clipwise.export.onnx import ExportError, export_version
    from clipwise.models.checkpoint import CheckpointError

    try:
        path = export_version(args.model_dir)
    except (CheckpointError, ExportError) as error:
        raise SystemExit(f"clipwise export onnx: {error}") from None
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB), checked against PyTorch")
    return 0


def run_fusion(args: argparse.Namespace) -> int:
    from clipwise.models.checkpoint import CheckpointError
    from clipwise.training.data import AnnotationError
    from clipwise.training.fusion_ranking import CHART_FILE, RANKING_FILE, export_fusion

    try:
        frozen = export_fusion(
            args.model_dir,
            args.data,
            args.out,
            samples=args.samples,
            strategy=args.strategy,
            seed=args.seed,
            batch_size=args.batch_size,
            workers=args.workers,
        )
    except (CheckpointError, AnnotationError, TypeError, ValueError) as error:
        raise SystemExit(f"clipwise export fusion: {error}") from None
    print(f"{'rank':>4} {'top-1':>6} {'top-5':>6} {'GFLOPs':>9}  strategy")
    for rank, result in enumerate(frozen.ranking, 1):
        metrics = result.metrics
        print(
            f"{rank:>4} {metrics['top1']:>6.3f} {metrics['top5']:>6.3f} {metrics['mean_executed_gflops']:>9.4f}  "
            f"{result.strategy} ({result.origin})"
        )
    print(f"froze {frozen.strategy} as {frozen.version_dir}; report: {RANKING_FILE}, {CHART_FILE}")
    return 0


def run_tensorrt(args: argparse.Namespace) -> int:
    from clipwise.export.runtime import MODEL_FILE
    from clipwise.export.tensorrt import ENGINE_FILE, TensorRTUnavailable, build_engine
    from clipwise.models.checkpoint import CheckpointError, version_path

    try:
        version_dir = version_path(args.model_dir)
        engine = build_engine(
            version_dir / MODEL_FILE,
            version_dir / ENGINE_FILE,
            gating=args.gating,
            plugin_libraries=args.plugin_library,
            max_batch=args.max_batch,
            fp16=args.fp16,
        )
    except (CheckpointError, TensorRTUnavailable, RuntimeError) as error:
        raise SystemExit(f"clipwise export tensorrt: {error}") from None
    print(f"wrote {engine}")
    return 0
