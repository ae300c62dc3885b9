"""I3D-R50 and Slow-only-R50 (PySlowFast layout): shapes, FLOPs, and the centre-slice 2D mode Ada3D uses."""

from __future__ import annotations

import copy

import pytest
import torch
from flops_reference import fvcore_gflops
from randomised import assert_branches_live, randomise_batch_norms
from torch import nn

from clipwise.models.flops import count_flops, track_macs
from clipwise.models.registry import create_model
from clipwise.models.resnet3d import ResNet3D, centre_slice_conv3d, centre_slice_copy, is_temporal

TINY = ["i3d_r50_tiny", "slowonly_r50_tiny"]
PAPER = ["i3d_r50", "slowonly_r50"]


def randomised(name: str) -> ResNet3D:
    """A model in eval mode with random batch norms, so no residual branch is silent (PySlowFast
    zero-initialises each block's last BN)."""
    torch.manual_seed(0)
    return randomise_batch_norms(create_model(name))


def stage_inputs(model: ResNet3D, clips: torch.Tensor) -> list[torch.Tensor]:
    """The input of every trunk stage for ``clips`` (full 3D run)."""
    inputs = []
    x = clips
    for stage in model.trunk:
        inputs.append(x)
        x = stage(x)
    return inputs


def masked_to_centre_tap(module: nn.Module) -> nn.Module:
    """Reference: a copy whose temporal kernels keep only their centre tap (the others zeroed), run in 3D."""
    masked = copy.deepcopy(module)
    for conv in filter(is_temporal, masked.modules()):
        centre = conv.kernel_size[0] // 2
        keep = torch.zeros_like(conv.weight)
        keep[:, :, centre] = 1
        conv.weight.data.mul_(keep)
    return masked


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    logits = model(torch.randn(2, 3, 4, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", PAPER)
def test_paper_preset_forward_small_input(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 2, 32, 32))
    assert logits.shape == (1, 200)


@pytest.mark.parametrize(
    ("name", "stem", "conv1_kernels", "switchable"),
    [
        ("i3d_r50", 5, [[3, 3, 3], [3, 1, 3, 1], [3, 1, 3, 1, 3, 1], [1, 3, 1]], (0, 1, 2, 3, 4)),
        ("slowonly_r50", 1, [[1, 1, 1], [1, 1, 1, 1], [3, 3, 3, 3, 3, 3], [3, 3, 3]], (3, 4)),
    ],
)
def test_pyslowfast_temporal_kernels(name: str, stem: int, conv1_kernels: list[list[int]], switchable: tuple) -> None:
    with torch.device("meta"):
        model = create_model(name)
    assert model.stem.conv.kernel_size == (stem, 7, 7)
    assert [[block.conv1.kernel_size[0] for block in stage] for stage in model.stages] == conv1_kernels
    assert model.switchable_stages == switchable
    temporal_strides = {m.stride[0] for m in model.modules() if isinstance(m, (nn.Conv3d, nn.MaxPool3d))}
    assert temporal_strides == {1}


@pytest.mark.parametrize(
    ("name", "frames", "gflops"),
    [("i3d_r50", 8, 58.6), ("i3d_r50", 16, 117.3), ("slowonly_r50", 8, 54.5)],
)
def test_paper_gflops(name: str, frames: int, gflops: float) -> None:
    """Ada3D paper, 256² crops, 200 classes."""
    model = create_model(name, num_classes=200)
    assert count_flops(model, frames, 256).gflops == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("name", TINY)
def test_stage_in_2d_equals_masked_kernels_and_costs_the_sliced_convs(name: str) -> None:
    model = randomised(name)
    inputs = stage_inputs(model, torch.randn(2, 3, 4, 32, 32))
    with torch.no_grad():
        for index in model.switchable_stages:
            stage, x = model.trunk[index], inputs[index]
            with track_macs(2) as sliced_run:
                out_2d = stage(x, temporal=False)
            with track_macs(2) as materialised_run:
                out_static = centre_slice_copy(stage)(x)
            with track_macs(2) as full_run:
                out_3d = stage(x)
            torch.testing.assert_close(out_2d, masked_to_centre_tap(stage)(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out_2d, out_static, rtol=1e-5, atol=1e-5)
            assert sliced_run.per_clip.tolist() == materialised_run.per_clip.tolist()
            assert sliced_run.per_clip.sum() < full_run.per_clip.sum()
            assert not torch.allclose(out_2d, out_3d, atol=1e-3)


def test_centre_slice_conv3d_records_the_1xkxk_conv() -> None:
    conv = nn.Conv3d(4, 6, (5, 3, 3), padding=(2, 1, 1), bias=False)
    x = torch.randn(1, 4, 3, 8, 8)
    with track_macs(1) as tracker:
        out = centre_slice_conv3d(conv, x)
    assert out.shape == (1, 6, 3, 8, 8)
    assert tracker.per_clip.item() == out.numel() * 4 * 3 * 3
    reference = nn.functional.conv2d(x[0].transpose(0, 1), conv.weight[:, :, 2], padding=1).transpose(0, 1)
    torch.testing.assert_close(out[0], reference)


@pytest.mark.parametrize("name", TINY)
def test_policy_executes_its_static_network(name: str) -> None:
    model = randomised(name)
    clips = torch.randn(2, 3, 4, 32, 32)
    policy = [index % 2 == 0 for index in range(len(model.switchable_stages))]
    static = model.static_copy(policy)
    with torch.no_grad(), track_macs(2) as executed:
        logits = model(clips, stages_3d=policy)
    torch.testing.assert_close(logits, static(clips), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert_branches_live(model, lambda m: m(clips, stages_3d=policy), rtol=1e-5, atol=1e-5)
    assert executed.gflops == pytest.approx([fvcore_gflops(static, 4, 32)] * 2, rel=1e-9)
    assert max(executed.gflops) < count_flops(model, 4, 32).gflops


@pytest.mark.parametrize("name", TINY)
def test_all_2d_is_blind_to_frame_order(name: str) -> None:
    """With every stage 2D the network is per-frame until the average pool; in 3D it models time."""
    model = randomised(name)
    clips = torch.randn(1, 3, 4, 32, 32)
    shuffled = clips[:, :, [2, 0, 3, 1]]
    all_2d = [False] * len(model.switchable_stages)
    with torch.no_grad():
        torch.testing.assert_close(model(clips, stages_3d=all_2d), model(shuffled, stages_3d=all_2d))
        assert not torch.allclose(model(clips), model(shuffled), atol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_fewer_frames_run_and_cost_proportionally_less(name: str) -> None:
    model = create_model(name).eval()
    head = model.head.fc.in_features * model.head.fc.out_features / 1e9
    backbone = {frames: count_flops(model, frames, 64).gflops - head for frames in (1, 4, 8)}
    assert backbone[4] == pytest.approx(backbone[8] / 2, rel=1e-9)
    assert backbone[1] == pytest.approx(backbone[8] / 8, rel=1e-9)
    assert model(torch.randn(2, 3, 1, 64, 64)).shape == (2, model.config.num_classes)


def test_stage_flags_are_validated() -> None:
    model = create_model("slowonly_r50_tiny")
    with pytest.raises(ValueError, match="expected 2 stage flags"):
        model(torch.randn(1, 3, 2, 32, 32), stages_3d=[True] * 5)


def test_preprocessing_is_pyslowfast_dense_sampling() -> None:
    preprocessing = create_model("i3d_r50").preprocessing()
    assert (preprocessing.sampling, preprocessing.frames, preprocessing.stride) == ("dense", 8, 8)
    assert preprocessing.short_side == preprocessing.crop_size == 256
