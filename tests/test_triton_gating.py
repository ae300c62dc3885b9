"""AdaFuse's Triton gated-pair kernels (``clipwise.export.triton_gating``) against the dense masked reference.

Without CUDA they run on CPU tensors in Triton's interpreter: ``TRITON_INTERPRET=1`` is set here, before the
module (and so Triton's ``jit``) is imported, for this process; no other test module imports Triton. With
CUDA the same tests run the compiled kernels on the GPU (TF32 off, so both sides compute float32). Shapes are
tiny: the interpreter runs every program of a grid one after the other.

The MACs the kernels report are nominal, the decisions' cost by Eq. 5: they are checked against training's
count of the same decisions (``clipwise.models.adafuse.BlockDecisions``), and once against a count made by hand.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from randomised import assert_branches_live, randomise_batch_norms  # noqa: E402

from clipwise.export.triton_gating import gated_conv_pair as triton_gated_conv_pair  # noqa: E402
from clipwise.models import create_model  # noqa: E402
from clipwise.models.adafuse import KEEP, REUSE, SKIP, AdaFuse, BlockDecisions, executing_gated_pairs, fuse_masked  # noqa: E402
from clipwise.models.adafuse import gated_conv_pair as eager_gated_conv_pair  # noqa: E402
from clipwise.models.flops import record_macs, track_macs  # noqa: E402
from clipwise.models.folding import FoldedConv  # noqa: E402

DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
TOLERANCE = 1e-4
TINY_PRESETS = ["adafuse_tsn_r18_tiny", "adafuse_tsn_r50_tiny", "adafuse_tsm_r50_tiny", "adafuse_tsm_last_r50_tiny"]


@pytest.fixture(autouse=True)
def float32_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF32 off: the kernels then compute IEEE float32, like the CPU reference."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def folded(in_channels: int, out_channels: int, kernel: tuple[int, int], stride: tuple[int, int], seed: int, *,
           dilation: tuple[int, int] = (1, 1)) -> FoldedConv:  # fmt: skip
    """A random folded convolution, 'same' padding for its kernel and dilation."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, *kernel, generator=generator) / math.sqrt(in_channels)
    padding = tuple(d * (k // 2) for k, d in zip(kernel, dilation, strict=True))
    return FoldedConv(weight, torch.randn(out_channels, generator=generator), stride, padding, dilation)


def on(conv: FoldedConv, device: torch.device) -> FoldedConv:
    return FoldedConv(conv.weight.to(device), conv.bias.to(device), conv.stride, conv.padding, conv.dilation)


def masked_reference(x, codes, first, second, residual, relu):
    """The dense masked formulation: every channel computed, then kept / reused / zeroed (training's path)."""
    masks = F.one_hot(codes, 3).float()
    masks[:, 0, :, SKIP] += masks[:, 0, :, REUSE]  # a reuse at the first frame copies zeros
    masks[:, 0, :, REUSE] = 0
    y = F.conv2d(x, first.weight, first.bias, first.stride, first.padding, first.dilation).relu()
    out = F.conv2d(fuse_masked(y, masks), second.weight, second.bias, second.stride, second.padding, second.dilation)
    if residual is not None:
        out = out + residual
    return out.relu() if relu else out


def eq5_macs(x: torch.Tensor, codes: torch.Tensor, first: FoldedConv, second: FoldedConv) -> list[float]:
    """Per clip, Eq. 5's MACs of the pair (``clipwise.models.adafuse.BlockDecisions``, the count training uses)."""
    y = F.conv2d(x[:1], first.weight, first.bias, first.stride, first.padding, first.dilation)
    z = F.conv2d(y, second.weight, None, second.stride, second.padding, second.dilation)
    conv1 = y[0].numel() * x.shape[1] * math.prod(first.kernel_size)
    conv2 = z[0].numel() * y.shape[1] * math.prod(second.kernel_size)
    masks = F.one_hot(codes, 3).double()
    masks[:, 0, :, SKIP] += masks[:, 0, :, REUSE]
    masks[:, 0, :, REUSE] = 0
    saved = BlockDecisions(masks, conv1, conv2).saved_macs()
    return (codes.shape[1] * (conv1 + conv2) - saved).tolist()


def run_kernels(x, codes, first, second, residual, relu) -> tuple[torch.Tensor, list[float]]:
    """The Triton pair on ``DEVICE``: its output (on the CPU) and the nominal MACs it reported per clip."""
    on_device = [on(conv, DEVICE) for conv in (first, second)]
    with torch.inference_mode(), track_macs(codes.shape[0]) as macs:
        out = triton_gated_conv_pair(
            x.to(DEVICE), codes.to(DEVICE), *on_device, residual=None if residual is None else residual.to(DEVICE),
            relu=relu,
        )  # fmt: skip
    return out.cpu(), [gflops * 1e9 for gflops in macs.gflops]


def random_codes(clips: int, frames: int, channels: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 3, (clips, frames, channels), generator=torch.Generator().manual_seed(seed))


def check_pair(x, codes, first, second, *, residual=None, relu=False) -> torch.Tensor:
    """The kernels' output within 1e-4 of the masked reference and their nominal MACs Eq. 5's; the output."""
    got, macs = run_kernels(x, codes, first, second, residual, relu)
    expected = masked_reference(x, codes, first, second, residual, relu)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=TOLERANCE, atol=TOLERANCE)
    assert macs == pytest.approx(eq5_macs(x, codes, first, second), rel=1e-12)
    return got


# Geometry: (in, channels, out), conv1 / conv2 kernels and strides, input size. In the first two pairs,
# output channels, pixels and input channels (conv1's, and those conv2 reads) run past one tile (64 × 64 by
# 64); sizes are odd and not square, one kernel too.
PAIRS = {
    "1x1-then-3x3-stride2": ((70, 36, 70), (1, 1), (1, 1), (3, 3), (2, 2), (9, 11)),
    "3x3-stride2-then-3x3": ((5, 90, 6), (3, 3), (2, 2), (3, 3), (1, 1), (13, 11)),
    "3x1-then-1x3-stride-2x1": ((6, 9, 7), (3, 1), (1, 1), (1, 3), (2, 1), (7, 5)),
}


@pytest.mark.parametrize("pair", PAIRS)
def test_per_frame_channel_sets_match_the_masked_reference(pair):
    (cin, channels, cout), kernel1, stride1, kernel2, stride2, size = PAIRS[pair]
    first, second = folded(cin, channels, kernel1, stride1, 0), folded(channels, cout, kernel2, stride2, 1)
    clips, frames = 2, 2
    x = torch.randn(clips * frames, cin, *size, generator=torch.Generator().manual_seed(2))
    codes = random_codes(clips, frames, channels, seed=3)
    codes[..., :50][codes[..., :50] == SKIP] = KEEP  # conv2 reads more channels than one tile of them
    needed = (codes == KEEP) | F.pad(codes[:, 1:] == REUSE, (0, 0, 0, 1))
    assert len({tuple(row.tolist()) for row in needed.flatten(0, 1)}) == clips * frames  # every frame its own set
    residual = torch.randn(masked_reference(x, codes, first, second, None, False).shape)
    check_pair(x, codes, first, second, residual=residual, relu=True)


def test_channels_last_maps_stay_channels_last():
    """The backbone's layout in, the same layout out (strides are the kernels' arguments)."""
    first, second = folded(6, 40, (1, 1), (1, 1), 0), folded(40, 8, (3, 3), (1, 1), 1)
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(2)).contiguous(
        memory_format=torch.channels_last
    )
    got = check_pair(x, random_codes(1, 2, 40, seed=3), first, second, relu=True)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_dilated_conv2_matches_the_masked_reference():
    first, second = folded(4, 8, (1, 1), (1, 1), 0), folded(8, 5, (3, 3), (1, 1), 1, dilation=(2, 2))
    x = torch.randn(4, 4, 9, 9, generator=torch.Generator().manual_seed(2))
    check_pair(x, random_codes(1, 4, 8, seed=5), first, second, relu=True)


