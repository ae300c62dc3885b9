"""What every training script shares: config, processes, loaders, optimiser and schedule, the epoch loop,
resume state, logs, and the version it writes.

An objective (``training/train_*.py``) is a list of ``Phase``s: a number of epochs, an ``nn.Module`` that
owns the model and returns a ``StepOutput`` (loss, logits, numbers to log) for a batch, the parameters it
trains and its learning rate. ``fit`` runs the phases one after the other and writes the trained model as a
new version of a model repository, the way the service loads it.

Choices, from the TSM and PySlowFast code bases where the papers are silent:

* SGD with momentum 0.9; weight decay on conv and linear weights only, not on norm layers, biases or
  learnable rates (PySlowFast's ``BN.WEIGHT_DECAY = 0``); gradients clipped to norm 20 (TSM's
  ``--clip-gradient``).
* The learning rate changes every step: an optional linear warm-up, then a half cosine to 0 (PySlowFast) or
  steps of ×0.1 at 40% and 80% of the phase unless milestones are given (TSM: epochs 20 and 40 of 50).
* ``--batch-size`` is per process, as in torchvision's references; the learning rate is not rescaled.
* Randomness (initialisation, data order, augmentation, Gumbel / Bernoulli draws, dropout) is seeded from
  (seed, epoch, process rank) at the start of every epoch, so the RNG state at an epoch boundary is a
  function of the run's seed and a resumed run repeats what the uninterrupted run would have done.

Run directory (``--run-dir``, default ``runs/NAME``), written by process 0 only:

    config.json               the resolved configuration
    metrics.csv               one row per epoch (phase, learning rate, train loss and accuracy, the
                              objective's numbers, validation top-1 / top-5 / executed GFLOPs, skipped files)
    tensorboard/              the same as TensorBoard scalars, plus the loss of every step
    resume/epoch-NNNN/        model.safetensors, optimizer.safetensors and state.json after epoch NNNN
    resume/latest             the name of the newest complete state directory (written last)
    processes.json            world size, backend, each process's share of the training list and the hash
                              of its final parameters

Distributed training: run the same command under ``torchrun``; each process reads its share of the data
(``DistributedSampler``), DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPU), and
at the end the processes compare a hash of their parameters and stop with an error if they differ.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.base import VideoClassifier
from models.checkpoint import WEIGHTS_FILE, save_version
from models.registry import create_model
from training.config import ConfigError, TrainConfig
from training.data import (
    Augmentation,
    Batch,
    DatasetFiles,
    VideoDataset,
    check_flip,
    data_fingerprint,
    eval_loader,
    read_annotations,
    read_labels,
    train_loader,
)
from training.evaluate import Evaluation, evaluate
from video import ClipSpec

logger = logging.getLogger(__name__)


class StepOutput(NamedTuple):
    """What an objective returns for one batch."""

    loss: torch.Tensor
    logits: torch.Tensor  # for the training accuracy
    stats: dict[str, torch.Tensor] = {}  # scalars to log (means over the batch)


@dataclass
class Phase:
    """A stretch of training with one objective, one set of trained parameters and one learning rate (some
    parameters may train at a multiple of it)."""

    name: str
    epochs: int
    objective: nn.Module  # forward(clips, labels) -> StepOutput; owns the model
    lr: float
    trained: Sequence[nn.Parameter] | None = None  # what the phase updates (None: every parameter)
    no_decay: Sequence[nn.Parameter] = ()  # trained parameters exempt from weight decay, besides 1-D ones
    frozen: Sequence[nn.Module] = ()  # modules kept in eval mode (frozen batch-norm statistics)
    scaled: Sequence[nn.Parameter] = ()  # trained parameters whose learning rate is ``lr_scale`` × ``lr``
    lr_scale: float = 1.0


@dataclass
class DataSetup:
    """The dataset a run trains on."""

    labels: list[str]
    train: VideoDataset
    val: VideoDataset
    fingerprint: str


# --- processes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def start(cls) -> Processes:
        """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPU)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if world_size == 1:
            return cls(device=device)
        if cuda:
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if cuda else "gloo")
        return cls(torch_dist.get_rank(), world_size, device)

    def stop(self) -> None:
        if self.distributed and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return tensor.tolist()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel when there are several processes (its trainable parameters
        at the time of the call are the ones it averages)."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(values, value)
        return values

    def check_in_sync(self, model: nn.Module) -> list[str]:
        """The parameter hash of every process; an error if they differ (under DDP they must not)."""
        digests = self.gather(parameters_sha256(model))
        if len(set(digests)) != 1:
            raise RuntimeError(f"the processes' weights diverged: parameter hashes {digests}")
        return digests


def parameters_sha256(model: nn.Module) -> str:
    """sha256 of every parameter's name and value."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode() + parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's generators (CPU and GPUs) for one epoch of one process."""
    torch.manual_seed(hash((seed, epoch, rank)) % 2**63)


# --- data and model ---------------------------------------------------------------------------------------------


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


