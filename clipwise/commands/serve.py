"""``clipwise serve``: run the HTTP service with uvicorn.

Every field of ``service.config.Settings`` is a flag here (``--model-repository``, ``--max-upload-mb``,
...); a flag given overrides its ``CLIPWISE_*`` environment variable, which overrides the default.
``service.config`` is light (pydantic-settings only); the app and its models load in ``run``.
"""

from __future__ import annotations

import argparse
import sys

from service.config import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the models of a repository over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f"; default: {field.default}"
        help_text = f"{field.description} [CLIPWISE_{name.upper()}{default}]"
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, metavar="VALUE", help=help_text)
    parser.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment's settings with the flags given on top."""
    flags = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name) is not None}
    return Settings(**flags)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from service.app import ConfigurationError, create_app
    from service.log import configure_logging

    try:
        settings = settings_from(args)
    except ValidationError as error:
        print(f"clipwise serve: invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        app = create_app(settings)
    except ConfigurationError as error:
        print(f"clipwise serve: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0
