"""Where each source keeps each tensor: Clipwise's modules by role, and one naming function per source.

A role names a parameterised module independently of any code base. ResNets (TSN / TSM backbones and
``clipwise.models.resnet3d``) use ``clipwise.models.resnet3d``'s names: ``stem.conv``, ``stem.bn``,
``stages.{s}.{b}.{part}`` (s = 0
for res2; parts ``conv1``..``conv3``, ``bn1``..``bn3``, ``downsample.0`` / ``downsample.1``) and ``head.fc``. X3D
uses ``clipwise.models.x3d``'s names, MobileNetV2 ``clipwise.models.mobilenet``'s (``layers.{i}...``). A module's role
is its name
inside the nearest enclosing network of one of these kinds, translated for TSN; modules outside them (Ada3D's
selection heads, AdaFuse's policy nets) have roles no source names.

A layout maps a role and the Clipwise network it is in (some names depend on its config) to the source's
module name, or None where the source has no such module. The layouts below come from reading each source's
model code (facts, not code):

* PyTorchVideo 0.1.5 (``pytorchvideo.models.resnet`` / ``x3d``, hub ``.pyth`` files): ``blocks.0`` stem (X3D:
  ``conv.conv_t`` is the 1×3×3 conv and ``conv.conv_xy`` the 5×1×1 one), ``blocks.{1..4}.res_blocks.{i}`` with
  ``branch1_conv`` / ``branch1_norm`` and ``branch2.{conv,norm}_{a,b,c}`` (X3D: BN and SE in ``norm_b.0`` /
  ``norm_b.1.block.{0,2}``), the head last (``proj``; X3D ``pool.{pre_conv, pre_norm, post_conv}``); an I3D's
  2×1×1 max pool after res2 is ``blocks.2``, so res3.. and the head move up one.
* PySlowFast (``slowfast/models``: ``video_model_builder``, ``stem_helper``, ``resnet_helper``, ``head_helper``,
  ``operators.SE``): ``s1.pathway0_stem.{conv, bn}`` (X3D: ``conv_xy`` 1×3×3, ``conv`` 5×1×1),
  ``s{2..5}.pathway0_res{i}.{branch1, branch1_bn, branch2.{a, a_bn, b, b_bn, c, c_bn}}`` (X3D:
  ``branch2.se.{fc1, fc2}``), ``head.projection`` (X3D: ``head.{conv_5, conv_5_bn, lin_5}``).
* mmaction2 (``mmaction/models/backbones/resnet.py``, ``resnet3d.py``, ``resnet_tsm.py``; heads ``fc_cls``):
  ``backbone.conv1.{conv, bn}``, ``backbone.layer{1..4}.{i}.conv{1..3}.{conv, bn}``, ``.downsample.{conv, bn}``;
  TSM wraps every block's first conv in its shift: ``conv1.conv.net``; ``cls_head.fc_cls``.
* torchvision (``torchvision/models/resnet.py``, ``mobilenetv2.py``): ResNet ``conv1``, ``bn1``,
  ``layer{1..4}.{i}.{conv, bn}{n}``, ``downsample.{0, 1}``, ``fc``; MobileNetV2 ``features.{i}`` (a block's layers
  in ``features.{i}.conv``), ``classifier.1``.
* the AdaFuse authors (``mengyuest/AdaFuse``: ``ops/batenet.py``, ``ops/models_gate.py``, ``main_gate.py``): the
  state dict of a ``DataParallel(TSN_Gate)``, so every name begins ``module.``; the ResNet is
  ``module.base_model`` with torchvision's names except ``downsample0`` (conv) / ``downsample1`` (BN); a gated
  block's policy net is ``policy_net.gate_fc0`` (FC), ``gate_bn`` (BatchNorm1d), ``gate_fc1`` (FC); the classifier
  is ``module.new_fc`` (``base_model.fc`` is replaced by a dropout: no tensors). With ``--shared_policy_net`` the
  FCs are also stored once more as ``module.base_model.gate_fc0s.<in>_<out>`` / ``gate_fc1s.<in>_<out>`` (<in>:
  twice the block input's channels, <out>: three logits per conv1 channel); ``clipwise.models.imports.sources``
  checks those copies.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from clipwise.models.adafuse import AdaFuse
from clipwise.models.mobilenet import MobileNetV2Features
from clipwise.models.resnet3d import ResNet3D
from clipwise.models.tsn import TSN
from clipwise.models.x3d import X3D

Layout = Callable[[str, nn.Module], str | None]
"""(role, the network of ``NETWORKS`` it is in) → the source's module name, or None: no such module there."""

