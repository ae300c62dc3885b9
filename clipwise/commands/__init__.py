"""One module per ``clipwise`` subcommand; each exposes ``register(subparsers)``.

Command modules import their heavy dependencies inside the function that runs the command, so that
``clipwise --help`` and light commands start fast. Helpers shared by several commands' options live here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def json_object(text: str) -> dict[str, Any]:
    """An option's value parsed as a JSON object (argparse type)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value
