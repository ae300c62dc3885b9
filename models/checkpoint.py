"""Checkpoints as a model repository laid out like Triton's.

    <repository>/<model name>/<version>/weights.safetensors
    <repository>/<model name>/<version>/manifest.json

Versions are positive integers; the newest is the largest. The manifest names the registry preset and
the config overrides that rebuild the architecture, the labels, the preprocessing the model was trained
with, its full-compute cost, its metrics and the sha256 of the weights file. Weights are only ever read
with safetensors: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from clipwise.models.base import Preprocessing, VideoClassifier
from clipwise.models.registry import create_model, get_preset

WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
AUTO_BACKEND = "auto"  # a manifest backend: the fastest of those available, timed when the version loads
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CheckpointError(Exception):
    """A version that cannot be served: missing, malformed, tampered with or not matching its manifest."""


class SourceCheckpoint(BaseModel):
    """The published checkpoint a version was imported from (``clipwise import``)."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(min_length=1, description="layout it was read as: pytorchvideo, pyslowfast, mmaction2, ...")
    file: str = Field(min_length=1, description="name of the imported file")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the imported file")


class Manifest(BaseModel):
    """manifest.json of one model version."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    architecture: str = Field(description="registry preset name")
    kwargs: dict[str, Any] = Field(description="config fields passed to create_model")
    labels: list[str] = Field(min_length=1)
    preprocessing: Preprocessing
    full_gflops: float = Field(ge=0, description="GMACs of one clip with nothing skipped")
    params_m: float = Field(ge=0)
    trained: bool = Field(description="false for randomly initialised placeholder weights")
    metrics: dict[str, float] = Field(default_factory=dict)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    data_fingerprint: str | None = None
    git_commit: str | None = None
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        AUTO_BACKEND, description="the backend serving by default; auto: the fastest measured when it loads"
    )
    source: SourceCheckpoint | None = Field(default=None, description="imported versions: the file they came from")
    counterpart: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="adaptive models: the dense model of the same size a user would deploy instead, a model name "
        "of the same repository; benchmarks time it beside this one",
    )

    @model_validator(mode="after")
    def _labels_match_classes(self) -> Manifest:
        classes = self.kwargs.get("num_classes")
        if classes is not None and classes != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for num_classes={classes}")
        return self


@dataclass
class LoadedVersion:
    """A model ready to serve, with where it came from."""

    name: str
    version: int
    path: Path
    manifest: Manifest
    model: VideoClassifier


def validate_name(name: str) -> str:
    """A model name safe to use as a directory name; raises ValueError otherwise."""
    if not NAME_PATTERN.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '-', '.' (max 64)")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_versions(model_dir: Path) -> list[int]:
    """Version numbers present under a model directory, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def list_model_names(repository: Path) -> list[str]:
    """Model directories of a repository that hold at least one version."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if NAME_PATTERN.fullmatch(p.name) and list_versions(p))


def check_inside(repository: Path, version_dir: Path) -> None:
    """Raise ``CheckpointError`` when the version directory or a file in it resolves outside ``repository`` (a
    symlink out of it): weights and graphs are read from the repository only. Symlinks within it, such as
    versions sharing a weights file, are followed."""
    root = repository.resolve()
    for path in (version_dir, *version_dir.iterdir()):
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise CheckpointError(f"{path} leads to {resolved}, outside the repository {root}")


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate a version's manifest."""
    path = version_dir / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{version_dir}: no {MANIFEST_FILE}") from None
    except ValidationError as error:
        raise CheckpointError(f"{path}: invalid manifest: {error.error_count()} error(s): {error}") from None


def load_version(repository: Path, name: str, version: int | None = None) -> LoadedVersion:
    """Load a version (default: the newest) after checking its manifest, architecture and weights hash."""
    model_dir = repository / validate_name(name)
    versions = list_versions(model_dir)
    if not versions:
        raise CheckpointError(f"model {name!r} has no versions in {repository}")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise CheckpointError(f"model {name!r} has no version {version}; versions: {versions}")
    version_dir = model_dir / str(version)
    check_inside(repository, version_dir)
    manifest = read_manifest(version_dir)
    weights = version_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{version_dir}: no {WEIGHTS_FILE}")
    if sha256_file(weights) != manifest.weights_sha256:
        raise CheckpointError(f"{weights}: sha256 does not match the manifest")
    try:
        get_preset(manifest.architecture)
        model = create_model(manifest.architecture, **manifest.kwargs)
        missing, unexpected = load_model(model, str(weights), strict=False)
    except SafetensorError as error:
        raise CheckpointError(f"{weights}: not a valid safetensors file: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{version_dir}: cannot build the model: {error}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match {manifest.architecture} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.eval()
    return LoadedVersion(name=name, version=version, path=version_dir, manifest=manifest, model=model)


def manifest_for(
    model: VideoClassifier,
    labels: list[str],
    weights_sha256: str,
    *,
    trained: bool,
    metrics: dict[str, float] | None = None,
    preprocessing: Preprocessing | None = None,
    **extra: Any,
) -> Manifest:
    """The manifest describing ``model`` (built by create_model) and its saved weights; ``preprocessing``
    (default: the model's own) is how clips are made for it."""
    kwargs = {k: v for k, v in vars(model.config).items() if v != getattr(get_preset(model.preset).config, k)}
    kwargs["num_classes"] = model.config.num_classes
    return Manifest(
        architecture=model.preset,
        kwargs=kwargs,
        labels=labels,
        preprocessing=preprocessing or model.preprocessing(),
        full_gflops=model.full_gflops(),
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        trained=trained,
        metrics=metrics or {},
        weights_sha256=weights_sha256,
        created_at=datetime.now(UTC),
        **extra,
    )


def save_version(
    model: VideoClassifier,
    labels: list[str],
    repository: Path,
    name: str,
    *,
    trained: bool,
    metrics: dict[str, float] | None = None,
    preprocessing: Preprocessing | None = None,
    **extra: Any,
) -> Path:
    """Write the model as the next version of ``repository/name``; the directory appears atomically.
    ``preprocessing`` (default: the model's own) and ``extra`` manifest fields go to ``manifest_for``."""
    model_dir = repository / validate_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        save_model(model, str(staging / WEIGHTS_FILE))
        weights_sha256 = sha256_file(staging / WEIGHTS_FILE)
        manifest = manifest_for(
            model, labels, weights_sha256, trained=trained, metrics=metrics, preprocessing=preprocessing, **extra
        )
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        versions = list_versions(model_dir)
        target = model_dir / str((versions[-1] if versions else 0) + 1)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def version_path(path: Path) -> Path:
    """The version directory ``path`` names: itself when it is ``REPO/NAME/VERSION``, else the newest of
    ``REPO/NAME``."""
    path = path.resolve()
    if path.name.isdigit() and path.is_dir():
        return path
    versions = list_versions(path)
    if not versions:
        raise CheckpointError(f"{path} is neither a version directory nor a model directory with versions")
    return path / str(versions[-1])


def load_version_dir(path: Path) -> LoadedVersion:
    """Load the version ``path`` names (see ``version_path``) with every check of a server load."""
    version_dir = version_path(path)
    return load_version(version_dir.parent.parent, version_dir.parent.name, int(version_dir.name))
