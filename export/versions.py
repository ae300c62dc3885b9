"""Where a model version lives: the ``REPO/NAME/VERSION`` (or ``REPO/NAME``, its newest) paths of the CLI."""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import CheckpointError, LoadedVersion, list_versions, load_version


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
