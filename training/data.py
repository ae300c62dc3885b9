"""Video-list datasets: annotation files, clip sampling, train-time augmentation and DataLoaders.

A dataset directory (``--data DIR``) holds ``classes.txt`` (one label per line, index = line number) and a
``train`` and a ``val`` list, each either

* ``train.txt``: mmaction2's video list, one ``path label`` line per video (the path may contain spaces;
  the label is the last field), blank lines and ``#`` comments skipped; or
* ``train.csv``: a CSV file with a header naming at least the columns ``path`` and ``label``.

A label is a class index or a class name from ``classes.txt``. Paths are relative to the list's directory,
or to ``data_root`` when one is given (absolute paths are taken as they are).

Clips follow the model's ``preprocessing()`` through the shared ``video`` package, so training and serving
sample and decode the same way. Validation and evaluation clips are made by ``clipwise.video.load_clips`` exactly as
the service makes them: deterministic sampling, short side resized, centre crop. Training clips draw the
frame offsets at random (``ClipSpec.frame_indices(train=True)``) and are augmented as in mmaction2's TSN /
TSM recipe: the short side resized as for serving, then ``MultiScaleCrop`` (TSN's GroupMultiScaleCrop:
crop width and height each a scale in (1, .875, .75, .66) of the short side, at most one scale step apart,
at one of 13 fixed positions), resized to the crop size, optionally flipped, normalised. The same crop and
flip apply to every frame of a clip.

Horizontal flipping is off by default and refused for label sets that name a horizontal direction (left /
right, clockwise / anticlockwise): a flip turns "moving left" into "moving right" (TSM disables it for
Something-Something for the same reason).

Randomness is a function of (seed, epoch, index), so an epoch reads the same clips whatever the number of
workers or processes, and a resumed run repeats it exactly.

Broken files never end an epoch. A video that cannot be decoded is logged and counted; in training its slot
goes to the next readable video of the list, so every batch keeps its size and every DDP rank runs the same
number of steps; in evaluation it is left out and reported in the batch's ``skipped`` count.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clipwise.training.config import ConfigError
from clipwise.video import ClipSpec, DecodeLimits, VideoError, load_clips, read_frames
from clipwise.video.transforms import normalise

logger = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".csv")
# Words of a label that a horizontal flip would contradict.
DIRECTION_WORDS = frozenset(
    "left right leftward leftwards rightward rightwards cw ccw clockwise anticlockwise counterclockwise".split()
)


class AnnotationError(ValueError):
    """An annotation file or dataset directory that cannot be read."""


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video."""

    path: Path
    label: int


@dataclass(frozen=True)
class DatasetFiles:
    """The files of a dataset directory: labels and the train and val lists."""

    classes: Path
    train: Path
    val: Path

    @classmethod
    def find(cls, directory: Path) -> DatasetFiles:
        """Locate ``classes.txt`` and ``train``/``val`` lists (``.txt`` or ``.csv``) in ``directory``."""
        classes = directory / "classes.txt"
        if not classes.is_file():
            raise AnnotationError(f"{directory}: no classes.txt (one label per line)")
        return cls(classes, _find_list(directory, "train"), _find_list(directory, "val"))

    def split(self, name: str) -> Path:
        if name not in ("train", "val"):
            raise AnnotationError(f"unknown split {name!r}: use train or val")
        return self.train if name == "train" else self.val


def _find_list(directory: Path, split: str) -> Path:
    candidates = [directory / f"{split}{suffix}" for suffix in LIST_SUFFIXES]
    found = [path for path in candidates if path.is_file()]
    if len(found) != 1:
        names = " or ".join(path.name for path in candidates)
        raise AnnotationError(f"{directory}: expected exactly one of {names}, found {len(found)}")
    return found[0]


def read_labels(path: Path) -> list[str]:
    """Class names, one per non-blank line."""
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not labels:
        raise AnnotationError(f"{path}: no labels")
    if len(set(labels)) != len(labels):
        raise AnnotationError(f"{path}: duplicate labels")
    return labels


def read_annotations(path: Path, labels: Sequence[str], data_root: Path | None = None) -> list[VideoRecord]:
    """The videos of an annotation list (``path label`` lines, or CSV with ``path`` and ``label`` columns)."""
    root = data_root or path.parent
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _text_rows(path)
    index_of = {name: index for index, name in enumerate(labels)}
    records = []
    for where, video, label in rows:
        records.append(VideoRecord(root / video, _label_index(label, index_of, len(labels), f"{path}:{where}")))
    if not records:
        raise AnnotationError(f"{path}: no videos listed")
    return records


def _text_rows(path: Path) -> list[tuple[int, str, str]]:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise AnnotationError(f"{path}:{number}: expected 'path label', got {line!r}")
        rows.append((number, fields[0], fields[1]))
    return rows


