"""What ``torch.onnx.export`` traces for each kind of policy (``Capabilities.policy``): a module from clips to
logits and policy tensors.

* ``"none"`` (TSN, TSM, CT-Net, I3D, Slow-only, X3D / E3D, fusion): the model itself; batch size is a dynamic
  axis.
* ``"gated_pairs"`` (AdaFuse): the model with its gated blocks executing ``clipwise.export.ops.gated_conv_pair``
  (one ``clipwise::GatedConvPair`` node per block), through ``clipwise.models.adafuse.executing_gated_pairs``.
  Outputs: logits, then one (N, T, C) int64 tensor of keep / reuse / skip codes per gated block, in execution
  order. Exported inside ``full_compute`` the pairs are plain convolutions (the dense reference of benchmarks).
* ``"clip_plans"`` (Ada3D): one clip at a time (``per_clip``): the selection net, its greedy actions (or a fixed
  plan), ``clipwise::SelectFrames`` on the kept frames, and a backbone whose temporal convs in switchable stages
  are ``clipwise::SwitchableConv3d`` nodes reading their stage's flag. Outputs: logits (1, K), kept frames
  (1, T) and 3D stages on (1, S), booleans; ``clipwise.export.clip_loop`` runs it in a Loop over the batch,
  since clips with different plans have different shapes.

The output names are the contract with ``clipwise.export.decoding``, which turns the policy tensors into executed
GFLOPs and ``clipwise.models.policy`` records.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from clipwise.export import ops
from clipwise.models.ada3d import Actions, Plan, Selection
from clipwise.models.adafuse import KEEP, executing_gated_pairs
from clipwise.models.base import VideoClassifier
from clipwise.models.resnet3d import is_temporal

LOGITS = "logits"
FRAMES_KEPT, STAGES_3D = "frames_kept", "stages_3d"


def codes_name(block: int) -> str:
    return f"codes.{block}"


@dataclass
class GraphSpec:
    """A module to trace and the names of its outputs (logits first, then policy tensors)."""

    module: nn.Module
    output_names: list[str]
    per_clip: bool = False  # traced on one clip; the exported graph loops over the batch


class GatedPairGraph(nn.Module):
    """A gated-pair model's logits and every gated block's (N, T, C) decision codes, pairs as clipwise nodes."""

    def __init__(self, model: VideoClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, ...]:
        codes: list[torch.Tensor] = []
        frames = clips.shape[2]

        def as_node(x, block_codes, first, second, **epilogue):
            out = ops.gated_conv_pair(x, block_codes, first, second, **epilogue)
            if block_codes is None:  # full compute: the pair ran as plain convolutions, every channel kept
                per_frame = torch.zeros_like(x[:, 0, 0, 0], dtype=torch.long) + KEEP  # (N·T,), batch traced
                block_codes = per_frame.view(-1, frames, 1).expand(-1, -1, first.weight.shape[0])
            codes.append(block_codes)
            return out

        with executing_gated_pairs(as_node):
            logits = self.model(clips)
        return (logits, *codes)


class StageSwitch:
    """The 3D flag of one switchable stage during a traced forward pass (a boolean scalar tensor)."""

    def __init__(self) -> None:
        self.flag: torch.Tensor | None = None


class SwitchedConv3d(nn.Module):
    """A temporal conv of a switchable stage: whole kernel or centre slice, as its stage's switch says."""

    def __init__(self, conv: nn.Conv3d, switch: StageSwitch) -> None:
        super().__init__()
        self.conv = conv
        self.switch = switch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.switchable_conv3d(x, self.conv, self.switch.flag)


class ClipPlanGraph(nn.Module):
    """A clip-plan model on one clip: logits (1, K), frames kept (1, T), 3D stages on (1, S).

    A copy of the backbone has each temporal conv of a switchable stage replaced by a ``SwitchedConv3d``;
    the model passed in is left as it is. ``plan`` fixes the actions (benchmarks); by default they are the
    selection net's greedy ones.
    """

    def __init__(self, model: VideoClassifier, plan: Plan | None = None) -> None:
        super().__init__()
        self.selection = model.selection
        self.backbone = copy.deepcopy(model.backbone)
        self.switches = [StageSwitch() for _ in self.backbone.switchable_stages]
        trunk = self.backbone.trunk
        for index, switch in zip(self.backbone.switchable_stages, self.switches, strict=True):
            stage = trunk[index]
            for name in [name for name, module in stage.named_modules() if is_temporal(module)]:
                parent, _, attribute = name.rpartition(".")
                holder = stage.get_submodule(parent)
                setattr(holder, attribute, SwitchedConv3d(getattr(holder, attribute), switch))
        self.plan = plan
        if plan is not None:
            frames = torch.zeros(1, model.config.frames, dtype=torch.bool)
            frames[0, list(plan.frames)] = True
            self.register_buffer("plan_frames", frames)
            self.register_buffer("plan_stages", torch.tensor([plan.stages_3d]))

    def actions(self, clip: torch.Tensor) -> Actions:
        """The greedy actions of the selection net, or the fixed plan's. A fixed plan is made to depend on the
        selection net's output (``plan | (greedy & plan)``) so that the net still runs, as in the torch model."""
        greedy = Selection(*self.selection(clip)).greedy()
        if self.plan is None:
            return greedy
        return Actions(
            self.plan_frames | (greedy.frames & self.plan_frames), self.plan_stages | (greedy.stages & self.plan_stages)
        )

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        actions = self.actions(clip)
        for switch, flag in zip(self.switches, actions.stages[0], strict=True):
            switch.flag = flag
        logits = self.backbone(ops.select_frames(clip, actions.frames))
        return logits, actions.frames, actions.stages


def graph_spec(model: VideoClassifier, plan: Plan | None = None) -> GraphSpec:
    """The module ``torch.onnx.export`` traces for ``model`` (in eval mode, as the exporter leaves it) and its
    output names."""
    model.eval()
    policy = model.capabilities.policy
    if policy == "gated_pairs":
        blocks = len(model.gated_blocks())
        return GraphSpec(GatedPairGraph(model).eval(), [LOGITS, *map(codes_name, range(blocks))])
    if policy == "clip_plans":
        graph = ClipPlanGraph(model, plan or model.forced_plan()).eval()
        return GraphSpec(graph, [LOGITS, FRAMES_KEPT, STAGES_3D], per_clip=True)
    return GraphSpec(model, [LOGITS])
