"""Ada3D (Li et al., 2021): a selection net picks, per clip, the frames and the 3D stages a 3D network uses.

* Selection net: MobileNetV2 (``clipwise.models.mobilenet``) on every frame resized to 112² (0.081 GMACs a frame at
  width 1.0, the paper's 0.08), features averaged over frames, two linear heads with sigmoids: one
  probability per frame (T) and one per switchable 3D stage (K: 5 on I3D-R50, stem and res2..res5; 2 on
  Slow-only-R50, res4 and res5). The backbones are ``clipwise.models.resnet3d``'s PySlowFast I3D / Slow-only.
  Small backbones take a selection net sized to them (``MotionCNN``, the ``_tiny`` presets): MobileNetV2's 52
  layers would take longer than the backbone they select for.
* Inference is greedy (probability ≥ 0.5). Dropped frames are removed: the backbone runs on the kept ones
  only, which it can since nothing in it strides or pools in time. A stage turned off runs every temporal
  kernel as its centre slice, a real 1×k×k conv. If no frame reaches 0.5 the most probable one is kept.
  Clips with the same policy run as one batch; each group's MACs are counted apart and go to its clips, so
  the executed figure of a clip is the selection net plus the backbone exactly as it ran for that clip.
* Training (REINFORCE, Eqs. 2–7): ``Selection.sample`` draws the Bernoulli actions, ``Selection.log_prob``
  gives log π^f(u) and log π^c(v), ``run_backbone`` runs the backbone under any actions (differentiable for
  the joint fine-tuning of Eq. 8), and ``ada3d_rewards`` gives R(u) and R(v) of Eq. 4: the paper scores
  the frame and the stage actions with separate rewards, O(u) = kept frames / T and O(v) = (3D stages on /
  K)², summed only in the objective (Eq. 5). ``forward`` and ``forward_with_policy`` are greedy in both
  train and eval mode; a training loop calls ``select``, ``Selection.sample`` and ``run_backbone`` itself.

Choices where the paper is silent: the frame resize is bilinear without antialiasing; a sampled frame
action that keeps nothing keeps the most probable frame, and its log-probability is that of the action
executed; the heads start at N(0, 0.01) weights and zero biases (probabilities near 0.5), MobileNetV2 as
torchvision initialises it; ``force_saving`` keeps evenly spaced frames (the centre of each of f equal
segments). The full-compute figure counts the selection net (8 frames at 112²: 0.65 G) on top of the
backbone's (I3D-R50 58.6 G at 8×256², the paper's "Upper"), since a deployed Ada3D always runs both.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipwise.models.base import Capabilities, ClipModelConfig, Preprocessing, VideoClassifier, forced_on, forcing
from clipwise.models.flops import is_tracking, record_macs, track_macs
from clipwise.models.mobilenet import MobileNetV2Features
from clipwise.models.policy import Ada3DPolicy
from clipwise.models.registry import create_model, register_preset
from clipwise.models.resnet3d import ResNet3D, centre_slice_copy


@dataclass
class Ada3DConfig(ClipModelConfig):
    """An Ada3D on a registered I3D / Slow-only preset, with its MobileNetV2 selection net."""

    num_classes: int = 200
    size: int = 256
    backbone: str = "i3d_r50"  # a models.resnet3d preset; num_classes, frames and size are passed to it
    backbone_args: dict[str, Any] = field(default_factory=dict)  # other fields of the backbone preset's config
    selection_net: str = "mobilenet_v2"  # the paper's MobileNetV2, or "motion_cnn" (``MotionCNN``, small backbones)
    selection_width: float = 1.0  # the selection net's width multiplier
    selection_size: int = 112  # frames are resized to this square before the selection net
    sample_stride: int = 8  # the backbone's dense sampling stride


@dataclass(frozen=True)
class Plan:
    """What the backbone runs for one clip: the frames kept (indices) and which switchable stages stay 3D."""

    frames: tuple[int, ...]
    stages_3d: tuple[bool, ...]

    def policy(self, total_frames: int, gflops: float) -> Ada3DPolicy:
        return Ada3DPolicy(
            frames_kept=list(self.frames),
            stages_3d=list(self.stages_3d),
            frame_fraction=len(self.frames) / total_frames,
            stage_fraction=sum(self.stages_3d) / len(self.stages_3d),
            gflops=gflops,
        )


@dataclass
class Actions:
    """Binary actions of a batch: frames kept u (N, T) and 3D stages on v (N, K), as bool tensors."""

    frames: Tensor
    stages: Tensor

    def plans(self) -> list[Plan]:
        frames, stages = self.frames.cpu().tolist(), self.stages.cpu().tolist()
        return [
            Plan(tuple(index for index, kept in enumerate(row) if kept), tuple(on))
            for row, on in zip(frames, stages, strict=True)
        ]


def _keep_at_least_one_frame(frames: Tensor, frame_logits: Tensor) -> Tensor:
    """``frames`` with the most probable frame switched on in every row that keeps none."""
    most_probable = F.one_hot(frame_logits.argmax(dim=1), frames.shape[1]).bool()
    empty = ~frames.any(dim=1, keepdim=True)
    return frames | (most_probable & empty)


@dataclass
class Selection:
    """The selection net's output for a batch: logits of keeping each frame (N, T) and each 3D stage (N, K)."""

    frame_logits: Tensor
    stage_logits: Tensor

    @property
    def frame_probs(self) -> Tensor:
        """m of Eq. 1: probability of keeping each frame."""
        return torch.sigmoid(self.frame_logits)

    @property
    def stage_probs(self) -> Tensor:
        """n of Eq. 1: probability of keeping each switchable stage 3D."""
        return torch.sigmoid(self.stage_logits)

    def greedy(self) -> Actions:
        """Inference: keep what has probability ≥ 0.5 (and at least one frame)."""
        frames = _keep_at_least_one_frame(self.frame_probs >= 0.5, self.frame_logits)
        return Actions(frames, self.stage_probs >= 0.5)

    def sample(self, generator: torch.Generator | None = None) -> Actions:
        """Training: actions drawn from the Bernoulli policies of Eqs. 2–3 (at least one frame kept)."""
        frames = torch.bernoulli(self.frame_probs.detach(), generator=generator).bool()
        stages = torch.bernoulli(self.stage_probs.detach(), generator=generator).bool()
        return Actions(_keep_at_least_one_frame(frames, self.frame_logits), stages)

    def log_prob(self, actions: Actions) -> tuple[Tensor, Tensor]:
        """log π^f(u | V) and log π^c(v | V) per clip (Eqs. 2–3), differentiable in the logits."""
        return _bernoulli_log_prob(self.frame_logits, actions.frames), _bernoulli_log_prob(
            self.stage_logits, actions.stages
        )