def test_the_nominal_macs_are_the_decisions_counted_by_hand():
    """Per frame, conv1 computes the channels kept there or reused at the next frame, and conv2 reads those
    kept or reused there (a reuse at frame 0 is a skip): counted here from the codes written out below."""
    first, second = folded(4, 6, (3, 3), (1, 1), 0), folded(6, 5, (1, 1), (1, 1), 1)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    k, r, s = KEEP, REUSE, SKIP
    codes = torch.tensor([[[k, k, r, s, s, k], [r, k, r, r, s, s], [k, s, s, r, k, r]]])
    conv1_channels = 5 + 3 + 2  # frame 0: kept 0 1 5, reused next 0 2 3; frame 1: kept 1, reused next 3 5; 0 4
    conv2_channels = 3 + 4 + 4  # frame 0: kept 0 1 5 (2 a skip); frame 1: 1 and 0 2 3; frame 2: 0 4 and 3 5
    conv1_channel, conv2_channel = 5 * 5 * 4 * 3 * 3, 5 * 5 * 5 * 1 * 1  # pixels × inputs × taps, × outputs
    _, macs = run_kernels(x, codes, first, second, None, False)
    assert macs == [conv1_channels * conv1_channel + conv2_channels * conv2_channel]


def test_reuse_at_a_clips_first_frame_copies_zeros_and_counts_as_a_skip():
    first, second = folded(4, 6, (3, 3), (1, 1), 0), folded(6, 5, (3, 3), (1, 1), 1)
    clips, frames = 2, 3
    x = torch.randn(clips * frames, 4, 7, 7, generator=torch.Generator().manual_seed(2))
    codes = torch.full((clips, frames, 6), KEEP)
    codes[:, 0, :3] = REUSE  # the first frame of both clips: nothing to reuse; clip 1 must not see clip 0's end
    codes[1, 1, 3:] = REUSE
    got = check_pair(x, codes, first, second)
    as_skip = codes.clone()
    as_skip[:, 0, :3] = SKIP
    assert torch.equal(got, run_kernels(x, as_skip, first, second, None, False)[0])


