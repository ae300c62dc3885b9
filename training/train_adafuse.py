"""AdaFuse (ICLR 2021, Eq. 6): cross-entropy plus λ times the GFLOPs of the sampled policy.

One phase of ``--epochs`` epochs. In training the gated blocks draw hard Gumbel-softmax decisions with
straight-through gradients at the temperature of the model's config (τ = 0.67, the paper's), and
``model.policy_gflops()`` gives each clip's GFLOPs under those decisions by Eq. 5, differentiable in them.
The loss is mean CE + λ · mean GFLOPs (``--flops-weight``, per GFLOP as in Eq. 6; the paper uses 0.1 on
ResNet-50 models of about 33 GFLOPs, so the term weighs about 3.3 at full compute — scale λ by the ratio of
full-compute GFLOPs to keep that balance on a smaller model).

The paper's schedule: SGD, lr 0.002 ×0.1 at epochs 20 and 40 of 50 (``--schedule step``), batch 64, from
ImageNet weights; ``--init`` starts from a trained TSN / TSM version of the same backbone instead (their
weights load as they are; only the policy nets start new).

``--cost latency`` replaces the GFLOPs by the executor's predicted time of the gated pairs, as a
fraction of full compute, weighted by ``--latency-weight``: the model is calibrated on the training machine
first, and the term counts a channel used at any frame of a clip as computed for all of them (the executor's
``union``), so it rewards policies that skip the same channels across frames. ``decision_group`` in
``--model-args`` makes the policy decide per group of channels.

The execution-aware AdaFuse (``structure="prefix"``) picks one level of an ordered channel list per block per
clip; its channels are first ordered most important first (``AdaFuse.order_channels_by_importance``: the
``--init`` network's function unchanged), and ``--cost latency`` then reads the time of each level measured
when the model is calibrated here (LAUDNet's latency table).

``policy_lr_scale`` trains the policy nets at a multiple of the learning rate (the paper and the authors'
code use one rate). Inference here takes the argmax decision, where the authors' code keeps sampling; a policy
trained for few epochs stays near uniform (its FCs start at N(0, 0.001)) and its argmax is then an arbitrary
policy the network never trained under. Measured on the synthetic benchmark, AdaFuse-TSN-R18-tiny from a
trained TSN, 8 epochs at lr 0.01: the policy nets of layers 2-4 still gave keep / reuse / skip 0.33 / 0.33 /
0.34, and val top-1 was 20.5% with argmax decisions against 57% with sampled ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.adafuse import AdaFuse
from clipwise.training.config import TrainConfig
from clipwise.training.phase import Phase, StepOutput


class CrossEntropyAndCost(nn.Module):
    """Eq. 6: mean cross-entropy + ``flops_weight`` · mean GFLOPs of the policy the forward pass drew, or, with
    ``latency_weight``, + λ · the mean predicted time of the gated pairs as a fraction of full compute
    (``AdaFuse.policy_time_ratio``, the executor's calibrated cost models in place of the GFLOPs)."""

    def __init__(self, model: AdaFuse, flops_weight: float, latency_weight: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.flops_weight = flops_weight
        self.latency_weight = latency_weight

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self.model(clips)
        cross_entropy = F.cross_entropy(logits, labels)
        gflops = self.model.policy_gflops().mean()
        stats = {"cross_entropy": cross_entropy.detach(), "gflops": gflops.detach()}
        if self.latency_weight is None:
            return StepOutput(cross_entropy + self.flops_weight * gflops, logits, stats)
        time_ratio = self.model.policy_time_ratio().mean()
        stats["time_ratio"] = time_ratio.detach()
        return StepOutput(cross_entropy + self.latency_weight * time_ratio, logits, stats)


def phases(model: AdaFuse, config: TrainConfig, train_clips: int) -> list[Phase]:
    policy_nets = {id(p): p for block in model.gated_blocks() for p in block.policy.parameters()}  # FCs shared
    if model.config.structure == "prefix":
        model.order_channels_by_importance()  # the --init network's channels, most important first
    if config.cost == "latency":
        model.calibrate()  # the cost models of this machine: the latency term predicts what the executor runs
    latency_weight = config.latency_weight if config.cost == "latency" else None
    objective = CrossEntropyAndCost(model, config.flops_weight, latency_weight)
    scaled = list(policy_nets.values())
    return [Phase("train", config.epochs, objective, config.lr, scaled=scaled, lr_scale=config.policy_lr_scale)]