def _csv_rows(path: Path) -> list[tuple[int, str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"path", "label"} <= set(reader.fieldnames or ()):
            raise AnnotationError(f"{path}: the CSV header must name 'path' and 'label' columns")
        return [(reader.line_num, row["path"].strip(), row["label"].strip()) for row in reader]


def _label_index(label: str, index_of: dict[str, int], count: int, where: str) -> int:
    if label in index_of:
        return index_of[label]
    if label.lstrip("-").isdigit():
        index = int(label)
        if 0 <= index < count:
            return index
        raise AnnotationError(f"{where}: label index {index} is not in 0..{count - 1}")
    raise AnnotationError(f"{where}: unknown label {label!r}")


def data_fingerprint(files: Sequence[Path], records: Sequence[VideoRecord]) -> str:
    """sha256 of the annotation files' contents and of the size of every listed video, in list order (-1 for
    a missing file). Where the dataset directory lies does not change it."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for record in records:
        digest.update(f"{record.path.stat().st_size if record.path.is_file() else -1}\0".encode())
    return digest.hexdigest()


def direction_sensitive(labels: Sequence[str]) -> list[str]:
    """The labels that name a horizontal direction, which a horizontal flip would turn into another class."""
    return [label for label in labels if DIRECTION_WORDS & set(re.split(r"[^a-z]+", label.lower()))]


def check_flip(labels: Sequence[str]) -> None:
    """Refuse horizontal flipping for direction-sensitive labels."""
    sensitive = direction_sensitive(labels)
    if sensitive:
        raise ConfigError(
            f"horizontal flip refused: it would swap the meaning of direction-sensitive labels "
            f"({', '.join(sensitive[:6])}{', ...' if len(sensitive) > 6 else ''}); train without --flip"
        )


@dataclass(frozen=True)
class MultiScaleCrop:
    """TSN's GroupMultiScaleCrop (mmaction2 ``MultiScaleCrop``, ``random_crop=False``, 13 fixed crops)."""

    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    max_scale_gap: int = 1

    def box(self, height: int, width: int, output: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of a random crop of a ``height`` x ``width`` frame."""
        sizes = [int(min(height, width) * scale) for scale in self.scales]
        pairs = [(h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= self.max_scale_gap]
        crop_h, crop_w = (output if abs(size - output) < 3 else size for size in rng.choice(pairs))
        h_step, w_step = (height - crop_h) // 4, (width - crop_w) // 4
        steps = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
        top, left = rng.choice(steps)
        return top * h_step, left * w_step, crop_h, crop_w


@dataclass(frozen=True)
class Augmentation:
    """Train-time transforms of a clip's frames; ``flip`` must stay off for direction-sensitive labels."""

    crop: MultiScaleCrop = MultiScaleCrop()
    flip: bool = False

    def __call__(self, frames: torch.Tensor, output: int, rng: random.Random) -> torch.Tensor:
        """(T, 3, H, W) uint8 frames -> (T, 3, output, output) uint8, one crop and flip for the whole clip."""
        top, left, crop_h, crop_w = self.crop.box(frames.shape[-2], frames.shape[-1], output, rng)
        cropped = frames[..., top : top + crop_h, left : left + crop_w]
        if (crop_h, crop_w) != (output, output):
            cropped = F.interpolate(cropped, size=(output, output), mode="bilinear", antialias=True)
        return cropped.flip(-1) if self.flip and rng.random() < 0.5 else cropped


class Sample(NamedTuple):
    clip: torch.Tensor  # (3, T, S, S) float32, normalised
    label: int
    skipped: int  # unreadable videos passed over to get this one


class Batch(NamedTuple):
    clips: torch.Tensor  # (N, 3, T, S, S)
    labels: torch.Tensor  # (N,) int64
    skipped: int


class VideoDataset(Dataset):
    """Clips of annotated videos, as a model's ``preprocessing()`` (a ``ClipSpec``) describes them.

    With an ``augmentation`` the dataset makes training clips (random offsets, augmented; a broken video
    is replaced by the next readable one); without, evaluation clips exactly as the service makes them
    (a broken video gives None, which ``collate`` counts).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        spec: ClipSpec,
        *,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.records = list(records)
        self.spec = spec
        self.augmentation = augmentation
        self.seed = seed
        self.limits = limits or DecodeLimits()
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Random offsets and crops are drawn per (seed, epoch, index)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> Sample | None:
        if self.augmentation is None:
            try:
                return Sample(self._eval_clip(self.records[index]), self.records[index].label, 0)
            except (VideoError, OSError) as error:
                logger.warning("skipping %s: %s", self.records[index].path, error)
                return None
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return Sample(self._train_clip(record, rng), record.label, attempt)
            except (VideoError, OSError) as error:
                logger.warning("skipping %s: %s", record.path, error)
        raise RuntimeError("no video of the training list can be decoded")

    def _eval_clip(self, record: VideoRecord) -> torch.Tensor:
        return load_clips(record.path.read_bytes(), self.spec, limits=self.limits).clips[0]

    def _train_clip(self, record: VideoRecord, rng: random.Random) -> torch.Tensor:
        spec = self.spec
        decoded = read_frames(
            record.path.read_bytes(),
            lambda num_frames: spec.frame_indices(num_frames, train=True, rng=rng),
            limits=self.limits,
            min_frames=spec.frames,
            short_side=spec.short_side,  # scaled while converted, as the service scales them
        )
        frames, positions = decoded.stacked()
        resized = torch.from_numpy(frames).permute(0, 3, 1, 2)
        clip = self.augmentation(resized[positions[0]], spec.crop_size, rng)
        return normalise(clip.transpose(0, 1)[None], spec.mean, spec.std)[0]


def collate(samples: Sequence[Sample | None]) -> Batch:
    """Stack the readable samples; count the unreadable ones (None) and those their slots passed over."""
    readable = [sample for sample in samples if sample is not None]
    skipped = len(samples) - len(readable) + sum(sample.skipped for sample in readable)
    if not readable:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    return Batch(
        torch.stack([sample.clip for sample in readable]),
        torch.tensor([sample.label for sample in readable], dtype=torch.long),
        skipped,
    )


def train_loader(
    dataset: VideoDataset, *, batch_size: int, workers: int, seed: int, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Shuffled batches of this process's share of ``dataset`` (call ``set_epoch`` on both every epoch).

    Every process runs the same number of full batches; a share smaller than a batch runs as one batch.
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=len(sampler) >= batch_size,
    )


def eval_loader(
    dataset: VideoDataset, *, batch_size: int, workers: int, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """Batches of this process's share of ``dataset``, every video exactly once over all processes."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(rank, len(dataset), world_size)),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
    )
