"""What a run trains: the dataset made into clips, and the model built (and initialised) from the config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from models.base import VideoClassifier
from models.checkpoint import WEIGHTS_FILE
from models.registry import create_model
from training.config import ConfigError, TrainConfig
from training.data import Augmentation, DatasetFiles, VideoDataset, check_flip, data_fingerprint, read_annotations
from video import ClipSpec

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
        loaded, left_out = load_matching(model, config.init / WEIGHTS_FILE)
        logger.info("initialised %d tensors from %s; left as built: %s", loaded, config.init, left_out or "none")
    return model


def load_matching(model: nn.Module, weights: Path) -> tuple[int, list[str]]:
    """Load the tensors of a safetensors file whose names and shapes match ``model``'s, directly or under a
    submodule (an I3D's weights into an Ada3D's ``backbone``). Returns the count loaded and the names left."""
    source = load_file(weights)
    target = model.state_dict()
    prefixes = [""] + [f"{name}." for name, _ in model.named_modules() if name]
    prefix = max(prefixes, key=lambda candidate: sum(candidate + key in target for key in source))
    matched = {
        prefix + key: tensor
        for key, tensor in source.items()
        if prefix + key in target and target[prefix + key].shape == tensor.shape
    }
    if not matched:
        raise ConfigError(f"{weights}: no tensor matches {type(model).__name__}")
    model.load_state_dict(matched, strict=False)
    return len(matched), sorted(set(target) - set(matched))
