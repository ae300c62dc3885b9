"""Models whose every convolution shows in the logits, for the numeric parity tests (one helper for all).

PySlowFast's initialisation (I3D, Slow-only, X3D, E3D, Ada3D's backbone) zeroes the last batch-norm γ of every
residual branch, so a model at init computes its shortcuts only, and a parity test on it compares nothing
else. The other families start with every batch norm the identity (γ 1, β 0, mean 0, variance 1), so folding
batch norms into convolutions goes untested. ``randomise_batch_norms`` draws every batch norm's affine
parameters and running statistics; ``assert_branches_live`` is each parity test's check that it could fail:
silencing a residual branch moves the logits by more than the test's tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from clipwise.models.fusion import FusionLayer
from clipwise.models.resnet3d import Bottleneck as Bottleneck3d
from clipwise.models.tsn import ResidualBlock
from clipwise.models.x3d import InvertedBottleneck

BRANCHES = (0, -1)  # the first residual branch and the last one


def randomise_batch_norms(
    model: nn.Module, inputs: torch.Tensor | tuple[object, ...] | None = None, seed: int = 0
) -> nn.Module:
    """Random batch norms, the model in eval mode: every γ drawn in [0.5, 1.5) and β in [−0.5, 0.5), then the
    running statistics those give on ``inputs`` (a tensor, or a tuple of the forward's arguments; default:
    random clips of the model's configured shape), each mean moved by up to half a standard deviation and each
    variance scaled by 0.5 … 1.5. Measured statistics keep the signal's scale through any depth (statistics
    drawn blindly shrink or grow it layer after layer, until the logits hardly depend on the input); the
    random changes keep folding them into convolutions a real test."""
    generator = torch.Generator().manual_seed(seed)
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if inputs is None:
        config = model.config
        inputs = torch.randn(2, 3, config.frames, config.size, config.size, generator=generator)
    momenta = [norm.momentum for norm in norms]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_(torch.rand(norm.bias.shape, generator=generator) - 0.5)
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: one pass leaves the batch's statistics
        model.train()(*(inputs if isinstance(inputs, tuple) else (inputs,)))
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
            shape = norm.running_mean.shape
            norm.running_mean.add_((torch.rand(shape, generator=generator) - 0.5) * norm.running_var.sqrt())
            norm.running_var.mul_(torch.rand(shape, generator=generator) + 0.5)
    return model.eval()


def branch_ends(model: nn.Module) -> list[nn.Module]:
    """The last layer of every residual branch (of every dense layer, for DenseNet), in forward order: the
    layer whose zeroing leaves the block its shortcut."""
    ends = []
    for module in model.modules():
        if isinstance(module, ResidualBlock):  # TSN / TSM, AdaFuse's gated blocks
            ends.append(getattr(module, "bn3", None) or module.bn2)
        elif isinstance(module, Bottleneck3d):  # I3D / Slow-only, CT-Net
            ends.append(module.bn3)
        elif isinstance(module, InvertedBottleneck) and module.shortcut is not None:  # X3D / E3D
            ends.append(module.project[1])
        elif isinstance(module, FusionLayer):  # DenseNet: the layer's new channels
            ends.append(module.spatial.conv)
    return ends


def silenced(model: nn.Module, branch: int) -> nn.Module:
    """A copy of ``model`` with residual branch number ``branch`` (of ``branch_ends``) zeroed."""
    copied = copy.deepcopy(model)
    end = branch_ends(copied)[branch]
    with torch.no_grad():
        for parameter in end.parameters(recurse=False):
            parameter.zero_()
    return copied


def assert_branches_live(
    model: nn.Module, logits_of: Callable[[nn.Module], torch.Tensor], *, rtol: float, atol: float
) -> None:
    """Zeroing the first or the last residual branch of ``model`` changes ``logits_of(model)`` beyond
    ``rtol`` / ``atol`` (``torch.allclose``'s): a parity test at that tolerance would see a branch it missed."""
    logits = logits_of(model)
    for branch in BRANCHES:
        changed = logits_of(silenced(model, branch))
        assert not torch.allclose(changed, logits, rtol=rtol, atol=atol), f"branch {branch} leaves the logits"


def decisive_policies(model: nn.Module, seed: int = 1) -> nn.Module:
    """Policy nets (AdaFuse's ``fc_in`` / ``fc_out``, Ada3D's heads) with large random weights: decisions that
    differ by channel, block and clip, so that a test comparing them compares something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] in ("fc_in", "fc_out", "frame_head", "stage_head"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
    return model
