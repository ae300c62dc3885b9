"""Optimiser and learning-rate schedule.

Choices, from the TSM and PySlowFast code bases where the papers are silent:

* SGD with momentum 0.9; weight decay on conv and linear weights only, not on norm layers, biases or
  learnable rates (PySlowFast's ``BN.WEIGHT_DECAY = 0``); gradients clipped to norm 20 (TSM's
  ``--clip-gradient``).
* The learning rate changes every step: an optional linear warm-up, then a half cosine to 0 (PySlowFast) or
  steps of ×0.1 at 40% and 80% of the phase unless milestones are given (TSM: epochs 20 and 40 of 50).
* ``--batch-size`` is per process, as in torchvision's references; the learning rate is not rescaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from clipwise.training.config import TrainConfig
from clipwise.training.phase import Phase


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
