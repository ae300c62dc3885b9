"""Build the default model repository that ships with Clipwise (``model_repository/``).

Each default model is written as version 1 from a seeded random initialisation, marked untrained in its
manifest: the same seed gives the same weights file, byte for byte. The labels are the classes of the
synthetic motion benchmark (``training.synthetic``), whose trained checkpoints will replace these.

    .venv/bin/python scripts/bundle_defaults.py [--repository model_repository]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from models import create_model
from models.checkpoint import save_version, sha256_file, validate_name
from training.synthetic import CLASSES

DEFAULT_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
DEFAULT_MODELS = {"tsn_r18_tiny": "tsn_r18_tiny"}  # model name -> registry preset
SEED = 0


def bundle(repository: Path, name: str, preset: str) -> Path:
    """Write ``preset``, seeded and untrained, as version 1 of ``repository/name`` (replacing what was there)."""
    shutil.rmtree(repository / validate_name(name), ignore_errors=True)
    torch.manual_seed(SEED)
    model = create_model(preset, num_classes=len(CLASSES))
    return save_version(model, list(CLASSES), repository, name, trained=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="repository to write")
    args = parser.parse_args()
    for name, preset in DEFAULT_MODELS.items():
        version_dir = bundle(args.repository, name, preset)
        weights = version_dir / "weights.safetensors"
        print(f"{version_dir}: {weights.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(weights)[:16]}")


if __name__ == "__main__":
    main()
