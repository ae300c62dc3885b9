"""Clipwise models written in the layouts of code bases that do not install here: mmaction2, PySlowFast and
torchvision, for the import tests and ``benchmarks/imports.py``.

The renaming restates, from Clipwise's names towards the source's (the importer goes the other way), what
reading each source's model code shows (facts, not code):

* mmaction2 (``mmaction/models/backbones/resnet.py``, ``resnet3d.py``, ``resnet_tsm.py``, heads' ``fc_cls``): a
  ConvModule (``conv``, ``bn``) for each conv + BN, ``backbone.conv1``, ``backbone.layer{1..4}.{i}.conv{1..3}``,
  ``downsample``, ``cls_head.fc_cls``; TSM wraps every block's conv1 in its shift (``conv1.conv.net``).
* PySlowFast (``slowfast/models``: ``video_model_builder``, ``stem_helper``, ``resnet_helper``, ``head_helper``,
  ``operators.SE``): ``s1.pathway0_stem``, ``s{2..5}.pathway0_res{i}.{branch1, branch1_bn, branch2.*}``, ``head``;
  X3D's stem ``conv_xy`` (1×3×3) then ``conv`` (5×1×1), SE ``branch2.se.fc1/fc2``, head ``conv_5``, ``conv_5_bn``,
  ``lin_5`` (a 1×1×1 Conv3d), ``projection``.
* torchvision (``torchvision/models/resnet.py``, ``mobilenetv2.py``): a ResNet's names are those of a Clipwise TSN
  backbone (``conv1``, ``bn1``, ``layer*``, with ``fc``); MobileNetV2 ``features.{i}``, a block's layers in
  ``features.{i}.conv``, and ``classifier.1``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from clipwise.models.mobilenet import MobileNetV2Features

Rules = list[tuple[str, str | Callable[[re.Match], str]]]


def renamed(state: dict[str, torch.Tensor], rules: Rules) -> dict[str, torch.Tensor]:
    """``state`` with every rule (pattern, replacement) applied in turn to every key."""
    out = {}
    for key, tensor in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out


def mmaction2_rules(shift: bool) -> Rules:
    """Clipwise (a TSN's ``backbone.*`` / ``fc``, or ``clipwise.models.resnet3d``'s ``stem`` / ``stages`` / ``head``) →
    mmaction2."""
    return [
        (r"^stages\.(\d)\.", lambda match: f"backbone.layer{int(match[1]) + 1}."),
        (r"^(stem\.conv|backbone\.conv1)\.", "backbone.conv1.conv."),
        (r"^(stem\.bn|backbone\.bn1)\.", "backbone.conv1.bn."),
        (r"^(head\.fc|fc)\.", "cls_head.fc_cls."),
        (r"(layer\d\.\d+)\.conv1\.weight$", r"\1.conv1.conv.net.weight" if shift else r"\1.conv1.conv.weight"),
        (r"(layer\d\.\d+)\.conv([23])\.weight$", r"\1.conv\2.conv.weight"),
        (r"(layer\d\.\d+)\.bn(\d)\.", r"\1.conv\2.bn."),
        (r"\.downsample\.0\.", ".downsample.conv."),
        (r"\.downsample\.1\.", ".downsample.bn."),
    ]


def pyslowfast_rules(stem: dict[str, str], parts: dict[str, str], head: dict[str, str]) -> Rules:
    """Clipwise → PySlowFast: ``stages.{s}.{b}.{part}`` → ``s{s+2}.pathway0_res{b}.{parts[part]}``, the stem's and
    head's modules as the dicts say."""

    def block(match: re.Match) -> str:
        stage, index, part, leaf = match.groups()
        return f"s{int(stage) + 2}.pathway0_res{index}.{parts[part]}.{leaf}"

    ends = {**{f"stem.{name}": f"s1.pathway0_stem.{module}" for name, module in stem.items()}, **head}
    return [
        (r"^stages\.(\d)\.(\d+)\.(.+)\.(\w+)$", block),
        (r"^(.+)\.(\w+)$", lambda match: f"{ends.get(match[1], match[1])}.{match[2]}"),
    ]


PYSLOWFAST_RESNET = pyslowfast_rules(
    {"conv": "conv", "bn": "bn"},
    {
        **{f"conv{n}": f"branch2.{letter}" for n, letter in zip("123", "abc", strict=True)},
        **{f"bn{n}": f"branch2.{letter}_bn" for n, letter in zip("123", "abc", strict=True)},
        "downsample.0": "branch1",
        "downsample.1": "branch1_bn",
    },
    {"head.fc": "head.projection"},
)
PYSLOWFAST_X3D = pyslowfast_rules(
    {"0": "conv_xy", "1": "conv", "2": "bn"},
    {
        "expand.0": "branch2.a",
        "expand.1": "branch2.a_bn",
        "depthwise.0": "branch2.b",
        "depthwise.1": "branch2.b_bn",
        "squeeze_excite.reduce": "branch2.se.fc1",
        "squeeze_excite.expand": "branch2.se.fc2",
        "project.0": "branch2.c",
        "project.1": "branch2.c_bn",
        "shortcut.0": "branch1",
        "shortcut.1": "branch1_bn",
    },
    {
        "head.conv.0": "head.conv_5",
        "head.conv.1": "head.conv_5_bn",
        "head.hidden": "head.lin_5",
        "head.fc": "head.projection",
    },
)
TORCHVISION_MOBILENET = [(r"^layers\.(\d+)\.body\.", r"features.\1.conv."), (r"^layers\.", "features.")]


def in_layout(source: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict as ``source`` lays it out: mmaction2 (TSN / TSM, I3D / Slow-only), pyslowfast (I3D /
    Slow-only, X3D), torchvision (a TSN's backbone and classifier, or a MobileNetV2Features)."""
    state = model.state_dict()
    if source == "mmaction2":
        return renamed(state, mmaction2_rules(shift=getattr(model.config, "temporal_shift", False)))
    if source == "pyslowfast" and model.family == "x3d":
        state = renamed(state, PYSLOWFAST_X3D)
        return state | {"head.lin_5.weight": state["head.lin_5.weight"][..., None, None, None]}  # a 1x1x1 Conv3d
    if source == "pyslowfast":
        return renamed(state, PYSLOWFAST_RESNET)
    if isinstance(model, MobileNetV2Features):
        return renamed(state, TORCHVISION_MOBILENET)
    return renamed(state, [(r"^backbone\.", "")])
