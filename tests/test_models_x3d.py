"""X3D / E3D: forward passes, block structure, FLOPs against the papers (fvcore: test_zoo), arch files."""

import json

import pytest
import torch
from torch import nn

from clipwise.models import count_flops, create_model
from clipwise.models.x3d import E3D_S, X3D, InvertedBottleneck, SqueezeExcite, StageSpec, architecture_of, se_width

PAPER = ["x3d_s", "x3d_m", "x3d_l", "e3d_s", "e3d_m", "e3d_l"]
TINY = [f"{name}_tiny" for name in PAPER]

# (preset, frames, size, GFLOPs, params in M or None): X3D from PySlowFast's model zoo, E3D from the paper.
PAPER_FIGURES = [
    ("x3d_s", 13, 160, 1.96, 3.8),
    ("x3d_m", 16, 224, 4.73, 3.8),
    ("x3d_l", 16, 312, 18.37, 6.2),
    ("e3d_s", 13, 160, 1.9, None),
    ("e3d_m", 16, 224, 4.7, None),
    ("e3d_l", 16, 312, 18.3, None),
]


def blocks(model: X3D) -> list[InvertedBottleneck]:
    return [module for module in model.modules() if isinstance(module, InvertedBottleneck)]


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_gives_finite_logits_per_clip(name):
    model = create_model(name, num_classes=7).eval()
    clips = torch.randn(2, 3, model.config.frames, model.config.size, model.config.size)
    with torch.no_grad():
        logits = model(clips)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "frames", "size", "gflops", "params_m"), PAPER_FIGURES)
def test_paper_presets_match_the_papers_within_3_percent(name, frames, size, gflops, params_m):
    with torch.device("meta"):
        model = create_model(name)
    assert (model.config.frames, model.config.size, model.config.num_classes) == (frames, size, 400)
    cost = count_flops(model, frames, size)
    assert cost.gflops == pytest.approx(gflops, rel=0.03)
    if params_m is not None:
        assert cost.params_m == pytest.approx(params_m, rel=0.03)


def test_e3d_counts_match_the_independent_count_without_the_post_pool_fcs():
    """1.864 / 4.643 / 18.340 G leave out the FCs after the pool and the SEs (under 0.02 %)."""
    for name, expected in (("e3d_s", 1.864), ("e3d_m", 4.643), ("e3d_l", 18.340)):
        with torch.device("meta"):
            model = create_model(name, hidden_channels=1, num_classes=1, se_ratio=0)
        assert count_flops(model, model.config.frames, model.config.size).gflops == pytest.approx(expected, abs=1e-3)


def test_x3d_blocks_follow_pyslowfast():
    model = create_model("x3d_s_tiny")
    stem_convs = [module for module in model.stem if isinstance(module, nn.Conv3d)]
    assert [conv.kernel_size for conv in stem_convs] == [(1, 3, 3), (5, 1, 1)]
    assert stem_convs[1].groups == model.config.stem_channels
    for stage in model.stages:
        se_flags = [isinstance(block.squeeze_excite, SqueezeExcite) for block in stage]
        assert se_flags == [index % 2 == 0 for index in range(len(stage))]
        first = stage[0]
        assert isinstance(first.shortcut, nn.Sequential)  # projection: channels and resolution change
        assert first.depthwise[0].groups == first.depthwise[0].in_channels
        assert first.depthwise[0].stride == (1, 2, 2)
        assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])
    assert isinstance(blocks(model)[0].depthwise_act, nn.SiLU)


def test_e3d_keeps_a_residual_only_where_channels_match():
    model = create_model("e3d_s_tiny")
    assert len([module for module in model.stem if isinstance(module, nn.Conv3d)]) == 1
    for block in blocks(model):
        conv_in, conv_out = block.expand[0].in_channels, block.project[0].out_channels
        stride = block.depthwise[0].stride[1]
        if conv_in != conv_out:
            assert block.shortcut is None
        elif stride == 2:
            assert isinstance(block.shortcut, nn.AvgPool3d)
        else:
            assert isinstance(block.shortcut, nn.Identity)
    assert isinstance(blocks(model)[0].shortcut, nn.AvgPool3d), "stage 1: 16 -> 16 channels with stride 2"
    assert isinstance(blocks(model)[0].depthwise_act, nn.ReLU)


def test_strided_identity_residual_handles_odd_sizes():
    model = create_model("e3d_s_tiny", size=78).eval()  # 39x39 after the stem: the pooled residual must fit
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 78, 78)).shape == (1, 400)


def test_se_width_rounds_like_pyslowfast():
    assert [se_width(channels, 1 / 16) for channels in (54, 108, 216, 432)] == [8, 8, 16, 32]


def test_blocks_with_a_shortcut_start_as_the_identity_path():
    model = create_model("x3d_s_tiny").eval()
    block = model.stages[1][1]
    x = torch.randn(1, block.expand[0].in_channels, 2, 4, 4).relu()
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_clips_are_sampled_densely_with_the_papers_strides():
    for name, stride, crop in (("x3d_s", 6, 160), ("x3d_m", 5, 224), ("e3d_l", 5, 312)):
        with torch.device("meta"):
            prep = create_model(name).preprocessing()
        assert (prep.sampling, prep.stride, prep.crop_size) == ("dense", stride, crop)
        assert prep.short_side == round(crop * 256 / 224)


def test_stage_spec_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        StageSpec(kernel=4, temporal_kernel=3, layers=1, bottleneck=8, out_channels=8)


def test_e3d_preset_needs_an_arch_and_builds_one(tmp_path):
    with pytest.raises(TypeError, match="arch="):
        create_model("e3d")
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"architecture": architecture_of(E3D_S)}))
    model = create_model("e3d", arch=str(path), num_classes=5)
    assert model.config.stages == E3D_S.stages and model.config.arch is None  # resolved: no file needed later
    with torch.device("meta"):
        paper = create_model("e3d_s", num_classes=5)
    assert count_flops(model, 13, 160) == count_flops(paper, 13, 160)


def test_arch_file_with_unknown_fields_is_refused(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"architecture": {**architecture_of(E3D_S), "dropout": 0.9}}))
    with pytest.raises(ValueError, match="dropout"):
        create_model("e3d", arch=str(path))