def _bernoulli_log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    return -F.binary_cross_entropy_with_logits(logits, actions.to(logits.dtype), reduction="none").sum(dim=1)


def ada3d_rewards(correct: Tensor, actions: Actions, gamma: float) -> tuple[Tensor, Tensor]:
    """Eq. 4 for the frame and the stage actions of each clip: 1 − O(x) if the prediction is correct, −γ if not,
    with O(u) = kept frames / T and O(v) = (3D stages on / K)². Returns (R(u), R(v)), each of shape (N,)."""
    frame_cost = actions.frames.float().mean(dim=1)
    stage_cost = actions.stages.float().mean(dim=1) ** 2
    penalty = torch.full_like(frame_cost, -gamma)
    return torch.where(correct, 1 - frame_cost, penalty), torch.where(correct, 1 - stage_cost, penalty)


class MotionCNN(nn.Module):
    """A selection net's trunk sized for small backbones: three 3×3 stride-2 conv-BN-ReLU layers per frame
    (16, 32, 64 channels × ``width_mult``), pooled. Its clip descriptor (``clip_features``) adds, to the mean of
    the frames' features, the mean absolute change between consecutive frames': what tells a still scene from
    motion, the decision Ada3D's policy has to make, at a cost of a few layers instead of MobileNetV2's 52."""

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        widths = [max(8, round(base * width_mult)) for base in (16, 32, 64)]
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip([3, *widths], widths, strict=False):
            layers += [nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(out_channels)]
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.descriptor_size = 2 * widths[-1]

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)

    @staticmethod
    def clip_features(frames: Tensor) -> Tensor:
        """(N, T, D) per-frame features → (N, 2D): their mean, and the mean |change| from frame to frame."""
        if frames.shape[1] == 1:
            return torch.cat([frames[:, 0], torch.zeros_like(frames[:, 0])], dim=1)
        change = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=1)
        return torch.cat([frames.mean(dim=1), change], dim=1)


