"""``clipwise import``: a published checkpoint as the next version of a model, ready to serve.

``--source`` names the code base that wrote the file: ``pytorchvideo`` and ``pyslowfast`` (``.pyth``,
``model_state``), ``mmaction2`` (``.pth``, ``state_dict``), ``torchvision`` (an ImageNet ResNet state dict, served
as a TSN of the ImageNet classes), ``adafuse`` (the AdaFuse authors' ``.pth.tar``: ``--architecture adafuse_tsn_r50``,
``adafuse_tsm_r50`` or ``adafuse_tsm_last_r50`` with their Something-Something V1 labels, 174 classes,
served with the per-channel policy decided by argmax). ``--architecture`` is the registry preset of the same
network (``i3d_r50``, ``slowonly_r50``, ``x3d_s`` / ``x3d_m`` / ``x3d_l``, ``tsn_r50``, ``tsm_r50``, ...); the
config fields that build what the source trained (I3D's pool after res2, X3D's shortcut BN, the clip size, the
AdaFuse authors' shifted shortcut) come from the source's recipe (``clipwise.models.imports.sources``) and
``--model-args`` overrides them. Every tensor of the file must find its place and every tensor of the model its
source: anything missing, misshaped or left over is an error naming it.
The file is read with ``torch.load(weights_only=True)`` (or safetensors): nothing stored in it runs; Caffe2
``.pkl`` files are refused.

The version (weights, and a manifest with the preprocessing the source trained with, the source and the
sha256 of its file) is written through a staging directory and renamed into place, as training writes one;
``clipwise serve`` loads it as it is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clipwise.commands import json_object

KINETICS_400 = "kinetics400"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import a PyTorchVideo, PySlowFast, mmaction2, torchvision or AdaFuse checkpoint as a servable version",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        required=True,
        help="who wrote the file: pytorchvideo, pyslowfast, mmaction2, torchvision or adafuse",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="FILE", help="the checkpoint file")
    parser.add_argument("--architecture", required=True, metavar="PRESET", help="registry preset of the network")
    parser.add_argument(
        "--labels",
        required=True,
        metavar=f"FILE|{KINETICS_400}",
        help=f"class names, one a line in class-index order, or {KINETICS_400}: the list shipped with Clipwise",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="REPO/NAME", help="model directory to add to")
    parser.add_argument(
        "--model-args", type=json_object, default={}, metavar="JSON", help="config fields replacing the recipe's"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from clipwise.models.checkpoint import read_manifest
    from clipwise.models.imports import CheckpointImportError, import_version

    started = time.perf_counter()
    try:
        labels = _labels(args.labels)
        version = import_version(
            args.source, args.checkpoint, args.architecture, labels, args.out, overrides=args.model_args
        )
    except (CheckpointImportError, ValueError) as error:
        raise SystemExit(f"clipwise import: {error}") from None
    manifest = read_manifest(version)
    spec = manifest.preprocessing
    print(
        f"imported {args.checkpoint} ({args.source}, sha256 {manifest.source.sha256[:12]}…) as {manifest.architecture}"
        f" {manifest.kwargs}: {manifest.full_gflops:.3f} GFLOPs per {spec.frames}×{spec.crop_size}² clip, "
        f"{len(labels)} classes, in {time.perf_counter() - started:.1f} s"
    )
    print(f"wrote {version}")
    return 0


def _labels(value: str) -> list[str]:
    from clipwise.models.labels import bundled_labels
    from clipwise.training.data import read_labels

    return bundled_labels(value) if value == KINETICS_400 else read_labels(Path(value))
