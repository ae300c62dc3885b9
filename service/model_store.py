"""The model versions being served, one per model name, and how they are swapped.

A request takes its ``ServedModel`` from the store once, at its start, and finishes on it: replacing the
version of a name swaps one dictionary entry under a lock, and requests in flight keep a reference to the
version they started on, which stays alive until they finish. A version is read from the repository and
checked before the swap — every file inside the repository (no symlink out of it), manifest schema, sha256 of
the weights, weights parsed by safetensors only, the architecture rebuilt with every weight matched, every
backend opened and one warm-up inference on each giving logits of the manifest's shape — so a version that
fails any check never replaces the one serving; then its default backend is chosen (``auto``: timed). Loads
of one name are serialised; ``load`` takes seconds and belongs in a worker thread (``clipwise.service.lifecycle``), the
other methods only take the dictionary lock for a moment.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from clipwise.export.runtime import MODEL_FILE, Backend
from clipwise.models.checkpoint import (
    CheckpointError,
    LoadedVersion,
    Manifest,
    list_model_names,
    list_versions,
    load_version,
    read_manifest,
    validate_name,
)
from clipwise.service.backends import (
    BackendChoice,
    BackendName,
    BackendRequest,
    Backends,
    choose_backend,
    open_backends,
)
from clipwise.video import ClipSpec


class ModelNotFound(LookupError):
    """No such model is being served (or, for management, none is in the repository)."""

    code = "model_not_found"


class VersionNotFound(ModelNotFound):
    """The model exists, but not at the requested version."""

    code = "version_not_found"


class BackendNotAvailable(LookupError):
    """The served version cannot run on the requested backend."""


class InvalidVersion(Exception):
    """A version in the repository that cannot be served: the repository's fault, not the request's."""


def clip_spec(manifest: Manifest) -> ClipSpec:
    """How the input clips of a version are sampled and transformed, as its manifest says."""
    return ClipSpec(**manifest.preprocessing.to_dict())


def clip_shape(spec: ClipSpec) -> tuple[int, int, int, int]:
    """Shape of one input clip: (channels, frames, height, width)."""
    return (3, spec.frames, spec.crop_size, spec.crop_size)


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A loaded version, the backends that can run it and the one chosen to serve it by default."""

    loaded: LoadedVersion
    backends: Backends
    choice: BackendChoice
    full_compute_ms: dict[str, float] = field(default_factory=dict)  # per backend, one view, timed at load

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def version(self) -> int:
        return self.loaded.version

    @property
    def manifest(self) -> Manifest:
        return self.loaded.manifest

    @property
    def family(self) -> str:
        return type(self.loaded.model).family

    @cached_property
    def spec(self) -> ClipSpec:
        """How the model's input clips are sampled and transformed."""
        return clip_spec(self.manifest)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return clip_shape(self.spec)

    @property
    def batchable(self) -> bool:
        """Whether requests may share a forward pass, as the model's class declares."""
        return type(self.loaded.model).capabilities.batchable

    def backend_name(self, name: BackendRequest | None = None) -> BackendName:
        """``name``, or for None and ``auto`` the backend chosen when the version loaded."""
        return self.choice.chosen if name in (None, "auto") else name

    def backend(self, name: BackendRequest | None = None) -> Backend:
        """The backend called ``name`` (default, or ``auto``: the one chosen when the version loaded)."""
        chosen = self.backend_name(name)
        if chosen not in self.backends.available:
            raise BackendNotAvailable(
                f"{self.name} version {self.version} cannot run on {chosen}: {self.backends.unavailable[chosen]}"
            )
        return self.backends.available[chosen]


@dataclass(frozen=True)
class VersionEntry:
    """One version directory of the repository, as its manifest describes it."""

    version: int
    manifest: Manifest | None  # None when the manifest is missing or invalid
    problem: str | None
    has_onnx: bool


