"""The ``clipwise`` command line: one entry point, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from clipwise import __version__

# Subcommand modules; ``import_`` registers ``clipwise import`` (``import`` is a keyword).
COMMANDS = ("serve", "flops", "search", "data", "train", "eval", "bench", "deploy", "export", "import_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipwise", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clipwise {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"clipwise.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
