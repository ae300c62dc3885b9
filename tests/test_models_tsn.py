"""TSN / TSM: forward passes, the temporal shift, FLOPs against the papers (fvcore: test_zoo), registry and CLI."""

import json

import pytest
import torch
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.cli import main as clipwise_main
from clipwise.models import count_flops, create_model
from clipwise.models.tsn import Bottleneck, TemporalShift, TSNConfig

PAPER = ["tsn_r18", "tsn_r50", "tsm_r18", "tsm_r50"]
TINY = [f"{name}_tiny" for name in PAPER]


def random_clips(clips: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(clips, 3, frames, size, size, generator=generator)


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_gives_finite_logits_per_clip(name):
    model = create_model(name).eval()
    with torch.no_grad():
        logits = model(random_clips(2, 4, 64))
    assert logits.shape == (2, model.config.num_classes)
    assert torch.isfinite(logits).all()


def test_shift_moves_one_eighth_back_one_eighth_forward_with_zero_padding():
    clips, frames, channels = 2, 4, 16
    # Every entry names its clip, frame and channel: 1000 n + 100 t + c + 1 (never zero).
    n, t, c = torch.meshgrid(torch.arange(clips), torch.arange(frames), torch.arange(channels), indexing="ij")
    codes = (1000 * n + 100 * t + c + 1).float()
    x = codes.reshape(clips * frames, channels, 1, 1).expand(-1, -1, 3, 3).contiguous()

    out = TemporalShift(shift_div=8)(x, frames).view(clips, frames, channels, 3, 3)

    expected = torch.zeros(clips, frames, channels)
    for clip in range(clips):
        for frame in range(frames):
            for channel in range(channels):
                source = frame + 1 if channel < 2 else frame - 1 if channel < 4 else frame
                if 0 <= source < frames:
                    expected[clip, frame, channel] = 1000 * clip + 100 * source + channel + 1
    assert torch.equal(out, expected[..., None, None].expand_as(out))
    moved = out[:, :, :4]
    assert ((moved == 0) | (moved // 1000 == torch.arange(clips).view(-1, 1, 1, 1, 1))).all()


def test_shift_keeps_channels_last_frames_apart():
    x = torch.randn(6, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    shifted = TemporalShift(8)(x, 3)
    assert shifted.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(shifted, TemporalShift(8)(x.contiguous(), 3))


def test_tsm_shifts_the_residual_branch_only():
    block = Bottleneck(in_channels=64, width=16, shift_div=8).eval()
    x = torch.randn(4, 64, 6, 6).relu()
    with torch.no_grad():
        block.bn3.weight.zero_()  # the branch outputs zeros: what is left is the identity path
    assert torch.equal(block(x, frames=4), x)  # with autograd: the unfolded modules, which hooks see
    captured = []
    block.conv1.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    block(x, frames=4)
    assert torch.equal(captured[0], block.shift(x, 4))


@pytest.mark.parametrize("name", ["tsn_r18_tiny", "tsm_r50_tiny"])
def test_folded_inference_equals_the_modules(name):
    """Inference folds every block's batch norms into its convolutions; the features are the modules' own."""
    model = randomise_batch_norms(create_model(name, num_classes=5))
    frames = random_clips(2, 4, 64).transpose(1, 2).reshape(8, 3, 64, 64)

    def folded(network: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return network.backbone(frames, 4)

    reference = model.backbone(frames, 4).detach()  # autograd on: the modules one by one
    torch.testing.assert_close(folded(model), reference, rtol=1e-4, atol=1e-4)
    assert_branches_live(model, folded, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["tsn_r18_tiny", "tsm_r50_tiny"])
def test_clips_of_a_batch_never_mix(name):
    model = create_model(name).eval()
    clips = random_clips(2, 4, 64)
    altered = clips.clone()
    altered[1] = random_clips(1, 4, 64, seed=1)[0]
    with torch.no_grad():
        first, second = model(clips), model(altered)
    assert torch.allclose(first[0], second[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(first[1], second[1])


def test_tsn_is_the_average_of_independent_frames():
    model = create_model("tsn_r18_tiny").eval()
    clip = random_clips(1, 4, 64)
    with torch.no_grad():
        one_frame_at_a_time = torch.stack([model(clip[:, :, [t]]) for t in range(4)]).mean(dim=0)
        assert torch.allclose(model(clip), one_frame_at_a_time, rtol=1e-4, atol=1e-6)
        tsm = create_model("tsm_r18_tiny").eval()
        tsm.load_state_dict(model.state_dict())
        assert not torch.allclose(tsm(clip), model(clip), rtol=1e-4, atol=1e-6)


def paper_cost(name: str, size: int, num_classes: int = 174):
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, frames=8, size=size)
    return count_flops(model, 8, size)


def test_tsn_r50_matches_the_papers():
    at_224, at_256 = paper_cost("tsn_r50", 224), paper_cost("tsn_r50", 256)
    assert at_224.gflops == pytest.approx(33.0, rel=0.03)
    assert at_224.params_m == pytest.approx(24.3, rel=0.03)
    assert at_256.gflops == pytest.approx(43.0, rel=0.03)
    # Our exact figures (see the module docstring); TSM's 24.3 M is the 400-class (Kinetics) count.
    assert at_224.gflops == pytest.approx(32.700, abs=5e-4)
    assert at_256.gflops == pytest.approx(42.709, abs=5e-4)
    assert at_224.params_m == pytest.approx(23.865, abs=5e-4)
    assert paper_cost("tsn_r50", 224, num_classes=400).params_m == pytest.approx(24.3, rel=0.002)


@pytest.mark.parametrize("depth", [18, 50])
def test_the_shift_is_free(depth):
    assert paper_cost(f"tsm_r{depth}", 224) == paper_cost(f"tsn_r{depth}", 224)


def test_create_model_applies_overrides():
    with torch.device("meta"):
        model = create_model("tsn_r50", num_classes=174, frames=8, layers=[1, 1, 1, 1])
    assert isinstance(model.config, TSNConfig)
    assert (model.config.num_classes, model.config.frames, model.config.layers) == (174, 8, (1, 1, 1, 1))
    assert model.fc.out_features == 174
    assert [len(stage) for stage in model.backbone.stages()] == [1, 1, 1, 1]
    assert model.preprocessing().sampling == "segments"
    with pytest.raises(ValueError, match="depth"):
        create_model("tsn_r50", depth=34)


def test_flops_command_prints_the_paper_figure(capsys):
    arguments = ["flops", "--model", "tsn_r50", "--frames", "8", "--size", "224", "--classes", "174", "--json"]
    assert clipwise_main(arguments) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = paper_cost("tsn_r50", 224)
    assert printed == {"gflops": round(expected.gflops, 4), "params_m": round(expected.params_m, 4)}
    assert printed["gflops"] == pytest.approx(33.0, rel=0.03)
