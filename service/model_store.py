"""The model versions being served, one per model name.

A request takes its ``LoadedVersion`` from the store once, at its start, and finishes on it: replacing
the version of a name swaps one dictionary entry under a lock, and requests in flight keep a reference
to the version they started on, which stays alive until they finish. Loading and warming up happen
before the swap, so a version that fails to load never replaces the one serving.
"""

from __future__ import annotations

import threading
from pathlib import Path

from models.checkpoint import LoadedVersion, list_model_names, list_versions, load_version, validate_name
from service.inference import warm_up


class ModelNotFound(LookupError):
    """No such model is being served."""

    code = "model_not_found"


class VersionNotFound(ModelNotFound):
    """The model is served, but not at the requested version."""

    code = "version_not_found"


class ModelStore:
    """Thread-safe map from model name to the version serving it."""

    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._served: dict[str, LoadedVersion] = {}
        self._lock = threading.Lock()

    def load(self, name: str, version: int | None = None) -> LoadedVersion:
        """Load a version (default: the newest) from the repository, warm it up, then serve it in place of
        the current one. Raises ``models.checkpoint.CheckpointError`` and leaves the store as it was if the
        version cannot be loaded."""
        loaded = load_version(self.repository, name, version)
        warm_up(loaded)
        with self._lock:
            self._served[name] = loaded
        return loaded

    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        """The version serving ``name``; ``version``, if given, must be that one."""
        with self._lock:
            served = self._served.get(name)
        if served is None:
            raise ModelNotFound(f"model {name!r} is not served; served models: {sorted(self.names())}")
        if version is not None and version != served.version:
            raise VersionNotFound(
                f"model {name!r} is served at version {served.version}, not {version}; "
                f"versions in the repository: {self.versions_on_disk(name)}"
            )
        return served

    def served(self) -> list[LoadedVersion]:
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
