"""CT-Net-R50: layout of CT-Blocks, channel tensorisation, FLOPs against the paper (fvcore: test_zoo)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipwise.models.ctnet import CTModule, CTNet, CTNetConfig, tensorize_channels, transpose_channels
from clipwise.models.flops import count_flops
from clipwise.models.registry import create_model


@pytest.mark.parametrize(
    ("channels", "split"), [(16, (4, 4)), (64, (8, 8)), (128, (8, 16)), (256, (16, 16)), (512, (16, 32))]
)
def test_tensorize_channels(channels: int, split: tuple[int, int]) -> None:
    assert tensorize_channels(channels) == split


def test_tensorize_channels_rejects_other_counts() -> None:
    with pytest.raises(ValueError, match="power-of-two"):
        tensorize_channels(48)


def test_transpose_channels_reorders_rows_and_columns() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1, 1, 1)  # channel (row, col) holds 3 * row + col
    assert transpose_channels(x, 2, 3).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    torch.testing.assert_close(transpose_channels(transpose_channels(x, 2, 3), 3, 2), x)


def test_ct_blocks_replace_the_odd_indexed_bottlenecks() -> None:
    with torch.device("meta"):
        model = create_model("ctnet_r50")
    layout = [[isinstance(block.conv2, CTModule) for block in stage] for stage in model.stages]
    assert layout == [[False, True, False], [False, True, False, True], [False, True] * 3, [False, True, False]]
    outside_ct = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    inside_ct = {id(m) for ct in model.modules() if isinstance(ct, CTModule) for m in ct.modules()}
    assert all(m.kernel_size[0] == 1 for m in outside_ct if id(m) not in inside_ct)


def test_ct_module_steps_group_one_sub_dimension_each() -> None:
    """The first step mixes channels only within a block of C2, the second (after the fusion conv and the
    transpose) only within a block of C1 of the original layout."""
    module = CTModule(32).eval()  # C1 = 4, C2 = 8
    x = torch.randn(1, 32, 3, 6, 6)
    bumped = x.clone()
    bumped[:, 9] += 1.0  # channel (row 1, col 1) of the (C1, C2) layout
    with torch.no_grad():
        changed = (module.first(bumped) - module.first(x)).abs().amax(dim=(0, 2, 3, 4)) > 0
    assert changed.nonzero().flatten().tolist() == list(range(8, 16))
    assert [step.spatial[0].groups for step in (module.first, module.second)] == [4, 8]


def test_tiny_forward() -> None:
    model = create_model("ctnet_r50_tiny", num_classes=7).eval()
    logits = model(torch.randn(2, 3, 4, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_paper_preset_forward_small_input() -> None:
    model = create_model("ctnet_r50").eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 2, 32, 32))
    assert logits.shape == (1, 174)


def test_ct_blocks_model_time() -> None:
    """A frame-wise ResNet is blind to frame order; the CT-Blocks are what make CT-Net see it."""
    torch.manual_seed(0)
    model = create_model("ctnet_r50_tiny").eval()
    clips = torch.randn(1, 3, 4, 32, 32)
    shuffled = clips[:, :, [2, 0, 3, 1]]
    with torch.no_grad():
        assert not torch.allclose(model(clips), model(shuffled), atol=1e-5)
        for stage in model.stages:
            for block in stage[1::2]:
                block.conv2 = block.bn2 = nn.Identity()  # strip the CT-Modules
        torch.testing.assert_close(model(clips), model(shuffled))


@pytest.mark.parametrize(("frames", "size", "gflops"), [(8, 224, 28.6), (8, 256, 37.3), (16, 256, 75.0)])
def test_paper_gflops(frames: int, size: int, gflops: float) -> None:
    """CT-Net paper, Something-Something V1 (174 classes), Tables 2h, 3 and 6."""
    model = CTNet(CTNetConfig(num_classes=174))
    assert count_flops(model, frames, size).gflops == pytest.approx(gflops, rel=0.03)


def test_paper_params() -> None:
    model = CTNet(CTNetConfig(num_classes=174))
    assert count_flops(model, 8, 224).params_m == pytest.approx(21.0, rel=0.03)


def test_preprocessing_is_tsn_segments() -> None:
    preprocessing = create_model("ctnet_r50").preprocessing()
    assert (preprocessing.sampling, preprocessing.frames, preprocessing.crop_size) == ("segments", 8, 256)
