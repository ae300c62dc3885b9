"""``clipwise train``: train a registered model on a video dataset; the result is a new model version.

Options come, in rising precedence, from the defaults of ``clipwise.training.config.TrainConfig``, the run's saved
``config.json`` (with ``--resume``), a ``--config`` JSON file and the flags given. Every flag, its type, help
and group are made from ``TrainConfig``'s fields. Under ``torchrun`` every process runs this same command
(``torchrun --nproc-per-node 2 -m clipwise.cli train ...``).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from clipwise.commands import json_object


def register(subparsers: argparse._SubParsersAction) -> None:
    from clipwise.training.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train a model on a video dataset and write it as a new version",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="JSON file with any of the options below")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, field in TrainConfig.model_fields.items():
        group = field.json_schema_extra["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(f"{group} options")
        groups[group].add_argument("--" + name.replace("_", "-"), **flag_options(field))
    parser.set_defaults(run=run)


def flag_options(field: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keywords for a field: a switch, a value of its type, several, or one of its choices."""
    annotation, metavar = field.annotation, field.json_schema_extra["metavar"]
    help_text = field.description.replace("%", "%%")
    if annotation is bool:
        return {"action": "store_true", "default": argparse.SUPPRESS, "help": help_text}
    default = field.get_default(call_default_factory=True)
    shown = f" (default: {default})" if default not in (None, "", (), {}) else ""
    options: dict[str, Any] = {"default": argparse.SUPPRESS, "metavar": metavar, "help": help_text + shown}
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):  # X | None
        (annotation,) = (arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is tuple:
        options["nargs"] = "+"
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return {**options, "choices": typing.get_args(annotation)}
    return {**options, "type": json_object if typing.get_origin(annotation) is dict else annotation}


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run: saved config (with --resume) < --config file < flags."""
    from clipwise.training.config import ConfigError, TrainConfig, default_run_dir

    flags = {name: value for name, value in vars(args).items() if name in TrainConfig.model_fields}
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
