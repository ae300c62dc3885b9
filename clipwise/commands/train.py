"""``clipwise train``: train a registered model on a video dataset; the result is a new model version.

Options come, in rising precedence, from the defaults of ``clipwise.training.config.TrainConfig``, the run's saved
``config.json`` (with ``--resume``), a ``--config`` JSON file and the flags given. Under ``torchrun`` every
process runs this same command (``torchrun --nproc-per-node 2 -m clipwise.cli train ...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from clipwise.commands import json_object

# TrainConfig field -> (flag help, metavar or None for a switch)
OPTIONS: dict[str, tuple[str, str | None]] = {
    "model": ("registry preset to train (see `clipwise flops --help`)", "NAME"),
    "data": ("dataset directory: classes.txt and train / val lists (.txt or .csv)", "DIR"),
    "out": ("model directory REPO/NAME; the trained model becomes its next version", "REPO/NAME"),
    "run_dir": ("logs, metrics.csv, TensorBoard and resume state (default: runs/NAME)", "DIR"),
    "data_root": ("directory the video paths are relative to (default: each list's directory)", "DIR"),
    "init": ("start from these version directories and / or files (--init-source), matched by role", "PATH"),
    "init_source": ("layout of --init files: torchvision (ImageNet ResNet, MobileNetV2), pytorchvideo, ...", "SOURCE"),
    "epochs": ("epochs; Ada3D: of backbone pre-training (none with --init); fusion: with v-DropPath", "N"),
    "batch_size": ("clips per batch and process", "N"),
    "lr": ("peak learning rate", "LR"),
    "momentum": ("SGD momentum", "M"),
    "weight_decay": ("weight decay of conv and linear weights", "WD"),
    "schedule": ("learning-rate schedule: cosine or step", "{cosine,step}"),
    "milestones": ("step schedule: epochs of a phase where the rate drops x0.1 (default: 40%% and 80%%)", "E"),
    "lr_warmup_epochs": ("linear learning-rate warm-up, in epochs", "E"),
    "clip_grad_norm": ("clip the gradient norm to this (0: off)", "NORM"),
    "frames": ("frames per clip (default: the preset's)", "T"),
    "size": ("crop size in pixels (default: the preset's)", "S"),
    "model_args": ("other fields of the preset's config, as JSON, e.g. '{\"decision_group\": 8}'", "JSON"),
    "workers": ("DataLoader worker processes per training process", "N"),
    "device": ("cpu, cuda (under torchrun: each process its own GPU) or cuda:N (default: cuda where available)", "D"),
    "seed": ("random seed", "S"),
    "flip": ("random horizontal flips (refused for direction-sensitive labels)", None),
    "resume": ("continue the run in --run-dir from its last epoch", None),
    "flops_weight": ("AdaFuse: lambda of Eq. 6, per GFLOP", "LAMBDA"),
    "cost": ("AdaFuse: Eq. 6's cost term: flops, or latency (the executor's calibrated time)", "{flops,latency}"),
    "latency_weight": ("AdaFuse with --cost latency: lambda per unit of the gated pairs' time", "LAMBDA"),
    "gamma": ("Ada3D: reward of a wrong prediction is -gamma (Eq. 4)", "GAMMA"),
    "selection_epochs": ("Ada3D: epochs of the selection net trained as a classifier, before the policy", "N"),
    "policy_epochs": ("Ada3D: epochs of selection-net training, backbone frozen", "N"),
    "entropy_weight": ("Ada3D: weight of the policies' entropy bonus in the policy stages", "BETA"),
    "joint_epochs": ("Ada3D: epochs of joint fine-tuning", "N"),
    "policy_lr": ("Ada3D: learning rate of the policy and joint stages", "LR"),
    "fusion_warmup_epochs": ("fusion template: epochs without v-DropPath first", "N"),
    "length_scale": ("fusion template: prior length scale k of Eq. 5", "K"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from clipwise.training.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train a model on a video dataset and write it as a new version",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="JSON file with any of the options below")
    defaults = TrainConfig()
    for name, (help_text, metavar) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if metavar is None:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        kind = _value_type(name, default)
        shown = f" (default: {default})" if default not in (None, "", ()) else ""
        parser.add_argument(
            flag,
            type=kind,
            nargs="+" if isinstance(default, tuple) else None,
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=help_text + shown,
        )
    parser.set_defaults(run=run)


def _value_type(name: str, default: Any) -> type:
    from clipwise.training.config import PATH_FIELDS

    if name in PATH_FIELDS:
        return Path
    if name in ("frames", "size") or isinstance(default, tuple):
        return int
    if isinstance(default, dict):
        return json_object
    return type(default)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run: saved config (with --resume) < --config file < flags."""
    from clipwise.training.config import ConfigError, default_run_dir

    flags = {name: value for name, value in vars(args).items() if name in OPTIONS}
    from_file = json.loads(args.config.read_text()) if args.config else {}
    values = {**from_file, **flags}
    if values.get("resume"):
        run_dir = values.get("run_dir") or (default_run_dir(values["out"]) if values.get("out") else None)
        if run_dir is None:
            raise ConfigError("--resume needs --run-dir (or --out)")
        saved = Path(run_dir) / "config.json"
        if not saved.is_file():
            raise ConfigError(f"nothing to resume: no {saved}")
        values = {**json.loads(saved.read_text()), **values}
    return values


def run(args: argparse.Namespace) -> int:
    import logging

    from clipwise.models.device import DeviceUnavailable
    from clipwise.training.config import ConfigError, TrainConfig
    from clipwise.training.data import AnnotationError
    from clipwise.training.trainer import fit

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        version = fit(TrainConfig.from_dict(config_values(args)))
    except (ConfigError, AnnotationError, DeviceUnavailable) as error:
        raise SystemExit(f"clipwise train: {error}") from None
    if version is not None:
        print(f"wrote {version}")
    return 0
