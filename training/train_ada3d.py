"""Ada3D (seed 002, Alg. 1): a pretrained 3D network, a selection net trained by REINFORCE, then both jointly.

Phases:

1. ``backbone`` (``--epochs``): the I3D / Slow-only backbone alone, cross-entropy with every frame and 3D
   stage (Alg. 1, line 1: "obtain a pretrained video classifier"). Skipped when ``--init`` names a version
   directory: a trained or imported version of the backbone preset (its weights load into ``backbone``) — or of
   this Ada3D. An ImageNet MobileNetV2 (``--init FILE --init-source torchvision``) starts the selection net.
2. ``policy`` (``--policy-epochs``, E1): the selection net alone, backbone frozen (weights and batch-norm
   statistics). Per clip, frame actions u and stage actions v are drawn from the Bernoulli policies, the
   backbone runs under them, and each action set is scored by Eq. 4: R = 1 − O if the prediction is right,
   −γ if not (``--gamma``), O(u) = kept frames / T, O(v) = (3D stages on / K)². The loss is the negative of
   Eq. 7's REINFORCE estimate with a baseline: −mean[(R(u) − b(u))·log π^f(u) + (R(v) − b(v))·log π^c(v)].
3. ``joint`` (``--joint-epochs``, E2): Eq. 8, the backbone's cross-entropy under the sampled actions plus
   the same policy loss, every parameter trained.

Choices where the paper is silent: the baseline b is the mean reward of the other clips of the batch
(leave-one-out, so a clip's own reward does not bias its gradient); both policy stages use ``--policy-lr``,
by default the paper's 1e-4 (for batch 256, after 3D networks fine-tuned at 0.01; the joint stage uses "the
same learning rate"); the selection net's MobileNetV2 starts from its initialisation unless ``--init`` gives
ImageNet weights (the paper pre-trains it on the dataset). The paper does not give γ; 1 is the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipwise.models.ada3d import Ada3D, ada3d_rewards
from clipwise.training.config import TrainConfig
from clipwise.training.phase import Phase, StepOutput
from clipwise.training.train_classifier import CrossEntropy


def leave_one_out_baseline(rewards: torch.Tensor) -> torch.Tensor:
    """Per clip, the mean reward of the other clips of the batch (0 for a batch of one)."""
    count = rewards.numel()
    if count == 1:
        return torch.zeros_like(rewards)
    return (rewards.sum() - rewards) / (count - 1)


class Reinforce(nn.Module):
    """The policy-gradient loss of sampled frame and stage actions (Eq. 7); with ``joint``, plus Eq. 8's
    cross-entropy of the backbone under those actions."""

    def __init__(self, model: Ada3D, gamma: float, joint: bool) -> None:
        super().__init__()
        self.model = model
        self.gamma = gamma
        self.joint = joint

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        selection = self.model.select(clips)
        actions = selection.sample()
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            logits = self.model.run_backbone(clips, actions.plans())
        frame_reward, stage_reward = ada3d_rewards(logits.argmax(dim=1) == labels, actions, self.gamma)
        frame_log_prob, stage_log_prob = selection.log_prob(actions)
        policy_loss = -(
            (frame_reward - leave_one_out_baseline(frame_reward)) * frame_log_prob
            + (stage_reward - leave_one_out_baseline(stage_reward)) * stage_log_prob
        ).mean()
        stats = {
            "reward": (frame_reward + stage_reward).mean(),
            "frame_fraction": actions.frames.float().mean(),
            "stage_fraction": actions.stages.float().mean(),
        }
        if not self.joint:
            return StepOutput(policy_loss, logits, stats)
        cross_entropy = F.cross_entropy(logits, labels)
        return StepOutput(cross_entropy + policy_loss, logits, {**stats, "cross_entropy": cross_entropy.detach()})


def phases(model: Ada3D, config: TrainConfig, train_clips: int) -> list[Phase]:
    backbone_epochs = 0 if any(path.is_dir() for path in config.init) else config.epochs
    return [
        Phase("backbone", backbone_epochs, CrossEntropy(model.backbone), config.lr),
        Phase(
            "policy",
            config.policy_epochs,
            Reinforce(model, config.gamma, joint=False),
            config.policy_lr,
            trained=list(model.selection.parameters()),
            frozen=[model.backbone],
        ),
        Phase("joint", config.joint_epochs, Reinforce(model, config.gamma, joint=True), config.policy_lr),
    ]
