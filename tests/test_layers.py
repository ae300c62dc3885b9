"""FrameConv3d: the folded 2D conv equals nn.Conv3d (values, gradients, MACs, state dict), where it folds and
where it must not, and the models built on it compute what plain conv3d computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from randomised import assert_branches_live, randomise_batch_norms
from torch import nn
from torch.overrides import TorchFunctionMode

from clipwise.models.flops import conv_macs, track_macs
from clipwise.models.layers import FrameConv3d, frame_folding
from clipwise.models.registry import create_model
from clipwise.models.resnet3d import centre_slice_conv3d


class ConvCalls(TorchFunctionMode):
    """Records which of F.conv2d / F.conv3d the code inside the block really calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d or func is F.conv3d:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def conv_pair(*args, **kwargs) -> tuple[FrameConv3d, nn.Conv3d]:
    """A FrameConv3d and an nn.Conv3d with the same arguments and weights (loaded through the state dict)."""
    torch.manual_seed(0)
    folded = FrameConv3d(*args, **kwargs)
    plain = nn.Conv3d(*args, **kwargs)
    plain.load_state_dict(folded.state_dict())
    return folded, plain


def clip(batch: int, channels: int, frames: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, frames, size, size, generator=torch.Generator().manual_seed(seed))


# (conv arguments, input batch, frames, size): kernels one frame deep, all of which fold.
FOLDING = {
    "pointwise": (dict(in_channels=16, out_channels=32, kernel_size=1, bias=False), 1, 4, 8),
    "3x3": (dict(in_channels=8, out_channels=12, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 2, 3, 10),
    "3x3 stride 2, odd size": (
        dict(in_channels=8, out_channels=16, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        1,
        4,
        9,
    ),
    "depthwise": (dict(in_channels=12, out_channels=12, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=12), 1, 5, 8),
    "grouped 1x1 stride 2": (dict(in_channels=16, out_channels=8, kernel_size=1, stride=(1, 2, 2), groups=4), 3, 2, 8),
    "7x7 dilated": (
        dict(in_channels=3, out_channels=8, kernel_size=(1, 7, 7), padding=(0, 6, 6), dilation=(1, 2, 2)),
        1,
        2,
        16,
    ),
    "one frame": (dict(in_channels=8, out_channels=8, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 1, 1, 6),
}


@pytest.mark.parametrize("case", FOLDING.values(), ids=FOLDING.keys())
def test_folded_conv_equals_conv3d_in_values_and_gradients(case) -> None:
    arguments, batch, frames, size = case
    folded, plain = conv_pair(**arguments)
    x = clip(batch, arguments["in_channels"], frames, size).requires_grad_()
    x_plain = x.detach().clone().requires_grad_()
    with ConvCalls() as calls:
        out = folded(x)
    expected = plain(x_plain)
    assert calls.calls == ["conv2d"]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)


def test_folded_output_stays_channels_last_so_the_next_fold_needs_no_copy() -> None:
    first, _ = conv_pair(8, 16, 1)
    second, second_plain = conv_pair(16, 8, (1, 3, 3), padding=(0, 1, 1))
    with torch.no_grad():
        hidden = first(clip(1, 8, 4, 8))
        assert hidden.is_contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(second(hidden), second_plain(hidden), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", FOLDING.values(), ids=FOLDING.keys())
def test_track_macs_counts_the_folded_conv_as_the_conv3d(case) -> None:
    arguments, batch, frames, size = case
    folded, plain = conv_pair(**arguments)
    x = clip(batch, arguments["in_channels"], frames, size)
    with torch.no_grad(), track_macs(batch) as folded_count:
        out = folded(x)
    with torch.no_grad(), track_macs(batch) as plain_count:
        plain(x)
    per_output = arguments["in_channels"] // arguments.get("groups", 1)
    assert folded_count.per_clip.tolist() == plain_count.per_clip.tolist()
    assert folded_count.per_clip.sum().item() == conv_macs(out.shape, per_output, folded.kernel_size)


NOT_FOLDING = {
    "temporal kernel": dict(in_channels=8, out_channels=8, kernel_size=(3, 1, 1), padding=(1, 0, 0)),
    "temporal kernel, no padding": dict(in_channels=8, out_channels=8, kernel_size=(3, 1, 1)),
    "temporal 3x3x3": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    "temporal stride": dict(in_channels=8, out_channels=8, kernel_size=1, stride=(2, 1, 1)),
    "temporal padding": dict(in_channels=8, out_channels=8, kernel_size=(1, 3, 3), padding=1),
}


@pytest.mark.parametrize("arguments", NOT_FOLDING.values(), ids=NOT_FOLDING.keys())
def test_conv3d_runs_when_the_kernel_is_not_trivial_in_time(arguments) -> None:
    folded, plain = conv_pair(**arguments)
    x = clip(1, 8, 4, 6)
    with torch.no_grad(), ConvCalls() as calls:
        out = folded(x)
    assert calls.calls == ["conv3d"]
    assert torch.equal(out, plain(x))


def test_folding_can_be_switched_off_and_is_left_out_of_traced_graphs() -> None:
    folded, plain = conv_pair(8, 8, (1, 3, 3), padding=(0, 1, 1))
    x = clip(1, 8, 4, 6)
    with torch.no_grad(), frame_folding(False), ConvCalls() as calls:
        out = folded(x)
    assert calls.calls == ["conv3d"] and torch.equal(out, plain(x))
    traced = torch.jit.trace(folded, x)
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::_convolution" in kinds and "aten::transpose" not in kinds


def test_centre_slice_runs_folded_and_equals_the_masked_kernel() -> None:
    conv = nn.Conv3d(6, 8, (3, 3, 3), padding=1, bias=False)
    x = clip(1, 6, 4, 7)
    masked = conv.weight.detach().clone()
    masked[:, :, [0, 2]] = 0
    with torch.no_grad(), ConvCalls() as calls:
        out = centre_slice_conv3d(conv, x)
    assert calls.calls == ["conv2d"]
    torch.testing.assert_close(out, F.conv3d(x, masked, padding=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["i3d_r50_tiny", "ctnet_r50_tiny", "x3d_s_tiny", "fusion_template_densenet121_tiny"])
def test_models_give_the_logits_of_plain_conv3d(name: str) -> None:
    torch.manual_seed(0)
    clips = torch.randn(2, 3, 8, 32, 32)  # 8 frames: the fusion stem and transitions pool time by 8
    model = randomise_batch_norms(create_model(name, num_classes=5), clips)
    with torch.no_grad(), ConvCalls() as calls:
        logits = model(clips)
    with torch.no_grad(), frame_folding(False):
        expected = model(clips)
    assert "conv2d" in calls.calls
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert_branches_live(model, lambda m: m(clips), rtol=1e-4, atol=1e-5)
