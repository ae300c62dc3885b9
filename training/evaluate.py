"""Accuracy, executed FLOPs and policy statistics of a model on a video list, per class and overall.

Every clip goes through ``model.execute``, the pass the service runs, so the GFLOPs are the ones the model
really executed for that clip (its policy's), and top-1 / top-5 are those of the served predictions. Each
process evaluates its share of the list; the sums are gathered so every process returns the same report.

Policy statistics are means over clips of ``clipwise.models.policy.policy_fractions`` of each clip's policy record:
AdaFuse's channels kept, reused and skipped, Ada3D's frames kept and 3D stages on, the fusion units' shares.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from clipwise.models.base import VideoClassifier
from clipwise.models.checkpoint import MANIFEST_FILE, LoadedVersion, load_version
from clipwise.models.latency import time_against_full
from clipwise.models.policy import policy_fractions
from clipwise.training.data import (
    AnnotationError,
    DatasetFiles,
    VideoDataset,
    eval_loader,
    read_annotations,
    read_labels,
)
from clipwise.video import ClipSpec


@dataclass
class ClassTotals:
    """Sums over the clips of one class."""

    clips: int = 0
    top1: int = 0
    top5: int = 0
    gflops: float = 0.0
    policy_gflops: float = 0.0
    policy: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, other: ClassTotals) -> None:
        self.clips += other.clips
        self.top1 += other.top1
        self.top5 += other.top5
        self.gflops += other.gflops
        self.policy_gflops += other.policy_gflops
        for key, value in other.policy.items():
            self.policy[key] += value

    def means(self) -> dict[str, Any]:
        clips = max(self.clips, 1)
        report: dict[str, Any] = {
            "clips": self.clips,
            "top1": self.top1 / clips,
            "top5": self.top5 / clips,
            "mean_executed_gflops": self.gflops / clips,
            "mean_policy_gflops": self.policy_gflops / clips,
        }
        if self.policy:
            report["policy"] = {key: value / clips for key, value in self.policy.items()}
        return report


@dataclass
class Evaluation:
    """Per-class totals of an evaluation, with the full-compute GFLOPs and the unreadable videos left out."""

    labels: list[str]
    full_gflops: float
    per_class: list[ClassTotals]
    skipped: int = 0

    def over(self, labels: Iterable[str]) -> ClassTotals:
        """Totals over the clips of some classes (the temporal-order classes of the synthetic benchmark...)."""
        total = ClassTotals()
        for label in labels:
            total.add(self.per_class[self.labels.index(label)])
        return total

    def overall(self) -> ClassTotals:
        return self.over(self.labels)

    def report(self) -> dict[str, Any]:
        """The JSON report: overall figures, then each class's."""
        overall = self.overall().means()
        saving = 1 - overall["mean_executed_gflops"] / self.full_gflops if self.full_gflops else 0.0
        saving = round(saving, 6)  # float sums of per-clip figures: 1e-16 is no saving
        return {
            **overall,
            "full_gflops": self.full_gflops,
            "saving": saving,
            "skipped": self.skipped,
            "per_class": {
                label: totals.means() for label, totals in zip(self.labels, self.per_class, strict=True) if totals.clips
            },
        }

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a checkpoint manifest and the metrics log."""
        report = self.report()
        keys = ("top1", "top5", "mean_executed_gflops", "mean_policy_gflops", "saving", "clips")
        flat = {key: float(report[key]) for key in keys}
        flat.update({f"policy_{key}": value for key, value in report.get("policy", {}).items()})
        return flat


def _topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1)


@torch.inference_mode()
def evaluate(
    model: VideoClassifier,
    loader: DataLoader,
    labels: Sequence[str],
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> Evaluation:
    """Run every clip of ``loader`` through ``model.execute``; gathers the totals of all processes.

    ``progress``: the title of a progress bar (None: no bar).
    """
    model.eval()
    per_class = [ClassTotals() for _ in labels]
    skipped = 0
    for batch in tqdm(loader, desc=progress, unit="batch", disable=progress is None, leave=False):
        skipped += batch.skipped
        if not len(batch.labels):
            continue
        execution = model.execute(batch.clips.to(device, non_blocking=True))
        logits, targets = execution.logits.float().cpu(), batch.labels
        top1, top5 = _topk_hits(logits, targets, 1), _topk_hits(logits, targets, 5)
        for clip, label in enumerate(targets.tolist()):
            totals = per_class[label]
            totals.clips += 1
            totals.top1 += int(top1[clip])
            totals.top5 += int(top5[clip])
            totals.gflops += execution.executed_gflops[clip]
            totals.policy_gflops += execution.policy_gflops[clip]
            if execution.policy is not None:
                for key, value in policy_fractions(execution.policy[clip]).items():
                    totals.policy[key] += value
    evaluation = Evaluation(list(labels), model.full_gflops(), per_class, skipped)
    return _gather(evaluation) if torch_dist.is_initialized() else evaluation


def _gather(evaluation: Evaluation) -> Evaluation:
    shares: list[Evaluation | None] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(shares, evaluation)
    merged = Evaluation(evaluation.labels, evaluation.full_gflops, [ClassTotals() for _ in evaluation.labels])
    for share in shares:
        merged.skipped += share.skipped
        for totals, theirs in zip(merged.per_class, share.per_class, strict=True):
            totals.add(theirs)
    return merged


def version_loader(
    loaded: LoadedVersion,
    list_file: Path,
    classes_file: Path,
    batch_size: int,
    workers: int,
    data_root: Path | None = None,
) -> DataLoader:
    """Batches of an annotation list for a loaded version: the dataset's labels (``classes_file``) matched to
    the model's by name, so their order may differ; clips made as the service makes them."""
    data_labels, model_labels = read_labels(classes_file), loaded.manifest.labels
    unknown = sorted(set(data_labels) - set(model_labels))
    if unknown:
        raise AnnotationError(f"{classes_file}: labels the model does not know: {', '.join(unknown[:6])}")
    model_index = [model_labels.index(label) for label in data_labels]
    records = [
        replace(record, label=model_index[record.label])
        for record in read_annotations(list_file, data_labels, data_root)
    ]
    dataset = VideoDataset(records, ClipSpec(**loaded.manifest.preprocessing.to_dict()))
    return eval_loader(dataset, batch_size=batch_size, workers=workers)


