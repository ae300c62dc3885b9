"""Execution-aware AdaFuse: ordered channel prefixes, one choice per block per clip.

The paper's policy decides keep / reuse / skip for every (frame, channel); the channels any of 8 frames needs
are then almost all of them, and a CPU saves nothing. Here a gated block's conv1 output channels are an
*ordered* list and its policy picks, once per clip, a :class:`PrefixChoice` from a few levels:

* channels ``[0, keep)`` are computed at every frame;
* channels ``[keep, keep + reuse)`` are computed at even frames and reused (copied from frame t − 1) at odd
  ones, so a reused channel always comes from a frame that computed it;
* the rest are skipped.

Expressed as AdaFuse's per-channel masks, this is a policy of the paper's kind (the same Eq. 5 count, the same
dense masked training), so everything that reads masks keeps working. Executed, each convolution is a dense
slice: conv1 is two calls at most (the even frames over ``keep + reuse`` output channels, the odd ones over
``keep``), conv2 one call over its first ``keep + reuse`` inputs. The sliced weights of every level are laid
out once (:class:`PrefixWeights`), never on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipwise.models.folding import FoldedConv
from clipwise.models.gating_partitions import DECISIONS, KEEP, REUSE, SKIP


@dataclass(frozen=True)
class PrefixChoice:
    """One level of a gated block: channels computed at every frame, then channels computed at even frames and
    reused at odd ones; the rest skipped."""

    keep: int
    reuse: int = 0

    @property
    def read(self) -> int:
        """conv1 output channels that conv2 reads (at every frame)."""
        return self.keep + self.reuse


def prefix_step(width: int) -> int:
    """The level step of a block of ``width`` channels: a quarter of it, at least 16 channels (oneDNN's blocks)
    where the block has 32 or more."""
    return max(width // 4, min(16, width // 2))


def prefix_choices(width: int) -> tuple[PrefixChoice, ...]:
    """The levels of a block of ``width`` channels, cheapest last: every multiple of the step kept, with nothing
    or one step more reused. The first is full compute."""
    step = prefix_step(width)
    keeps = range(width - width % step or width, 0, -step)
    kept = [PrefixChoice(keep) for keep in keeps]
    reused = [PrefixChoice(keep, step) for keep in keeps if keep + step <= width]
    return tuple(kept + reused)


def choice_masks(choices: tuple[PrefixChoice, ...], frames: int, width: int) -> torch.Tensor:
    """(L, T, C, 3) one-hot keep / reuse / skip masks of every choice: what each means per (frame, channel).
    Built in NumPy, so that a traced graph holds them as a constant."""
    codes = np.full((len(choices), frames, width), SKIP)
    for index, choice in enumerate(choices):
        codes[index, :, : choice.keep] = KEEP
        codes[index, 0::2, choice.keep : choice.read] = KEEP
        codes[index, 1::2, choice.keep : choice.read] = REUSE
    return torch.from_numpy(np.eye(DECISIONS, dtype=np.float32)[codes])


class PrefixPolicyNet(nn.Module):
    """Logits over a block's choices for each clip, from its pooled input averaged over the clip's frames:
    FC → BatchNorm1d → ReLU → FC. Initially inclined to full compute, so that a trained TSN / TSM starts as it
    was."""

    def __init__(self, in_channels: int, width: int, hidden: int) -> None:
        super().__init__()
        self.choices = prefix_choices(width)
        self.width = width
        self.fc_in = nn.Linear(in_channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc_out = nn.Linear(hidden, len(self.choices))
        for fc in (self.fc_in, self.fc_out):
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)
        with torch.no_grad():
            self.fc_out.bias[0] = 1.0  # choice 0 is full compute
        self._masks: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(N·T, C_in, H, W) block input → logits (N, L)."""
        pooled = x.mean((2, 3)).view(-1, frames, x.shape[1]).mean(1)
        return self.fc_out(self.relu(self.bn(self.fc_in(pooled))))

    def masks(self, weights: torch.Tensor, frames: int) -> torch.Tensor:
        """(N, T, C, 3) masks of (N, L) choice weights (one-hot, or straight-through one-hot in training)."""
        masks = self._choice_masks(frames, weights)
        return (weights @ masks.flatten(1)).view(-1, *masks.shape[1:])

    def masks_of(self, indices: list[int], frames: int, like: torch.Tensor) -> torch.Tensor:
        """(N, T, C, 3) masks of the levels ``indices`` (inference: no gradient to carry)."""
        return self._choice_masks(frames, like)[indices]

    def _choice_masks(self, frames: int, like: torch.Tensor) -> torch.Tensor:
        key = (frames, like.device, like.dtype)
        if key not in self._masks:
            with torch.inference_mode(False):  # made at inference, read by training's autograd too
                self._masks[key] = choice_masks(self.choices, frames, self.width).to(like.device, like.dtype)
        return self._masks[key]


class PrefixWeights:
    """The folded conv1 / conv2 of a gated block sliced for every read width of its levels, laid out once:
    conv1's first ``m`` output channels (a view of its channels_last weight) and conv2's first ``m`` input
    channels (copied contiguous, channels_last)."""

    def __init__(self, first: FoldedConv, second: FoldedConv, choices: tuple[PrefixChoice, ...]) -> None:
        self.first, self.second = first, second
        widths = {choice.keep for choice in choices} | {choice.read for choice in choices}
        self.conv1 = {m: _sliced(first, outputs=m) for m in widths}
        self.conv2 = {m: _sliced(second, inputs=m) for m in widths}

    def holds(self, first: FoldedConv, second: FoldedConv) -> bool:
        """True while the folds it was sliced from are still the block's."""
        return self.first is first and self.second is second


def _sliced(conv: FoldedConv, *, outputs: int | None = None, inputs: int | None = None) -> FoldedConv:
    if outputs is not None and outputs < conv.weight.shape[0]:
        return FoldedConv(conv.weight[:outputs], conv.bias[:outputs], conv.stride, conv.padding, conv.dilation)
    if inputs is not None and inputs < conv.weight.shape[1]:
        weight = conv.weight[:, :inputs].contiguous()
        return FoldedConv(weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    return conv


def run_prefix_pair(
    x: torch.Tensor,
    choice: PrefixChoice,
    weights: PrefixWeights,
    *,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    frames: int | None = None,
) -> tuple[torch.Tensor, int]:
    """``conv2(fuse(relu(conv1(x))), residual, relu)`` of clips of ``frames`` frames each (default: one clip),
    (N·T, C_in, H, W), every clip under ``choice``; the output and the MACs it ran."""
    frames = frames or x.shape[0]
    whole = weights.conv1[choice.read]
    if choice.reuse == 0 or frames == 1:
        y = whole(x, relu=True)
        macs = x.shape[0] * whole.macs(y, x.shape[1])
    else:
        clips = x.view(-1, frames, *x.shape[1:])
        even = whole(clips[:, 0::2].flatten(0, 1), relu=True)
        part = weights.conv1[choice.keep]
        odd = part(clips[:, 1::2].flatten(0, 1), relu=True)
        y = torch.empty((x.shape[0], choice.read, *even.shape[2:]), dtype=even.dtype, device=even.device)
        y = y.contiguous(memory_format=torch.channels_last)
        fused = y.view(-1, frames, *y.shape[1:])
        evens = even.view(-1, (frames + 1) // 2, *even.shape[1:])
        fused[:, 0::2] = evens
        fused[:, 1::2, : choice.keep] = odd.view(-1, frames // 2, *odd.shape[1:])
        fused[:, 1::2, choice.keep :] = evens[:, : frames // 2, choice.keep :]  # frame 2i + 1 reuses frame 2i
        macs = even.shape[0] * whole.macs(even, x.shape[1]) + odd.shape[0] * part.macs(odd, x.shape[1])
    second = weights.conv2[choice.read]
    out = second(y, residual=residual, relu=relu)
    return out, macs + x.shape[0] * second.macs(out, choice.read)


@torch.no_grad()
def order_by_importance(conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d) -> torch.Tensor:
    """Permute conv1's output channels, with bn1's and conv2's input channels, most important first: the block
    computes the same function, and a prefix then keeps the channels that matter most. Importance: |γ| of bn1
    times the L1 norm of conv2's weights that read the channel (no data needed). Returns the order applied."""
    importance = bn1.weight.abs() * conv2.weight.abs().sum((0, 2, 3))
    order = importance.argsort(descending=True, stable=True)
    for tensor in (conv1.weight, conv1.bias, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var):
        if tensor is not None:
            tensor.copy_(tensor[order])
    conv2.weight.copy_(conv2.weight[:, order])
    return order
