"""Probabilistic spatiotemporal fusion (CVPR 2020): the v-DropPath template, warmed up without v-DropPath.

Two phases, as the paper trains the template (Sec. 4.1):

1. ``warmup`` (``--fusion-warmup-epochs``; the paper: 50): "removing all the v-DropPath operations and
   training the template network from scratch" — every layer runs S+ST with hard masks of ones, cross-entropy
   only, ordinary weight decay everywhere; the drop rates stay at their initial 0.1.
2. ``droppath`` (``--epochs``; the paper: 90): relaxed-Bernoulli masks on every path and the loss of Eq. 5,
   mean cross-entropy + ``model.regularizer(N, k)`` with N the number of training clips and k the length
   scale (``--length-scale``; the paper: 50 for UCF101 / Something-V2, 250 for Something-V1, 10 for
   Kinetics). The path convs the regulariser weighs by (1 − p)·k²/2N and the drop rates take no weight
   decay; the other weights keep it. On the path weights the prior acts like a weight decay of k²(1 − p)/N:
   the paper's k = 50 gives 0.013 on Something-V2's 169k clips and 0.24 on UCF101's 9.5k; on a small
   dataset choose k so that it stays in that range (k = 50 on a thousand clips would make it 2.2).

The paper decays the learning rate ×0.1 at epochs 40, 60 and 80 of 90 (``--schedule step --milestones``).
After training, ``clipwise export fusion`` samples and ranks strategies from the learned rates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.fusion import PATHS, FusionTemplate
from clipwise.training.config import TrainConfig
from clipwise.training.phase import Phase, StepOutput


class WithoutDropPath(nn.Module):
    """Cross-entropy of the template running every path unmasked."""

    def __init__(self, model: FusionTemplate) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        with self.model.use_strategy("S+ST"):
            logits = self.model(clips)
        return StepOutput(F.cross_entropy(logits, labels), logits)


class VariationalDropPath(nn.Module):
    """Eq. 5: cross-entropy under relaxed-Bernoulli path masks plus the prior on weights and drop rates."""

    def __init__(self, model: FusionTemplate, train_clips: int, length_scale: float) -> None:
        super().__init__()
        self.model = model
        self.train_clips = train_clips
        self.length_scale = length_scale

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self.model(clips)
        cross_entropy = F.cross_entropy(logits, labels)
        prior = self.model.regularizer(self.train_clips, self.length_scale)
        rates = self.model.drop_rates().detach().mean(dim=0)
        stats = {"cross_entropy": cross_entropy.detach(), "prior": prior.detach()}
        stats.update({f"drop_rate_{path}": rate for path, rate in zip(PATHS, rates, strict=True)})
        return StepOutput(cross_entropy + prior, logits, stats)


def phases(model: FusionTemplate, config: TrainConfig, train_clips: int) -> list[Phase]:
    rates = [model.drop_logits]
    without_rates = [p for p in model.parameters() if p is not model.drop_logits]
    path_weights = [layer.mix.paths[path].conv.weight for layer in model.layers for path in PATHS]
    return [
        Phase("warmup", config.fusion_warmup_epochs, WithoutDropPath(model), config.lr, trained=without_rates),
        Phase(
            "droppath",
            config.epochs,
            VariationalDropPath(model, train_clips, config.length_scale),
            config.lr,
            no_decay=rates + path_weights,
        ),
    ]