def evaluate_version(
    model_dir: Path,
    data: Path,
    *,
    split: str = "val",
    data_root: Path | None = None,
    batch_size: int = 8,
    workers: int = 2,
    latency_clips: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Load a version as the service does (``REPO/NAME/VERSION``, or ``REPO/NAME`` for the newest) and
    evaluate it on a list of a dataset directory on ``device``; returns the JSON report.

    The dataset's labels are matched to the model's by name, so their order may differ. ``latency_clips``: also
    time that many clips of the list one at a time, as the service runs them, against the model's
    full-compute path (``clipwise.models.latency``): the report's ``latency``. The model is calibrated at its served
    clip first, as the service does when it loads a version: what an adaptive executor runs, and so its
    executed GFLOPs, follow that calibration.
    """
    version = int(model_dir.name) if (model_dir / MANIFEST_FILE).is_file() else None
    name_dir = model_dir.parent if version is not None else model_dir
    loaded = load_version(name_dir.parent, name_dir.name, version)
    loaded.model.to(device).eval().calibrate(
        loaded.manifest.preprocessing.frames, loaded.manifest.preprocessing.crop_size
    )
    files = DatasetFiles.find(data)
    loader = version_loader(loaded, files.split(split), files.classes, batch_size, workers, data_root)
    evaluation = evaluate(
        loaded.model, loader, loaded.manifest.labels, device, progress=f"eval {loaded.name} v{loaded.version}"
    )
    model = {"name": loaded.name, "version": loaded.version, "architecture": loaded.manifest.architecture}
    report = {
        "model": {**model, "path": str(loaded.path)},
        "data": {"list": str(files.split(split)), "clips": len(loader.dataset)},
        **evaluation.report(),
    }
    if latency_clips:
        report["latency"] = measure_latency(loaded.model, loader.dataset, latency_clips, device=device)
    return report


def measure_latency(
    model: VideoClassifier, dataset: VideoDataset, clips: int, repeats: int = 5, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Median milliseconds of one clip under the model's own decisions and under full compute, over the first
    ``clips`` readable clips of ``dataset`` (each timed ``repeats`` times, interleaved, on ``device``), and the
    median ratio. Calibrate the model first (``evaluate_version`` does)."""
    model.eval()
    timings = []
    for index in range(len(dataset)):
        if len(timings) == clips:
            break
        item = dataset[index]
        if item is None:  # unreadable: the loader skips it too
            continue
        timings.append(time_against_full(model, item.clip[None].to(device), repeats=repeats))
    return {
        "clips": len(timings),
        "policy_ms": statistics.median(t.policy_ms for t in timings),
        "full_compute_ms": statistics.median(t.full_ms for t in timings),
        "time_ratio": statistics.median(t.ratio for t in timings),
        "max_time_ratio": max(t.ratio for t in timings),
    }
