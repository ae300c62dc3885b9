"""Clipwise model zoo: every family behind one registry, each with its own FLOP count."""

from clipwise.models.base import ClipModelConfig, Execution, Preprocessing, VideoClassifier
from clipwise.models.flops import FlopCount, count_flops, track_macs
from clipwise.models.registry import create_model, get_preset, list_models, register_preset

__all__ = [
    "ClipModelConfig",
    "Execution",
    "FlopCount",
    "Preprocessing",
    "VideoClassifier",
    "count_flops",
    "create_model",
    "get_preset",
    "list_models",
    "register_preset",
    "track_macs",
]