class PaperFeatures(MobileNetV2Features):
    """The paper's selection trunk: MobileNetV2, its frames' features averaged."""

    @property
    def descriptor_size(self) -> int:
        return self.out_channels

    @staticmethod
    def clip_features(frames: Tensor) -> Tensor:
        return frames.mean(dim=1)


SELECTION_TRUNKS: dict[str, type[MotionCNN] | type[PaperFeatures]] = {
    "mobilenet_v2": PaperFeatures,
    "motion_cnn": MotionCNN,
}


class SelectionNet(nn.Module):
    """A trunk on every frame at ``input_size``², pooled over frames, logits for T frames and K stages."""

    def __init__(self, frames: int, stages: int, trunk: str, width_mult: float, input_size: int) -> None:
        super().__init__()
        if trunk not in SELECTION_TRUNKS:
            raise ValueError(f"unknown selection net {trunk!r}: one of {sorted(SELECTION_TRUNKS)}")
        self.input_size = input_size
        self.features = SELECTION_TRUNKS[trunk](width_mult)
        self.frame_head = nn.Linear(self.features.descriptor_size, frames)
        self.stage_head = nn.Linear(self.features.descriptor_size, stages)
        for head in (self.frame_head, self.stage_head):
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def clip_features(self, clips: Tensor) -> Tensor:
        """(N, 3, T, H, W) clips → (N, D) descriptors the heads read."""
        n, c, t, h, w = clips.shape
        if t != self.frame_head.out_features:
            raise ValueError(f"the selection net decides on {self.frame_head.out_features} frames, got {t}")
        frames = clips.transpose(1, 2).reshape(n * t, c, h, w)
        if (h, w) != (self.input_size, self.input_size):
            frames = F.interpolate(frames, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        return self.features.clip_features(self.features(frames).view(n, t, -1))

    def forward(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        features = self.clip_features(clips)
        return self.frame_head(features), self.stage_head(features)


@dataclass(frozen=True)
class SavingPlan:
    """A fixed plan and the fraction of the full-compute MACs it removes."""

    plan: Plan
    saved_fraction: float


def build_backbone(config: Ada3DConfig) -> ResNet3D:
    """The registered I3D / Slow-only preset a config names, with the config's classes, frames and size."""
    backbone = create_model(
        config.backbone,
        num_classes=config.num_classes,
        frames=config.frames,
        size=config.size,
        sample_stride=config.sample_stride,
        **config.backbone_args,
    )
    if not isinstance(backbone, ResNet3D):
        raise TypeError(f"Ada3D needs a models.resnet3d backbone, {config.backbone!r} is {type(backbone).__name__}")
    return backbone


def _meta_gflops(backbone: ResNet3D, frames: int, size: int, stages_3d: tuple[bool, ...]) -> float:
    """GMACs of one clip through a meta-device backbone under fixed stage flags (shapes only)."""
    clip = torch.empty(1, 3, frames, size, size, device="meta")
    with torch.no_grad(), track_macs(1) as tracker:
        backbone(clip, stages_3d=stages_3d)
    return tracker.gflops[0]


def evenly_spaced_frames(count: int, total: int) -> tuple[int, ...]:
    """Indices of ``count`` of ``total`` frames, the centre frame of each of ``count`` equal segments."""
    return tuple((2 * index + 1) * total // (2 * count) for index in range(count))


class Ada3D(VideoClassifier):
    """A 3D ResNet whose frames and 3D stages a selection net picks per clip; only the picked ones run."""

    family = "ada3d"
    sampling = "dense"
    # Clips of a batch are grouped by their plan, which differs from clip to clip: merging requests rarely
    # makes a group larger, so requests run one by one.
    capabilities = Capabilities(policy="clip_plans", batchable=False, objective="ada3d")

    def __init__(self, config: Ada3DConfig, preset: str = "") -> None:
        super().__init__(config, preset)
        self.backbone = build_backbone(config)
        self.num_stages = len(self.backbone.switchable_stages)
        self.selection = SelectionNet(
            config.frames,
            self.num_stages,
            config.selection_net,
            config.selection_width,
            config.selection_size,
        )
        self._backbone_costs_cache: dict[tuple[int, int], dict[tuple[bool, ...], tuple[float, float]]] = {}

    # --- inference -------------------------------------------------------------------------------------------

    def select(self, clips: Tensor) -> Selection:
        """The selection net's frame and stage logits (probabilities as properties) for (N, 3, T, H, W) clips."""
        return Selection(*self.selection(clips))

    def run_backbone(self, clips: Tensor, plans: Sequence[Plan]) -> Tensor:
        """Logits of the backbone running each clip under its own plan; clips sharing a plan share a batch."""
        groups: dict[Plan, list[int]] = {}
        for index, plan in enumerate(plans):
            groups.setdefault(plan, []).append(index)
        if len(groups) == 1:
            return self._run_plan(clips, plans[0])
        order = [index for indices in groups.values() for index in indices]
        logits = torch.cat([self._run_group(clips, plan, indices) for plan, indices in groups.items()])
        return logits[torch.tensor(order, device=logits.device).argsort()]

    def _run_group(self, clips: Tensor, plan: Plan, indices: list[int]) -> Tensor:
        """Run the clips at ``indices`` under ``plan``, their MACs recorded for those clips only."""
        batch = clips[torch.tensor(indices, device=clips.device)]
        if not is_tracking():
            return self._run_plan(batch, plan)
        with track_macs(len(indices)) as group:
            logits = self._run_plan(batch, plan)
        per_clip = torch.zeros(clips.shape[0], dtype=torch.float64)
        per_clip[indices] = group.per_clip
        record_macs(per_clip)
        return logits

    def _run_plan(self, clips: Tensor, plan: Plan) -> Tensor:
        if len(plan.frames) < clips.shape[2]:
            clips = clips.index_select(2, torch.tensor(plan.frames, device=clips.device))
        return self.backbone(clips, stages_3d=plan.stages_3d)

    def _infer(self, clips: Tensor) -> tuple[Tensor, list[Plan]]:
        selection = self.select(clips)
        forced = self.forced_plan()
        plans = [forced] * clips.shape[0] if forced is not None else selection.greedy().plans()
        return self.run_backbone(clips, plans), plans

    def forward(self, clips: Tensor) -> Tensor:
        return self._infer(clips)[0]

    def forward_with_policy(self, clips: Tensor) -> tuple[Tensor, list[Ada3DPolicy]]:
        logits, plans = self._infer(clips)
        return logits, self.policies(plans, clips.shape[2], clips.shape[-1])

    def policies(self, plans: Sequence[Plan], frames: int, size: int) -> list[Ada3DPolicy]:
        """The policy records of ``plans`` on clips of ``frames`` × ``size``², each with its GMACs."""
        return [plan.policy(frames, self.plan_gflops(plan, frames, size)) for plan in plans]

    def plan_gflops(self, plan: Plan, frames: int | None = None, size: int | None = None) -> float:
        """GMACs of one clip under ``plan`` by the paper's count: the selection net on every frame, the backbone
        on the kept frames with the plan's stages 3D (counted on a meta-device twin, cached)."""
        frames, size = frames or self.config.frames, size or self.config.size
        costs = self._backbone_costs(frames, size)
        one, every = costs[plan.stages_3d]
        # Every conv of the backbone costs in proportion to the frames and its classifier does not:
        # interpolating between 1 and T frames is exact.
        backbone = one + (every - one) * (len(plan.frames) - 1) / max(frames - 1, 1)
        return self.full_gflops(frames, size) - costs[self.full_plan().stages_3d][1] + backbone

    def count_plan_costs(self, frames: int | None = None, size: int | None = None) -> None:
        """Count every plan's cost at this input size now (at load), not on the request path."""
        self._backbone_costs(frames or self.config.frames, size or self.config.size)

    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing()

    # --- fixed plans: full compute, forced savings, the static network of a plan -----------------------------

    def full_plan(self) -> Plan:
        return Plan(tuple(range(self.config.frames)), (True,) * self.num_stages)

    def full_compute(self) -> contextlib.AbstractContextManager:
        return self.follow_plan(self.full_plan())

    def force_saving(self, fraction: float) -> contextlib.AbstractContextManager:
        return self.follow_plan(self.saving_plan(fraction).plan)

    def forced_plan(self) -> Plan | None:
        """The plan this context forces (``follow_plan``, ``full_compute``, ``force_saving``), or None."""
        return forced_on(self)

    def follow_plan(self, plan: Plan) -> contextlib.AbstractContextManager:
        """Run every clip under ``plan`` inside the block (in this context only); the selection net still runs."""
        return forcing({self: plan})

    def saving_plan(self, fraction: float) -> SavingPlan:
        """The plan (evenly spaced frames, some stages 2D) whose saving of the full-compute MACs at the
        configured input is closest to ``fraction``; the selection net always runs and always counts."""
        frames, full = self.config.frames, self.full_gflops()
        plans = (
            Plan(evenly_spaced_frames(kept, frames), stages_3d)
            for kept in range(1, frames + 1)
            for stages_3d in itertools.product((True, False), repeat=self.num_stages)
        )
        candidates = (SavingPlan(plan, 1 - self.plan_gflops(plan) / full) for plan in plans)
        return min(candidates, key=lambda candidate: abs(candidate.saved_fraction - fraction))

    def random_plan(self, saving: float, seed: int = 0, tolerance: float = 0.03) -> Plan:
        """A plan drawn at random (each frame kept and each stage 3D with probabilities that vary from draw to
        draw) whose saving of the full-compute MACs is within ``tolerance`` of ``saving``: the first such draw."""
        generator = torch.Generator().manual_seed(seed)
        full, frames = self.full_gflops(), self.config.frames
        for _ in range(10_000):
            keep, on = torch.rand(2, generator=generator).tolist()
            kept = torch.rand(frames, generator=generator) < keep
            if not kept.any():
                continue
            stages = tuple((torch.rand(self.num_stages, generator=generator) < on).tolist())
            plan = Plan(tuple(kept.nonzero().flatten().tolist()), stages)
            if abs(1 - self.plan_gflops(plan) / full - saving) <= tolerance:
                return plan
        raise ValueError(f"no random plan saves {saving:.0%} within {tolerance:.0%}")

    def _backbone_costs(self, frames: int, size: int) -> dict[tuple[bool, ...], tuple[float, float]]:
        """Backbone GMACs on 1 and on ``frames`` frames of ``size``² for every setting of the switchable stages,
        counted once per input size on a meta-device twin of the backbone."""
        key = (frames, size)
        if key not in self._backbone_costs_cache:
            with torch.device("meta"):
                twin = build_backbone(self.config).eval()
            self._backbone_costs_cache[key] = {
                stages_3d: (_meta_gflops(twin, 1, size, stages_3d), _meta_gflops(twin, frames, size, stages_3d))
                for stages_3d in itertools.product((True, False), repeat=self.num_stages)
            }
        return self._backbone_costs_cache[key]

    def static_backbone(self, plan: Plan) -> ResNet3D:
        """A copy of the backbone as ``plan`` runs it: stages off hold real 1×k×k convs with the centre
        slices of the kernels. Feed it the kept frames only (reference counts, export of a fixed plan)."""
        static = copy.deepcopy(self.backbone)
        trunk = static.trunk
        for index, on in zip(static.switchable_stages, plan.stages_3d, strict=True):
            if not on:
                _replace_submodule(static, trunk[index], centre_slice_copy(trunk[index]))
        return static


def _replace_submodule(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    name = next(name for name, module in root.named_modules() if module is old)
    parent, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent), attribute, new)


def _register_presets() -> None:
    """``ada3d_i3d_r50`` and ``ada3d_slowonly_r50`` (the paper's 8-frame setting: 200 classes, 256² test
    crops, MobileNetV2 1.0 at 112²: about 1 % of the backbone's MACs) and their ``_tiny`` twins on the tiny
    backbones (8×64² clips), whose selection net is sized to them as the paper's is to I3D-R50: a ``MotionCNN``
    at 32² (the paper's half resolution), about 3 % of the tiny backbone's MACs."""
    for backbone in ("i3d_r50", "slowonly_r50"):
        paper = Ada3DConfig(backbone=backbone)
        register_preset(f"ada3d_{backbone}", Ada3D, paper)
        tiny = replace(paper, backbone=f"{backbone}_tiny", size=64, selection_net="motion_cnn", selection_size=32)
        register_preset(f"ada3d_{backbone}_tiny", Ada3D, tiny)


_register_presets()
