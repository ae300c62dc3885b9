"""What ``pip install`` puts in site-packages: one top-level package, ``clipwise``, holding every module.

The repository keeps the design card's folders (``models/``, ``service/`` …); pyproject.toml maps each to a
subpackage (``clipwise.models`` …). The wheel is built here, as pip builds it, and its file list is compared
with the source tree, so a package left out of pyproject.toml's list, or a second top-level name, fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"clipwise": "clipwise", "models": "clipwise/models", "service": "clipwise/service",
           "export": "clipwise/export", "training": "clipwise/training", "video": "clipwise/video"}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The wheel pip builds from a copy of the sources (setuptools writes build/ beside what it builds)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
               "--wheel-dir", str(out), str(source)]
    subprocess.run(command, check=True, timeout=300)
    (wheel,) = out.glob("clipwise-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def source_files(folder: str) -> set[str]:
    """The installed paths of a folder's modules and data files (as the wheel should name them)."""
    files = (path for path in (ROOT / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    return {f"{FOLDERS[folder]}/{path.relative_to(ROOT / folder).as_posix()}" for path in files}


def test_the_wheel_has_one_top_level_package(wheel_names: set[str]) -> None:
    top_level = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"clipwise"}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_source_file_is_installed_under_clipwise(folder: str, wheel_names: set[str]) -> None:
    missing = source_files(folder) - wheel_names
    assert not missing, f"left out of the wheel (add the package to pyproject.toml): {sorted(missing)}"
