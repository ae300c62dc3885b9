"""Clipwise: inference serving for efficient, adaptive video action recognition."""

__version__ = "0.1.0"
