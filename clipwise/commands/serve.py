"""``clipwise serve``: run the HTTP service with uvicorn, or deploy it on Ray Serve (``--engine ray``).

Every field of ``clipwise.service.config.Settings`` is a flag here (``--model-repository``, ``--max-upload-mb``,
...), and every field of ``RayServeSettings`` a ``--ray-*`` flag; a flag given overrides its ``CLIPWISE_*``
environment variable, which overrides the default. ``clipwise.service.config`` is light (pydantic-settings only);
the app and its models load in ``run``, Ray only with ``--engine ray``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TypeVar

from pydantic_settings import BaseSettings

from clipwise.service.config import RAY_FIELD_PREFIX, RAY_LOCAL_ENVIRONMENT, RayServeSettings, Settings

SettingsT = TypeVar("SettingsT", bound=BaseSettings)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the models of a repository over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--engine",
        choices=("uvicorn", "ray"),
        default="uvicorn",
        help="uvicorn: one process on this machine; ray: replicas on Ray Serve (the ray extra) [uvicorn]",
    )
    add_settings_flags(parser, Settings)
    add_settings_flags(parser.add_argument_group("Ray Serve (--engine ray)"), RayServeSettings, RAY_FIELD_PREFIX)
    parser.set_defaults(run=run)


def add_settings_flags(parser: argparse._ActionsContainer, kind: type[BaseSettings], prefix: str = "") -> None:
    """One flag per field of ``kind``: ``--<prefix><field>`` with dashes, its description and variable as help."""
    env_prefix = kind.model_config["env_prefix"]
    for name, field in kind.model_fields.items():
        default = "" if field.default is None else f"; default: {field.default}"
        help_text = f"{field.description} [{env_prefix}{name.upper()}{default}]"
        dest = prefix + name
        flag = f"--{dest.replace('_', '-')}"
        if field.annotation is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=dest, metavar="VALUE", help=help_text)


def settings_from(args: argparse.Namespace, kind: type[SettingsT] = Settings, prefix: str = "") -> SettingsT:
    """The environment's settings of ``kind`` with the flags given on top."""
    flags = {name: getattr(args, prefix + name) for name in kind.model_fields}
    return kind(**{name: value for name, value in flags.items() if value is not None})


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from clipwise.service.log import configure_logging

    try:
        settings = settings_from(args)
        ray_settings = settings_from(args, RayServeSettings, RAY_FIELD_PREFIX)
    except ValidationError as error:
        print(f"clipwise serve: invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.engine == "ray":
        return serve_on_ray(settings, ray_settings)
    return serve_with_uvicorn(settings)


def serve_with_uvicorn(settings: Settings) -> int:
    import uvicorn

    from clipwise.service.app import ConfigurationError, create_app

    try:
        app = create_app(settings)
    except ConfigurationError as error:
        print(f"clipwise serve: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


def serve_on_ray(settings: Settings, ray_settings: RayServeSettings) -> int:
    if on_this_machine(ray_settings.address):  # Ray reads these when it is imported
        for name, value in RAY_LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    try:
        from clipwise.service import ray_serve
    except ImportError as error:
        print(f"clipwise serve --engine ray needs the ray extra (clipwise[ray]): {error}", file=sys.stderr)
        return 2
    return ray_serve.serve_on_ray(settings, ray_settings)


def on_this_machine(address: str | None) -> bool:
    """Whether Ray runs on this machine alone: a new instance (no address), or one on the loopback interface."""
    return address is None or address.rpartition(":")[0].strip("[]") in LOOPBACK_HOSTS
