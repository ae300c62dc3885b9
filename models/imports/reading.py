"""Reading a published checkpoint file as a flat state dict, without running anything stored in it.

``.safetensors`` files are read with safetensors, every other file with ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers only and refuses any other object the pickle names. Caffe2 ``.pkl`` files
(PySlowFast's Caffe2 model zoo) are plain pickles of numpy arrays: they are refused before anything is read.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class CheckpointImportError(Exception):
    """A checkpoint that cannot be imported: unreadable, refused, or not matching the architecture."""


def read_state_dict(path: Path, container: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: the state dict under ``container`` (``model_state``, ``state_dict``), or the
    file's top level when it has no such entry and holds tensors only."""
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such file")
    if path.suffix == ".pkl":
        raise CheckpointImportError(
            f"{path}: a Caffe2 pickle (.pkl). Clipwise unpickles nothing: take the PyTorch checkpoint (.pyth) of "
            "the same model, or load this file in PySlowFast (TRAIN.CHECKPOINT_TYPE caffe2) and save it as .pyth"
        )
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as error:
            raise CheckpointImportError(f"{path}: not a valid safetensors file: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1]
        raise CheckpointImportError(
            f"{path}: refused by torch.load(weights_only=True), which rebuilds tensors and plain containers only: "
            f"{reason}"
        ) from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise CheckpointImportError(f"{path}: not a PyTorch checkpoint: {error}") from None
    return _state_dict(path, loaded, container)


def _state_dict(path: Path, loaded: object, container: str | None) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise CheckpointImportError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors")
    state = loaded.get(container, loaded) if container else loaded
    if not isinstance(state, Mapping):
        raise CheckpointImportError(f"{path}: {container!r} holds a {type(state).__name__}, not a dict of tensors")
    others = sorted(str(key) for key, value in state.items() if not isinstance(value, torch.Tensor))
    if others:
        expected = f"a {container!r} entry or " if container else ""
        raise CheckpointImportError(
            f"{path}: expected {expected}a dict of tensors; entries that are not tensors: {listed(others)}"
        )
    return dict(state)


def listed(names: list[str], limit: int = 8) -> str:
    """Up to ``limit`` names and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" … ({len(names) - limit} more)" if len(names) > limit else "")