@pytest.mark.parametrize("skipped", ["one frame", "every frame"])
def test_all_skipped_frames_give_the_bias_and_the_residual(skipped):
    first, second = folded(4, 6, (1, 1), (1, 1), 0), folded(6, 5, (3, 3), (2, 2), 1)
    x = torch.randn(4, 4, 9, 9, generator=torch.Generator().manual_seed(2))
    codes = random_codes(1, 4, 6, seed=6)
    codes[:, 2 if skipped == "one frame" else slice(None)] = SKIP
    codes[:, 3][codes[:, 3] == REUSE] = KEEP  # frame 2 computes nothing for frame 3
    residual = torch.randn(4, 5, 5, 5, generator=torch.Generator().manual_seed(4))
    got = check_pair(x, codes, first, second, residual=residual, relu=True)
    torch.testing.assert_close(got[2], (second.bias[:, None, None] + residual[2]).relu(), rtol=0, atol=1e-6)


def test_keeping_everything_is_the_dense_pair():
    first, second = folded(5, 7, (3, 3), (1, 1), 0), folded(7, 6, (1, 1), (1, 1), 1)
    x = torch.randn(3, 5, 6, 6, generator=torch.Generator().manual_seed(2))
    got = check_pair(x, torch.full((1, 3, 7), KEEP), first, second, relu=True)
    with torch.inference_mode():
        dense = eager_gated_conv_pair(x, None, first, second, relu=True)
    torch.testing.assert_close(got, dense, rtol=TOLERANCE, atol=TOLERANCE)


def trained_like(name: str) -> AdaFuse:
    """A tiny AdaFuse preset with random batch norms (like a trained one)."""
    torch.manual_seed(0)
    return randomise_batch_norms(create_model(name, frames=2, size=32, num_classes=5))


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_every_gated_pair_of_the_tiny_presets_runs_on_the_kernels(name):
    """The model on the kernels, on random decisions: each gated pair's output within 1e-4 of the masked
    reference on the same input and its nominal MACs Eq. 5's; the model's logits those of the masked reference and its
    executed GFLOPs those of its policy (Eq. 5) exactly."""
    model = trained_like(name).to(DEVICE)
    clip = torch.randn(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    checked = []

    def checking(x, codes, first, second, *, residual=None, relu=False, costs=None):
        if codes is None:  # full compute (the model's FLOP count): the dense eager pair
            return triton_gated_conv_pair(x, codes, first, second, residual=residual, relu=relu)
        with track_macs(codes.shape[0]) as pair_macs:
            out = triton_gated_conv_pair(x, codes, first, second, residual=residual, relu=relu, costs=costs)
        record_macs(pair_macs.per_clip)  # into the model's count, as the executor alone would have
        cpu = [on(conv, torch.device("cpu")) for conv in (first, second)]
        args = (x.cpu(), codes.cpu(), *cpu, None if residual is None else residual.cpu(), relu)
        torch.testing.assert_close(out.cpu(), masked_reference(*args), rtol=TOLERANCE, atol=TOLERANCE)
        assert pair_macs.per_clip.tolist() == pytest.approx(eq5_macs(*args[:4]), rel=1e-12)
        checked.append(codes)
        return out

    blocks = model.gated_blocks()
    decisions = [random_codes(1, 2, block.conv1.out_channels, seed) for seed, block in enumerate(blocks)]
    with model.follow_policy(decisions), executing_gated_pairs(checking):
        execution = model.execute(clip)
    assert len(checked) == len(blocks)

    def masked_logits(model: AdaFuse) -> torch.Tensor:
        with model.follow_policy(decisions), model.masked_execution():
            return model.execute(clip).logits.cpu()

    torch.testing.assert_close(execution.logits.cpu(), masked_logits(model), rtol=1e-3, atol=1e-4)
    assert_branches_live(model, masked_logits, rtol=1e-3, atol=1e-4)
    # Eq. 5 as the model counts it, from its float32 masks: equal to float32's precision
    assert execution.executed_gflops == pytest.approx(execution.policy_gflops, rel=1e-6)
    assert execution.policy[0].executed == ["triton/triton"] * len(blocks)  # what ran, as the policy reports it
