"""Model registry in the manner of timm: presets by name, configs as dataclasses.

A preset is a family class plus a config instance. ``create_model(name, **overrides)`` replaces fields
of the preset's config and builds the family; the name and the overrides are all a checkpoint manifest
needs to rebuild the same architecture.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from clipwise.models.base import ClipModelConfig, VideoClassifier

# One module per family; each registers its presets when imported.
FAMILY_MODULES = (
    "clipwise.models.tsn",
    "clipwise.models.resnet3d",
    "clipwise.models.x3d",
    "clipwise.models.ctnet",
    "clipwise.models.fusion",
    "clipwise.models.adafuse",
    "clipwise.models.ada3d",
)


@dataclass(frozen=True)
class Preset:
    name: str
    model_cls: type[VideoClassifier]
    config: ClipModelConfig
    requires: tuple[str, ...] = ()  # config fields create_model must be given (e.g. a searched architecture)


_PRESETS: dict[str, Preset] = {}
_loaded = False


def register_preset(
    name: str, model_cls: type[VideoClassifier], config: ClipModelConfig, requires: tuple[str, ...] = ()
) -> None:
    """Register a named architecture; names are unique. ``requires`` names config fields without which
    the preset cannot be built."""
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = Preset(name, model_cls, config, requires)


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        _loaded = True


def list_models(buildable: bool = False) -> list[str]:
    """Names of the registered presets, sorted; ``buildable``: only those that need no config field."""
    _load_families()
    return sorted(name for name, preset in _PRESETS.items() if not (buildable and preset.requires))


def get_preset(name: str) -> Preset:
    _load_families()
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_PRESETS))}") from None


def create_model(name: str, **overrides: Any) -> VideoClassifier:
    """Build preset ``name`` with config fields replaced by ``overrides`` (num_classes, frames, size, ...)."""
    preset = get_preset(name)
    known = {f.name for f in dataclasses.fields(preset.config)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"{name}: unknown config fields {sorted(unknown)}; known: {sorted(known)}")
    missing = [field for field in preset.requires if overrides.get(field) is None]
    if missing:
        raise TypeError(f"{name}: give {', '.join(f'{field}=...' for field in missing)}")
    return preset.model_cls(dataclasses.replace(preset.config, **overrides), preset=name)
