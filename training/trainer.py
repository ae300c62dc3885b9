"""The training loop: ``fit(config)`` runs an objective's phases epoch by epoch and writes the version.

An objective (``training/train_*.py``) is a list of ``Phase``s: a number of epochs, an ``nn.Module`` that
owns the model and returns a ``StepOutput`` (loss, logits, numbers to log) for a batch, the parameters it
trains and its learning rate. ``fit`` runs the phases one after the other and writes the trained model as a
new version of a model repository, the way the service loads it.

Randomness (initialisation, data order, augmentation, Gumbel / Bernoulli draws, dropout) is seeded from
(seed, epoch, process rank) at the start of every epoch, so the RNG state at an epoch boundary is a function
of the run's seed and a resumed run repeats what the uninterrupted run would have done. Helpers by job:
``clipwise.training.phase`` (the objectives' unit), ``clipwise.training.setup`` (data and model),
``clipwise.training.optim``
(optimiser, schedule), ``clipwise.training.run_log`` (run directory, resume state), ``clipwise.training.distributed``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from clipwise.models.base import VideoClassifier
from clipwise.models.checkpoint import save_version
from clipwise.training.config import ConfigError, TrainConfig
from clipwise.training.data import Batch, DatasetFiles, eval_loader, read_labels, train_loader
from clipwise.training.distributed import Processes, seed_epoch
from clipwise.training.evaluate import Evaluation, evaluate
from clipwise.training.optim import Schedule, make_optimizer
from clipwise.training.phase import Phase, StepOutput
from clipwise.training.run_log import RunLog, csv_value, git_commit
from clipwise.training.setup import build_model, load_data
from clipwise.video import ClipSpec


@dataclass
class EpochTotals:
    """Running sums of one training epoch."""

    sums: dict[str, float] = field(default_factory=dict)
    clips: int = 0
    skipped: int = 0

    def add(self, output: StepOutput, labels: torch.Tensor, skipped: int) -> None:
        count = len(labels)
        values = {"loss": output.loss, "top1": (output.logits.argmax(1) == labels).float().mean(), **output.stats}
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.item() * count
        self.clips += count
        self.skipped += skipped

    def means(self, processes: Processes) -> dict[str, float]:
        """Means over the clips of every process, and the unreadable files passed over."""
        keys = sorted(self.sums)
        *sums, clips, skipped = processes.sum([self.sums[key] for key in keys] + [self.clips, self.skipped])
        means = {f"train_{key}": total / max(clips, 1) for key, total in zip(keys, sums, strict=True)}
        return {**means, "skipped_files": int(skipped)}


def train_epoch(
    step_model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    *,
    base_lr: float,
    first_step: int,
    clip_grad_norm: float,
    processes: Processes,
    log: RunLog,
    description: str,
) -> dict[str, float]:
    """One pass over the loader: forward, backward, clip, step; returns the epoch's mean numbers."""
    totals = EpochTotals()
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    progress = tqdm(loader, desc=description, unit="batch", disable=not processes.is_main, leave=False)
    lr = base_lr
    for step, batch in enumerate(progress, start=first_step):
        lr = base_lr * schedule.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        labels = batch.labels.to(processes.device, non_blocking=True)
        output = step_model(batch.clips.to(processes.device, non_blocking=True), labels)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(trained, clip_grad_norm)
        optimizer.step()
        totals.add(output, labels, batch.skipped)
        loss = output.loss.item()
        progress.set_postfix(loss=f"{loss:.3f}")
        log.step("step/train_loss", loss, step)
    return {**totals.means(processes), "lr": lr}


def fit(config: TrainConfig) -> Path | None:
    """Train ``config.model`` with its family's objective and write it as a new version of ``config.out``.

    Returns the version directory (process 0; None on the others).
    """
    config = config.resolved()
    processes = Processes.start(config.device or None)
    try:
        return Trainer(config, processes).run()
    finally:
        processes.stop()


