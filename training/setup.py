"""What a run trains: the dataset made into clips, and the model built (and initialised) from the config."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from clipwise.models.base import VideoClassifier
from clipwise.models.checkpoint import WEIGHTS_FILE, CheckpointError, version_path
from clipwise.models.imports import (
    SOURCES,
    CheckpointImportError,
    Placement,
    place_by_name,
    place_by_role,
    read_state_dict,
    source_named,
)
from clipwise.models.imports.reading import listed
from clipwise.models.registry import create_model
from clipwise.training.config import ConfigError, TrainConfig
from clipwise.training.data import (
    Augmentation,
    DatasetFiles,
    VideoDataset,
    check_flip,
    data_fingerprint,
    read_annotations,
)
from clipwise.video import ClipSpec

logger = logging.getLogger(__name__)


@dataclass
class DataSetup:
    """The dataset a run trains on."""

    labels: list[str]
    train: VideoDataset
    val: VideoDataset
    fingerprint: str


def load_data(config: TrainConfig, files: DatasetFiles, labels: list[str], spec: ClipSpec) -> DataSetup:
    """The train and val lists of ``files`` made into clips as ``spec`` says."""
    if config.flip:
        check_flip(labels)
    train = read_annotations(files.train, labels, config.data_root)
    val = read_annotations(files.val, labels, config.data_root)
    return DataSetup(
        labels=labels,
        train=VideoDataset(train, spec, augmentation=Augmentation(flip=config.flip), seed=config.seed),
        val=VideoDataset(val, spec),
        fingerprint=data_fingerprint([files.classes, files.train, files.val], train + val),
    )


def build_model(config: TrainConfig, num_classes: int) -> VideoClassifier:
    """The preset with the dataset's classes, the size and other config overrides (``model_args``: any field of
    the preset's config, e.g. ``{"temporal_shift": true}``) and, with ``init``, starting weights."""
    sizes = {key: value for key, value in (("frames", config.frames), ("size", config.size)) if value}
    try:
        model = create_model(config.model, num_classes=num_classes, **config.model_args, **sizes)
    except (KeyError, TypeError) as error:  # an unknown preset or config field
        raise ConfigError(error.args[0]) from None
    if config.init:
        for line in initialise(model, config.init, config.init_source).lines():
            logger.info(line)
    return model


@dataclass
class InitReport:
    """What ``--init`` set: per source, the model's tensors it initialised and its own that found no place."""

    model: str
    total: int  # tensors of the model
    loaded: dict[Path, list[str]]
    unused: dict[Path, list[str]]  # source tensors: no such role / name in the model, or another shape
    left_as_built: list[str]

    def lines(self) -> list[str]:
        loaded = "; ".join(f"{len(keys)} from {path}" for path, keys in self.loaded.items())
        lines = [f"initialised {sum(map(len, self.loaded.values()))} of {self.total} tensors of {self.model}: {loaded}"]
        lines.append(f"left as built ({len(self.left_as_built)}): {listed(self.left_as_built) or 'none'}")
        lines += [f"not used from {path} ({len(keys)}): {listed(keys)}" for path, keys in self.unused.items() if keys]
        return lines


def initialise(model: VideoClassifier, paths: Sequence[Path], source: str = "") -> InitReport:
    """Load into ``model`` what fits by role from each path: a version directory (``REPO/NAME/VERSION`` or
    ``REPO/NAME``: its tensors by name, see ``place_by_name``) or a file laid out as ``source`` (``torchvision``:
    an ImageNet ResNet into a TSN / TSM / AdaFuse backbone, a MobileNetV2 into Ada3D's selection net)."""
    placements = {path: _placement(model, path, source) for path in paths}
    origin: dict[str, Path] = {}
    for path, placement in placements.items():
        for key in placement.tensors:
            if key in origin:
                raise ConfigError(f"{origin[key]} and {path} both initialise {key}: give one of them")
            origin[key] = path
    if not origin:
        raise ConfigError(f"nothing in {', '.join(map(str, paths))} fits {model.preset}")
    model.load_state_dict({key: placements[path].tensors[key] for key, path in origin.items()}, strict=False)
    target = model.state_dict()
    return InitReport(
        model=model.preset,
        total=len(target),
        loaded={path: sorted(placement.tensors) for path, placement in placements.items()},
        unused={path: placement.misshaped + placement.unused for path, placement in placements.items()},
        left_as_built=[key for key in target if key not in origin],
    )


def _placement(model: VideoClassifier, path: Path, source: str) -> Placement:
    try:
        if path.is_dir():
            return place_by_name(model, load_file(version_path(path) / WEIGHTS_FILE))
        if not source:
            raise ConfigError(f"--init {path} is a file: give its layout with --init-source ({', '.join(SOURCES)})")
        layout = source_named(source)
        return place_by_role(model, read_state_dict(path, layout.container), layout.layout)
    except (CheckpointError, CheckpointImportError) as error:
        raise ConfigError(str(error)) from None