class ModelStore:
    """Thread-safe map from model name to the version serving it; versions run on ``device``."""

    def __init__(self, repository: Path, concurrency: int = 1, device: torch.device | None = None) -> None:
        self.repository = repository
        self.concurrency = concurrency  # jobs at once on a backend (the service's worker slots)
        self.device = device or torch.device("cpu")
        self._served: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

    def load(self, name: str, version: int | None = None) -> tuple[ServedModel, ServedModel | None]:
        """Read a version (default: the newest) from the repository, check and warm it up, then serve it in
        place of the current one. Returns the new and the replaced version. Raises ``ModelNotFound`` /
        ``VersionNotFound`` if the repository has no such version and ``InvalidVersion`` if it cannot be
        served; the store is then as it was."""
        version = self._resolve(name, version)
        with self._load_lock(name):
            served = open_version(self.repository, name, version, self.concurrency, self.device)
            with self._lock:
                previous = self._served.get(name)
                self._served[name] = served
        return served, previous

    def unload(self, name: str) -> ServedModel:
        """Stop serving ``name``; requests in flight finish on it. Returns the version unloaded. (A load of the
        name still running completes afterwards: the last to finish wins.)"""
        with self._lock:
            served = self._served.pop(name, None)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not served; served models: {self.names()}")
        return served

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The version serving ``name``; ``version``, if given, must be that one."""
        served = self.find(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not served; served models: {self.names()}")
        if version is not None and version != served.version:
            raise VersionNotFound(
                f"model {name!r} is served at version {served.version}, not {version}; "
                f"versions in the repository: {self.versions_on_disk(name)}"
            )
        return served

    def find(self, name: str) -> ServedModel | None:
        """The version serving ``name``, or None when it is not served."""
        with self._lock:
            return self._served.get(name)

    def served(self) -> list[ServedModel]:
        """Every served version, by model name."""
        with self._lock:
            return [self._served[name] for name in sorted(self._served)]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._served)

    def names_on_disk(self) -> list[str]:
        """Models of the repository that have at least one version."""
        return list_model_names(self.repository)

    def versions_on_disk(self, name: str) -> list[int]:
        """Versions of ``name`` in the repository, ascending (none for an invalid name)."""
        try:
            return list_versions(self.repository / validate_name(name))
        except ValueError:
            return []

    def describe_versions(self, name: str) -> list[VersionEntry]:
        """Every version of ``name`` in the repository with its manifest (weights are not read)."""
        versions = self.versions_on_disk(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no version in the repository")
        return [self._describe(self.repository / name / str(version), version) for version in versions]

    @staticmethod
    def _describe(version_dir: Path, version: int) -> VersionEntry:
        has_onnx = (version_dir / MODEL_FILE).is_file()
        try:
            return VersionEntry(version, read_manifest(version_dir), None, has_onnx)
        except CheckpointError as error:
            return VersionEntry(version, None, str(error), has_onnx)

    def _resolve(self, name: str, version: int | None) -> int:
        versions = self.versions_on_disk(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} has no version in the repository; present: {self.names_on_disk()}")
        if version is None:
            return versions[-1]
        if version not in versions:
            raise VersionNotFound(f"model {name!r} has no version {version} in the repository; versions: {versions}")
        return version

    def _load_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._load_locks.setdefault(name, threading.Lock())


def open_version(
    repository: Path, name: str, version: int, concurrency: int = 1, device: torch.device | None = None
) -> ServedModel:
    """A version read from ``repository``, checked, its backends opened on ``device`` (default: the CPU) for
    ``concurrency`` jobs at once and warmed up, its default backend chosen
    (``clipwise.service.backends.choose_backend``):
    ready to serve. Raises ``InvalidVersion`` if any check fails: ``load_version``'s (manifest, files inside the
    repository, weights hash and format), the backends' and the warm-up's."""
    where = f"{name} version {version} cannot be served"
    try:
        loaded = load_version(repository, name, version)
        backends = open_backends(loaded, concurrency, device)
    except CheckpointError as error:
        raise InvalidVersion(f"{where}: {error}") from None
    shape = clip_shape(clip_spec(loaded.manifest))
    timed = {name: warm_up(loaded, backend, shape) for name, backend in backends.available.items()}
    choice = choose_backend(backends, loaded.manifest.backend, shape)
    full_compute_ms = {name: ms for name, ms in timed.items() if ms is not None}
    return ServedModel(loaded, backends, choice, full_compute_ms)


def warm_up(loaded: LoadedVersion, backend: Backend, shape: Sequence[int]) -> float | None:
    """The backend calibrates at clips of ``shape`` (an adaptive model's executor times its candidate
    computations on this machine; an ONNX Runtime session may be opened again on its calibrated graph) and
    times the full-compute path of one view (the milliseconds returned, None where it has none); then one
    inference on a blank clip, on what will serve, so the first request does not pay for lazy initialisation;
    it checks the logits have one entry per label. Raises ``InvalidVersion`` if the backend fails.

    On torch it also caches the model's full-compute GFLOPs at the served input size: counting them runs the
    model with its parameters swapped for meta tensors, which must not happen while requests run on it.
    """
    classes = len(loaded.manifest.labels)
    where = f"{loaded.name} version {loaded.version} on {backend.name}"
    try:
        backend.calibrate(shape)
        full_compute_ms = backend.time_full_compute(shape)
    except Exception as error:  # any failure of a version's own code or graph makes it unservable
        raise InvalidVersion(f"{where}: calibrating failed: {error}") from None
    try:
        logits = backend.execute(torch.zeros(1, *shape)).logits
    except Exception as error:
        raise InvalidVersion(f"{where}: the warm-up inference failed: {error}") from None
    if tuple(logits.shape) != (1, classes):
        raise InvalidVersion(f"{where}: logits of shape {tuple(logits.shape)}, not (1, {classes}) for its labels")
    return full_compute_ms