def git_commit() -> str | None:
    """The source tree's commit (with ``+dirty`` for uncommitted changes); None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# --- optimiser and schedule ---------------------------------------------------------------------------------------


def make_optimizer(phase: Phase, config: TrainConfig) -> torch.optim.SGD:
    """SGD over the phase's parameters, which alone keep ``requires_grad``; no decay on 1-D tensors. A group's
    ``lr_scale`` multiplies the scheduled rate (``train_epoch``)."""
    trained = {id(p) for p in (phase.objective.parameters() if phase.trained is None else phase.trained)}
    exempt = {id(p) for p in phase.no_decay}
    scaled = {id(p) for p in phase.scaled}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for parameter in phase.objective.parameters():
        parameter.requires_grad_(id(parameter) in trained)
        if parameter.requires_grad:
            decays = parameter.ndim > 1 and id(parameter) not in exempt
            groups.setdefault((decays, phase.lr_scale if id(parameter) in scaled else 1.0), []).append(parameter)
    return torch.optim.SGD(
        [
            {"params": params, "weight_decay": config.weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), params in groups.items()
        ],
        lr=phase.lr,
        momentum=config.momentum,
    )


@dataclass(frozen=True)
class Schedule:
    """Learning-rate factor of every step of a phase: linear warm-up, then cosine to 0 or steps of ×0.1."""

    kind: str
    total_steps: int
    warmup_steps: int = 0
    milestone_steps: tuple[int, ...] = ()

    @classmethod
    def for_phase(cls, config: TrainConfig, epochs: int, steps_per_epoch: int) -> Schedule:
        milestones = config.milestones or (round(0.4 * epochs), round(0.8 * epochs))
        return cls(
            kind=config.schedule,
            total_steps=max(epochs * steps_per_epoch, 1),
            warmup_steps=round(config.lr_warmup_epochs * steps_per_epoch),
            milestone_steps=tuple(epoch * steps_per_epoch for epoch in milestones),
        )

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "step":
            return 0.1 ** sum(step >= milestone for milestone in self.milestone_steps)
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))


# --- logs and resume state ------------------------------------------------------------------------------------


@dataclass
class RunLog:
    """The run directory: config, metrics CSV, TensorBoard scalars and resume state (process 0 writes)."""

    directory: Path
    writes: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    _board: Any = None

    def start(self, config: TrainConfig) -> None:
        if not self.writes:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_json("config.json", config.to_dict())
        from torch.utils.tensorboard import SummaryWriter

        self._board = SummaryWriter(str(self.directory / "tensorboard"))

    def step(self, tag: str, value: float, step: int) -> None:
        if self._board is not None:
            self._board.add_scalar(tag, value, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Record an epoch's numbers: a CSV row (rewritten with every column seen) and TensorBoard scalars."""
        self.history.append(row)
        if not self.writes:
            return
        columns = list(dict.fromkeys(key for entry in self.history for key in entry))
        with (self.directory / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows({key: _csv_value(value) for key, value in entry.items()} for entry in self.history)
        for key, value in row.items():
            if isinstance(value, float | int) and key != "epoch":
                self._board.add_scalar(f"epoch/{key}", value, row["epoch"])
        self._board.flush()

    def write_json(self, name: str, value: Any) -> None:
        if self.writes:
            (self.directory / name).write_text(json.dumps(value, indent=2) + "\n")

    def close(self) -> None:
        if self._board is not None:
            self._board.close()

    @property
    def resume_dir(self) -> Path:
        return self.directory / "resume"

    def save_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, phase: str) -> None:
        """The state after ``epoch`` epochs (all phases counted), in a new directory made current last."""
        if not self.writes:
            return
        state_dir = self.resume_dir / f"epoch-{epoch:04d}"
        state_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, str(state_dir / "model.safetensors"))
        tensors, optimizer_rest = split_optimizer_state(optimizer.state_dict())
        save_file(tensors, str(state_dir / "optimizer.safetensors"))
        state = {"epoch": epoch, "phase": phase, "optimizer": optimizer_rest, "history": self.history}
        (state_dir / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        latest = self.resume_dir / "latest"
        (self.resume_dir / "latest.tmp").write_text(state_dir.name + "\n")
        os.replace(self.resume_dir / "latest.tmp", latest)
        for old in self.resume_dir.glob("epoch-*"):
            if old != state_dir:
                shutil.rmtree(old)

    def load_state(self, model: nn.Module) -> dict[str, Any]:
        """Load the latest state's weights into ``model``; returns its state.json (epoch, phase, history)."""
        latest = self.resume_dir / "latest"
        if not latest.is_file():
            raise ConfigError(f"{self.directory}: nothing to resume (no {latest})")
        state_dir = self.resume_dir / latest.read_text().strip()
        load_model(model, str(state_dir / "model.safetensors"))
        state = json.loads((state_dir / "state.json").read_text())
        state["optimizer"] = join_optimizer_state(load_file(state_dir / "optimizer.safetensors"), state["optimizer"])
        self.history = state["history"]
        return state


def _csv_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state_dict as safetensors tensors ("<param id>/<key>") and JSON-ready rest."""
    tensors, rest = {}, {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}/{key}"] = value.contiguous()
            else:
                rest.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "values": rest}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``split_optimizer_state``."""
    state: dict[int, dict[str, Any]] = {int(param_id): dict(values) for param_id, values in rest["values"].items()}
    for name, tensor in tensors.items():
        param_id, key = name.split("/", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    return {"state": state, "param_groups": rest["param_groups"]}


# --- the epoch loop -------------------------------------------------------------------------------------------


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
    processes = Processes.start()
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
        self.phases = objective_phases(self.model, config, len(self.data.train))
        self.model.to(processes.device)
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
            tqdm.write(" ".join(f"{key}={_csv_value(value)}" for key, value in row.items()))
        self.log.save_state(self.model, optimizer, epoch + 1, phase.name)
        return evaluation


def objective_phases(model: VideoClassifier, config: TrainConfig, train_clips: int) -> list[Phase]:
    """The phases of the model's objective: its family picks the training script."""
    from models.fusion import FusionTemplate

    if model.family in ("adafuse", "ada3d"):
        script = f"training.train_{model.family}"
    elif isinstance(model, FusionTemplate):
        script = "training.train_fusion"
    else:
        script = "training.train_classifier"
    return importlib.import_module(script).phases(model, config, train_clips)
