"""Clipwise: inference serving for efficient, adaptive video action recognition."""

from importlib.metadata import version

__version__ = version("clipwise")  # the one source is pyproject.toml
