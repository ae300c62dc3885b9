"""``clipwise eval``: accuracy, executed GFLOPs and policy statistics of a model version on a video list."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model version: top-1/top-5, executed GFLOPs, policy per class", description=__doc__
    )
    parser.add_argument(
        "--model-dir", type=Path, required=True, metavar="REPO/NAME[/VERSION]", help="version (default: newest)"
    )
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset directory")
    parser.add_argument("--split", choices=("val", "train"), default="val", help="list to evaluate (default: val)")
    parser.add_argument("--data-root", type=Path, metavar="DIR", help="video paths are relative to it")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch (default: 8)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    parser.add_argument(
        "--latency-clips",
        type=int,
        default=0,
        metavar="N",
        help="also time N clips one at a time under the model's own decisions against its full-compute path "
        "(default: 0, none)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N; on CUDA, AdaFuse's gated pairs run as the Triton kernels (default: cpu)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the full report here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from clipwise.export.gpu import gated_pairs_on
    from clipwise.models.checkpoint import CheckpointError
    from clipwise.models.device import resolve_device
    from clipwise.training.data import AnnotationError
    from clipwise.training.evaluate import evaluate_version

    try:
        device = resolve_device(args.device)
        with gated_pairs_on(device):  # the executor the service's torch backend runs there
            report = evaluate_version(
                args.model_dir,
                args.data,
                split=args.split,
                data_root=args.data_root,
                batch_size=args.batch_size,
                workers=args.workers,
                latency_clips=args.latency_clips,
                device=device,
            )
    except (CheckpointError, AnnotationError, ValueError) as error:
        raise SystemExit(f"clipwise eval: {error}") from None
    print(
        f"{report['model']['name']} v{report['model']['version']} on {report['data']['clips']} clips: "
        f"top-1 {report['top1']:.3f}, top-5 {report['top5']:.3f}, "
        f"{report['mean_executed_gflops']:.4f} GFLOPs executed, {report['mean_policy_gflops']:.4f} by the policy's "
        f"count, of {report['full_gflops']:.4f} per clip, {report['skipped']} unreadable"
    )
    if "latency" in report:
        latency = report["latency"]
        print(
            f"latency over {latency['clips']} clips: {latency['policy_ms']:.1f} ms against "
            f"{latency['full_compute_ms']:.1f} ms full compute (median time ratio {latency['time_ratio']:.3f}, "
            f"max {latency['max_time_ratio']:.3f})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
