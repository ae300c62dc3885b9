"""The unit of every training objective: a ``Phase`` of epochs whose objective returns a ``StepOutput``.

An objective (``training/train_*.py``) is a list of phases: a number of epochs, an ``nn.Module`` that owns
the model and returns a ``StepOutput`` (loss, logits, numbers to log) for a batch, the parameters it trains
and its learning rate. ``clipwise.training.trainer`` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


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
