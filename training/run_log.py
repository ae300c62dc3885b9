"""The run directory, written by process 0 only, and the provenance of a run.

config.json               the resolved configuration
metrics.csv               one row per epoch (phase, learning rate, train loss and accuracy, the
                          objective's numbers, validation top-1 / top-5 / executed GFLOPs, skipped files)
tensorboard/              the same as TensorBoard scalars, plus the loss of every step
resume/epoch-NNNN/        model.safetensors, optimizer.safetensors and state.json after epoch NNNN
resume/latest             the name of the newest complete state directory (written last)
processes.json            world size, backend, each process's share of the training list and the hash
                          of its final parameters
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from clipwise.training.config import ConfigError, TrainConfig


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
            writer.writerows({key: csv_value(value) for key, value in entry.items()} for entry in self.history)
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


def csv_value(value: Any) -> str:
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
