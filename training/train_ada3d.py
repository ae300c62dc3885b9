"""Ada3D (CVPR 2021, Alg. 1): a pretrained 3D network, a selection net trained by REINFORCE, then both jointly.

Phases:

1. ``backbone`` (``--epochs``): the I3D / Slow-only backbone alone, cross-entropy with every frame and 3D
   stage (Alg. 1, line 1: "obtain a pretrained video classifier"). Skipped when ``--init`` names a version
   directory: a trained or imported version of the backbone preset (its weights load into ``backbone``) — or of
   this Ada3D. An ImageNet MobileNetV2 (``--init FILE --init-source torchvision``) starts the selection net.
2. ``selection`` (``--selection-epochs``): the selection net alone as a classifier of the clips (its clip
   features under a linear classifier of this phase, cross-entropy), backbone frozen. The paper starts the
   policy from a selection net trained on the dataset; a policy net that already tells the classes apart can
   learn which of them need motion.
3. ``policy`` (``--policy-epochs``, E1): the selection net alone, backbone frozen (weights and batch-norm
   statistics). Per clip, frame actions u and stage actions v are drawn from the Bernoulli policies, the
   backbone runs under them, and each action set is scored by Eq. 4: R = 1 − O if the prediction is right,
   −γ if not (``--gamma``), O(u) = kept frames / T, O(v) = (3D stages on / K)². The loss is the negative of
   Eq. 7's REINFORCE estimate with a baseline, minus an entropy bonus:
   −mean[(R(u) − b(u))·log π^f(u) + (R(v) − b(v))·log π^c(v)] − β·H(π) (``--entropy-weight``).
4. ``joint`` (``--joint-epochs``, E2): Eq. 8, the backbone's cross-entropy under the sampled actions plus
   the same policy loss, every parameter trained.

Choices where the paper is silent: the baseline b of a clip is the reward of the greedy actions on the same
clip (self-critical, as BlockDrop): a sampled action set is pushed up only when it does better than what the
policy would do now, so the signal survives batches in which most clips are right (a batch-mean baseline
cancels it there). Both policy stages use ``--policy-lr``, by default the paper's 1e-4 (for batch 256, after 3D
networks fine-tuned at 0.01; the joint stage uses "the same learning rate"); the selection phase uses
``--lr``. The paper does not give γ; 1 is the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipwise.models.ada3d import Ada3D, Selection, ada3d_rewards
from clipwise.training.config import TrainConfig
from clipwise.training.phase import Phase, StepOutput
from clipwise.training.train_classifier import CrossEntropy


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of independent Bernoulli policies, summed over the actions of each clip: (N, A) → (N,)."""
    probs = torch.sigmoid(logits)
    return (F.softplus(logits) - probs * logits).sum(dim=1)


class SelectionClassifier(nn.Module):
    """The selection net's clip features under a linear classifier, cross-entropy: the selection net's
    pre-training. The classifier is the phase's own, not the model's (inference never needs it), so a run
    resumed inside this phase starts a new one on the trunk it had reached."""

    def __init__(self, model: Ada3D) -> None:
        super().__init__()
        self.model = model
        self.classifier = nn.Linear(model.selection.features.descriptor_size, model.config.num_classes)

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = self.classifier(self.model.selection.clip_features(clips))
        return StepOutput(F.cross_entropy(logits, labels), logits)


class Reinforce(nn.Module):
    """The policy-gradient loss of sampled frame and stage actions (Eq. 7) with a self-critical baseline and an
    entropy bonus; with ``joint``, plus Eq. 8's cross-entropy of the backbone under those actions."""

    def __init__(self, model: Ada3D, gamma: float, entropy_weight: float, joint: bool) -> None:
        super().__init__()
        self.model = model
        self.gamma = gamma
        self.entropy_weight = entropy_weight
        self.joint = joint

    def greedy_rewards(self, clips: torch.Tensor, labels: torch.Tensor, selection: Selection) -> tuple[Tensor, Tensor]:
        """R(u) and R(v) of the actions the policy would take now: the baseline."""
        greedy = selection.greedy()
        with torch.no_grad():
            logits = self.model.run_backbone(clips, greedy.plans())
        return ada3d_rewards(logits.argmax(dim=1) == labels, greedy, self.gamma)

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        selection = self.model.select(clips)
        actions = selection.sample()
        with torch.set_grad_enabled(self.joint and torch.is_grad_enabled()):
            logits = self.model.run_backbone(clips, actions.plans())
        frame_reward, stage_reward = ada3d_rewards(logits.argmax(dim=1) == labels, actions, self.gamma)
        frame_baseline, stage_baseline = self.greedy_rewards(clips, labels, selection)
        frame_log_prob, stage_log_prob = selection.log_prob(actions)
        entropy = bernoulli_entropy(selection.frame_logits) + bernoulli_entropy(selection.stage_logits)
        policy_loss = -(
            (frame_reward - frame_baseline) * frame_log_prob
            + (stage_reward - stage_baseline) * stage_log_prob
            + self.entropy_weight * entropy
        ).mean()
        stats = {
            "reward": (frame_reward + stage_reward).mean(),
            "advantage": (frame_reward + stage_reward - frame_baseline - stage_baseline).mean(),
            "entropy": entropy.detach().mean(),
            "frame_fraction": actions.frames.float().mean(),
            "stage_fraction": actions.stages.float().mean(),
        }
        if not self.joint:
            return StepOutput(policy_loss, logits, stats)
        cross_entropy = F.cross_entropy(logits, labels)
        return StepOutput(cross_entropy + policy_loss, logits, {**stats, "cross_entropy": cross_entropy.detach()})


def phases(model: Ada3D, config: TrainConfig, train_clips: int) -> list[Phase]:
    backbone_epochs = 0 if any(path.is_dir() for path in config.init) else config.epochs
    policy = Reinforce(model, config.gamma, config.entropy_weight, joint=False)
    joint = Reinforce(model, config.gamma, config.entropy_weight, joint=True)
    selection = list(model.selection.parameters())
    classifier = SelectionClassifier(model)
    return [
        Phase("backbone", backbone_epochs, CrossEntropy(model.backbone), config.lr),
        Phase(
            "selection",
            config.selection_epochs,
            classifier,
            config.lr,
            trained=[*selection, *classifier.classifier.parameters()],
            frozen=[model.backbone],
        ),
        Phase("policy", config.policy_epochs, policy, config.policy_lr, trained=selection, frozen=[model.backbone]),
        Phase("joint", config.joint_epochs, joint, config.policy_lr),
    ]
