"""Static families (TSN, TSM, I3D, Slow-only, X3D, E3D, CT-Net, fixed fusion strategies): cross-entropy.

One phase of ``--epochs`` epochs: SGD with momentum, a cosine or step schedule with optional warm-up (the
shared recipe in ``clipwise.training.optim``). TSM trains with the step schedule (lr 0.01 for batch 64, ×0.1 at
epochs 20 and 40 of 50), PySlowFast with the cosine one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.base import VideoClassifier
from clipwise.training.config import TrainConfig
from clipwise.training.phase import Phase, StepOutput


class CrossEntropy(nn.Module):
    """The mean cross-entropy of the model's logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self.model(clips)
        return StepOutput(F.cross_entropy(logits, labels), logits)


def phases(model: VideoClassifier, config: TrainConfig, train_clips: int) -> list[Phase]:
    return [Phase("train", config.epochs, CrossEntropy(model), config.lr)]