class Trainer:
    """One training run: the model, its data and phases, the run directory."""

    def __init__(self, config: TrainConfig, processes: Processes) -> None:
        self.config, self.processes = config, processes
        files = DatasetFiles.find(config.data)
        labels = read_labels(files.classes)
        seed_epoch(config.seed, -1, 0)  # the same initial weights in every process
        self.model = build_model(config, len(labels))
        self.data = load_data(config, files, labels, ClipSpec(**self.model.preprocessing().to_dict()))
        self.model.to(processes.device)  # before the phases: a latency cost calibrates on the training device
        self.phases = objective_phases(self.model, config, len(self.data.train))
        self.log = RunLog(config.run_dir, processes.is_main)
        shares = {"workers": config.workers, "rank": processes.rank, "world_size": processes.world_size}
        self.train_batches = train_loader(self.data.train, batch_size=config.batch_size, seed=config.seed, **shares)
        self.val_batches = eval_loader(self.data.val, batch_size=config.batch_size, **shares)

    def run(self) -> Path | None:
        """All phases (after the epochs a resumed run has done), then the new version (process 0)."""
        config = self.config
        done, saved_optimizers = 0, {}
        if config.resume:
            state = self.log.load_state(self.model)
            done, saved_optimizers = state["epoch"], {state["phase"]: state["optimizer"]}
        elif (self.log.resume_dir / "latest").exists():
            raise ConfigError(f"{config.run_dir} holds a run: pass --resume to continue it, or another --run-dir")
        self.log.start(config)
        evaluation, first_epoch = None, 0
        for phase in self.phases:
            if phase.epochs and first_epoch + phase.epochs > done:
                optimizer_state = saved_optimizers.get(phase.name) if done > first_epoch else None
                evaluation = self.run_phase(phase, first_epoch, done, optimizer_state)
            first_epoch += phase.epochs
        self.log.close()
        evaluation = evaluation or self.validate()
        self.log.write_json("processes.json", self.describe_processes())
        if not self.processes.is_main:
            return None
        return save_version(
            self.model.cpu(),
            self.data.labels,
            config.out.parent,
            config.out.name,
            trained=True,
            metrics=evaluation.metrics(),
            data_fingerprint=self.data.fingerprint,
            git_commit=git_commit(),
        )

    def describe_processes(self) -> dict[str, Any]:
        """How the run was spread: backend, each process's share of the training list and parameter hash."""
        processes = self.processes
        return {
            "world_size": processes.world_size,
            "backend": torch_dist.get_backend() if processes.distributed else None,
            "train_clips": processes.gather(len(self.train_batches.sampler)),
            "parameter_sha256": processes.check_in_sync(self.model),
        }

    def validate(self) -> Evaluation:
        progress = "val" if self.processes.is_main else None
        return evaluate(self.model, self.val_batches, self.data.labels, self.processes.device, progress)

    def run_phase(
        self, phase: Phase, first_epoch: int, done: int, optimizer_state: dict[str, Any] | None
    ) -> Evaluation:
        """The epochs of ``phase`` (which starts at ``first_epoch``) after the first ``done``; the last validation."""
        optimizer = make_optimizer(phase, self.config)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        step_model = self.processes.wrap(phase.objective)
        schedule = Schedule.for_phase(self.config, phase.epochs, len(self.train_batches))
        for epoch in range(max(done, first_epoch), first_epoch + phase.epochs):
            evaluation = self.run_epoch(phase, step_model, optimizer, schedule, epoch, first_epoch)
        return evaluation

    def run_epoch(
        self,
        phase: Phase,
        step_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        epoch: int,
        first_epoch: int,
    ) -> Evaluation:
        """Train one epoch (counted over all phases), validate, log, save the resume state."""
        seed_epoch(self.config.seed, epoch, self.processes.rank)
        self.train_batches.sampler.set_epoch(epoch)
        self.data.train.set_epoch(epoch)
        self.model.train()
        for module in phase.frozen:
            module.eval()
        started = time.perf_counter()
        train = train_epoch(
            step_model,
            self.train_batches,
            optimizer,
            schedule,
            base_lr=phase.lr,
            first_step=(epoch - first_epoch) * len(self.train_batches),
            clip_grad_norm=self.config.clip_grad_norm,
            processes=self.processes,
            log=self.log,
            description=f"{phase.name} {epoch + 1}/{first_epoch + phase.epochs}",
        )
        evaluation = self.validate()
        val = evaluation.metrics()
        row = {
            "epoch": epoch + 1,
            "phase": phase.name,
            **train,
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_gflops": val["mean_executed_gflops"],
            "seconds": time.perf_counter() - started,
        }
        self.log.epoch(row)
        if self.processes.is_main:
            tqdm.write(" ".join(f"{key}={csv_value(value)}" for key, value in row.items()))
        self.log.save_state(self.model, optimizer, epoch + 1, phase.name)
        return evaluation


def objective_phases(model: VideoClassifier, config: TrainConfig, train_clips: int) -> list[Phase]:
    """The phases of the objective the model's class declares (``Capabilities.objective``)."""
    script = f"clipwise.training.train_{model.capabilities.objective}"
    return importlib.import_module(script).phases(model, config, train_clips)