NETWORKS = (TSN, ResNet3D, X3D, MobileNetV2Features)  # the modules whose names roles are made of
_TSN_STEM = {"backbone.conv1": "stem.conv", "backbone.bn1": "stem.bn", "fc": "head.fc"}
_TSN_BLOCK = re.compile(r"backbone\.layer(?P<stage>\d)\.(?P<rest>.+)")
_BLOCK = re.compile(r"stages\.(?P<stage>\d+)\.(?P<block>\d+)\.(?P<part>.+)")


def roles(model: nn.Module) -> dict[str, tuple[str, nn.Module] | None]:
    """The role of every module of ``model`` that holds tensors, with the network it is in (module name → (role,
    network)); None outside the networks."""
    networks = sorted(
        ((name, module) for name, module in model.named_modules() if isinstance(module, NETWORKS)),
        key=lambda item: -len(item[0]),
    )
    holders = {key.rpartition(".")[0] for key in model.state_dict()}
    return {holder: _role(holder, networks) for holder in holders}


def _role(holder: str, networks: list[tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    for prefix, network in networks:  # the innermost first
        if prefix and not holder.startswith(prefix + "."):
            continue
        name = holder.removeprefix(prefix + ".") if prefix else holder
        if not isinstance(network, TSN):
            return name, network
        if name in _TSN_STEM:
            return _TSN_STEM[name], network
        match = _TSN_BLOCK.fullmatch(name)
        return (f"stages.{int(match['stage']) - 1}.{match['rest']}", network) if match else None
    return None


def _block(role: str) -> tuple[int, int, str] | None:
    """(stage, block, part) of a role inside a stage of blocks."""
    match = _BLOCK.fullmatch(role)
    return (int(match["stage"]), int(match["block"]), match["part"]) if match else None


_PYTORCHVIDEO_PARTS = {
    "conv1": "branch2.conv_a",
    "bn1": "branch2.norm_a",
    "conv2": "branch2.conv_b",
    "bn2": "branch2.norm_b",
    "conv3": "branch2.conv_c",
    "bn3": "branch2.norm_c",
    "downsample.0": "branch1_conv",
    "downsample.1": "branch1_norm",
    "expand.0": "branch2.conv_a",
    "expand.1": "branch2.norm_a",
    "depthwise.0": "branch2.conv_b",
    "depthwise.1": "branch2.norm_b.0",
    "squeeze_excite.reduce": "branch2.norm_b.1.block.0",
    "squeeze_excite.expand": "branch2.norm_b.1.block.2",
    "project.0": "branch2.conv_c",
    "project.1": "branch2.norm_c",
    "shortcut.0": "branch1_conv",
    "shortcut.1": "branch1_norm",
}


def pytorchvideo(role: str, network: nn.Module) -> str | None:
    """PyTorchVideo's names of I3D / Slow-only and X3D modules (see the module docstring)."""
    if not isinstance(network, ResNet3D | X3D):
        return None
    pooled = int(getattr(network.config, "res2_temporal_pool", False))
    head = f"blocks.{len(network.stages) + 1 + pooled}"
    if block := _block(role):
        stage, index, part = block
        part = _PYTORCHVIDEO_PARTS.get(part)
        return f"blocks.{stage + 1 + (pooled if stage else 0)}.res_blocks.{index}.{part}" if part else None
    return {
        "stem.conv": "blocks.0.conv",
        "stem.bn": "blocks.0.norm",
        "stem.0": "blocks.0.conv.conv_t",
        "stem.1": "blocks.0.conv.conv_xy",
        "stem.2": "blocks.0.norm",
        "head.conv.0": f"{head}.pool.pre_conv",
        "head.conv.1": f"{head}.pool.pre_norm",
        "head.hidden": f"{head}.pool.post_conv",
        "head.fc": f"{head}.proj",
    }.get(role)


_PYSLOWFAST_PARTS = {
    "conv1": "branch2.a",
    "bn1": "branch2.a_bn",
    "conv2": "branch2.b",
    "bn2": "branch2.b_bn",
    "conv3": "branch2.c",
    "bn3": "branch2.c_bn",
    "downsample.0": "branch1",
    "downsample.1": "branch1_bn",
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
}
_PYSLOWFAST_OTHERS = {
    "stem.conv": "s1.pathway0_stem.conv",
    "stem.bn": "s1.pathway0_stem.bn",
    "stem.0": "s1.pathway0_stem.conv_xy",
    "stem.1": "s1.pathway0_stem.conv",
    "stem.2": "s1.pathway0_stem.bn",
    "head.conv.0": "head.conv_5",
    "head.conv.1": "head.conv_5_bn",
    "head.hidden": "head.lin_5",
    "head.fc": "head.projection",
}


def pyslowfast(role: str, network: nn.Module) -> str | None:
    """PySlowFast's names of I3D / Slow-only and X3D modules (see the module docstring)."""
    if not isinstance(network, ResNet3D | X3D):
        return None
    if block := _block(role):
        stage, index, part = block
        part = _PYSLOWFAST_PARTS.get(part)
        return f"s{stage + 2}.pathway0_res{index}.{part}" if part else None
    return _PYSLOWFAST_OTHERS.get(role)


_MMACTION2_PARTS = {
    "conv1": "conv1.conv",
    "bn1": "conv1.bn",
    "conv2": "conv2.conv",
    "bn2": "conv2.bn",
    "conv3": "conv3.conv",
    "bn3": "conv3.bn",
    "downsample.0": "downsample.conv",
    "downsample.1": "downsample.bn",
}


def mmaction2(role: str, network: nn.Module) -> str | None:
    """mmaction2's names of TSN / TSM and I3D / Slow-only modules (see the module docstring)."""
    if not isinstance(network, TSN | ResNet3D):
        return None
    if block := _block(role):
        stage, index, part = block
        shifted = part == "conv1" and getattr(network.config, "temporal_shift", False)
        part = "conv1.conv.net" if shifted else _MMACTION2_PARTS.get(part)
        return f"backbone.layer{stage + 1}.{index}.{part}" if part else None
    return {"stem.conv": "backbone.conv1.conv", "stem.bn": "backbone.conv1.bn", "head.fc": "cls_head.fc_cls"}.get(role)


def torchvision(role: str, network: nn.Module) -> str | None:
    """torchvision's names of ImageNet ResNet (TSN / TSM backbones) and MobileNetV2 modules (see the module
    docstring)."""
    if isinstance(network, MobileNetV2Features):
        return "features." + role.removeprefix("layers.").replace(".body.", ".conv.")
    if not isinstance(network, TSN):
        return None
    if block := _block(role):
        stage, index, part = block
        return f"layer{stage + 1}.{index}.{part}"
    return {"stem.conv": "conv1", "stem.bn": "bn1", "head.fc": "fc"}.get(role)


ADAFUSE_RESNET = "module.base_model"
_ADAFUSE_PARTS = {
    "downsample.0": "downsample0",
    "downsample.1": "downsample1",
    "policy.fc_in": "policy_net.gate_fc0",
    "policy.bn": "policy_net.gate_bn",
    "policy.fc_out": "policy_net.gate_fc1",
}


def adafuse(role: str, network: nn.Module) -> str | None:
    """The AdaFuse authors' names of AdaFuse-TSN / TSM ResNet modules (see the module docstring)."""
    if not isinstance(network, AdaFuse):
        return None
    if block := _block(role):
        stage, index, part = block
        return f"{ADAFUSE_RESNET}.layer{stage + 1}.{index}.{_ADAFUSE_PARTS.get(part, part)}"
    return {"stem.conv": f"{ADAFUSE_RESNET}.conv1", "stem.bn": f"{ADAFUSE_RESNET}.bn1", "head.fc": "module.new_fc"}.get(
        role
    )
