"""AdaFuse: gated execution against the masked reference, executed MACs against Eq. 5 and fvcore, training
path, policy records, forced savings, and the paper's figures."""

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from flops_reference import fvcore_gflops
from partitions import executing_partitions
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.cli import main as clipwise_main
from clipwise.models import count_flops, create_model, track_macs
from clipwise.models.adafuse import KEEP, REUSE, SKIP, AdaFuse, AdaFuseBlock, fuse_masked, gated_conv_pair
from clipwise.models.folding import FoldedConv
from clipwise.models.gating_partitions import PARTITIONS
from clipwise.models.policy import AdaFusePolicy
from clipwise.models.tsn import BasicBlock, Bottleneck

PAPER = ["adafuse_tsn_r18", "adafuse_tsn_r50", "adafuse_tsm_r50", "adafuse_tsm_last_r50"]
TINY = [f"{name}_tiny" for name in PAPER]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster


def random_clips(clips: int, frames: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(clips, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def decisions(kind: str, clips: int, frames: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(N, T, C) keep / reuse / skip codes of one block for a named test case."""
    if kind == "keep":
        return torch.full((clips, frames, width), KEEP)
    if kind == "skip":
        return torch.full((clips, frames, width), SKIP)
    if kind == "reuse":  # every frame copies the one before; the first frame reuses nothing
        return torch.full((clips, frames, width), REUSE)
    codes = torch.randint(0, 3, (clips, frames, width), generator=generator)
    if kind == "edges":  # a frame with everything skipped, one reusing everything, one reusing from it
        codes[0, 1], codes[0, 2], codes[-1, 0] = SKIP, REUSE, REUSE
        codes[-1, :, : width // 2] = REUSE
    return codes


def first_frame_reuse_as_skip(codes: torch.Tensor) -> torch.Tensor:
    codes = codes.clone()
    codes[:, 0][codes[:, 0] == REUSE] = SKIP
    return codes


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


# conv1's union is already in whole blocks: "blocks" is conv2's alone
PARTITION_PAIRS = [(first, second) for first in PARTITIONS if first != "blocks" for second in PARTITIONS]


def computed_channels(mask: torch.Tensor, partition: str, *, blocks: bool = False) -> torch.Tensor:
    """(N, T) channels a partition computes at each frame, for a (N, T, C) mask of what each frame needs:
    dense every channel, union those any frame of the batch needs (blocks: in whole blocks), clips those any
    frame of the clip needs,
    sets each frame's own (the partitions' definitions, counted here channel by channel); ``blocks``: in whole
    blocks of 16 channels where the width is made of them (conv1's output channels)."""
    n, t, c = mask.shape
    if blocks and c % 16 == 0:  # channel sets are whole 16-channel blocks: a block any of whose channels is needed
        mask = mask.view(n, t, c // 16, 16).any(-1).repeat_interleave(16, dim=-1)
    if partition == "blocks":  # the union, in whole blocks where the width is made of them
        return computed_channels(mask, "union", blocks=True)
    if partition == "dense":
        return torch.full((n, t), c)
    if partition == "union":
        return torch.full((n, t), int(mask.any(0).any(0).sum()))
    if partition == "clips" and n > 1:
        return mask.any(1).sum(-1, keepdim=True).expand(n, t)
    if partition == "clips":  # one clip: the same as the union
        return computed_channels(mask, "union", blocks=blocks)
    return mask.sum(-1)


@pytest.mark.parametrize("name", TINY)
def test_tiny_presets_run_and_report_their_policy(name):
    model = create_model(name).eval()
    execution = model.execute(random_clips(2, 4, 64))
    assert execution.logits.shape == (2, model.config.num_classes)
    assert torch.isfinite(execution.logits).all()
    assert len(execution.policy) == 2 and all(isinstance(p, AdaFusePolicy) for p in execution.policy)
    assert all(0 < gflops <= execution.full_gflops for gflops in execution.executed_gflops)


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_count_on_the_meta_device(name):
    with torch.device("meta"):
        model = create_model(name)
    with torch.device("meta"):
        backbone = create_model(name.removeprefix("adafuse_").replace("_last", ""))
    cost, dense = count_flops(model, 8, 224), count_flops(backbone, 8, 224)
    assert dense.gflops < cost.gflops < dense.gflops * 1.01  # the policy nets cost under 1%
    assert cost.params_m > dense.params_m


@pytest.mark.parametrize(
    ("block", "stride"), [(BasicBlock(8, 16, stride=2), 2), (Bottleneck(32, 16, stride=2), 2), (Bottleneck(64, 16), 1)]
)
@pytest.mark.parametrize("kind", ["random", "keep", "skip", "reuse", "edges"])
@pytest.mark.parametrize(("partition1", "partition2"), PARTITION_PAIRS)
def test_gated_pair_equals_the_masked_reference(block, stride, kind, partition1, partition2):
    clips, frames, width = 3, 4, block.conv1.out_channels
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(clips * frames, block.conv1.in_channels, 12, 12, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last)
    randomise_batch_norms(block, (x, frames))
    codes = first_frame_reuse_as_skip(decisions(kind, clips, frames, width, generator))

    with torch.inference_mode():
        masks = F.one_hot(codes, 3).float()
        expected = block.bn2(block.conv2(fuse_masked(block.relu(block.bn1(block.conv1(x))), masks)))
        first, second = FoldedConv.of(block.conv1, block.bn1), FoldedConv.of(block.conv2, block.bn2)
        with track_macs(clips) as tracker, executing_partitions(partition1, partition2):
            actual = gated_conv_pair(x, codes, first, second)

    assert actual.shape == expected.shape == (clips * frames, block.conv2.out_channels, 12 // stride, 12 // stride)
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(actual, expected) < 1e-4
    # Executed MACs, counted per conv call, against the channels each partition computes counted here (for
    # "sets", every frame its own channels: Eq. 5).
    keep, reuse = (codes == KEEP), (codes == REUSE)
    needed, active = keep | F.pad(reuse[:, 1:], (0, 0, 0, 1)), keep | reuse
    per_channel_first = (
        block.conv1.in_channels * math.prod(block.conv1.kernel_size) * (12 // block.conv1.stride[0]) ** 2
    )
    per_channel_second = block.conv2.out_channels * 9 * (12 // stride) ** 2
    expected_macs = (
        computed_channels(needed, partition1, blocks=True).sum(1) * per_channel_first
        + computed_channels(active, partition2).sum(1) * per_channel_second
    )
    assert tracker.per_clip.tolist() == expected_macs.double().tolist()


def test_a_gated_pair_computed_by_hand():
    """Two frames, four channels, 1×1 convs on one pixel: conv1 gives channel c of frame t as w_c · x_t, the
    decisions fuse them, conv2 sums the fused channels plus 0.5. Written out: frame 0 keeps channels 0 and
    2 (1 + 3); frame 1 reuses channel 0 (1, from frame 0), keeps channel 1 (20), skips 2, reuses channel 3
    (4, from frame 0, which computed it only to pass it on)."""
    first = FoldedConv(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1), torch.zeros(4), (1, 1), (0, 0), (1, 1))
    second = FoldedConv(torch.ones(1, 4, 1, 1), torch.tensor([0.5]), (1, 1), (0, 0), (1, 1))
    x = torch.tensor([1.0, 10.0]).view(2, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    codes = torch.tensor([[[KEEP, SKIP, KEEP, SKIP], [REUSE, KEEP, SKIP, REUSE]]])
    # MACs: conv1 computes {0, 2, 3} at frame 0 and {1} at frame 1 under "sets"; conv2 reads {0, 2}, then
    # {0, 1, 3}; "dense" and "union" (every channel is needed somewhere) compute 4 + 4 for each conv.
    macs = {"sets": 3 + 1 + 2 + 3, "dense": 16, "union": 16, "clips": 16}
    for partition, expected_macs in macs.items():
        with torch.inference_mode(), track_macs(1) as tracker, executing_partitions(partition, partition):
            out = gated_conv_pair(x, codes, first, second)
        assert out.flatten().tolist() == [4.5, 25.5], partition
        assert tracker.per_clip.tolist() == [expected_macs], partition


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("adafuse_tsn_r18_tiny", "edges"),
        ("adafuse_tsm_r50_tiny", "edges"),
        ("adafuse_tsm_last_r50_tiny", "edges"),
        ("adafuse_tsm_r50_tiny", "skip"),
        ("adafuse_tsm_r50_tiny", "reuse"),
    ],
)
def test_model_gated_execution_equals_masked_and_eq5(name, kind):
    clips, frames = 2, 4
    x = random_clips(clips, frames, 64)
    model = randomise_batch_norms(create_model(name), x)
    generator = torch.Generator().manual_seed(2)
    forced = [decisions(kind, clips, frames, b.conv1.out_channels, generator) for b in model.gated_blocks()]

    def masked_logits(model: AdaFuse) -> torch.Tensor:
        with torch.inference_mode(), model.follow_policy(forced), model.masked_execution():
            return model.frame_logits(x)

    expected = masked_logits(model)
    assert_branches_live(model, masked_logits, rtol=0, atol=1e-4 * expected.abs().max())
    with torch.inference_mode(), model.follow_policy(forced):
        model(x)
        eq5 = model.policy_gflops().tolist()
        for partition1, partition2 in PARTITION_PAIRS:
            with executing_partitions(partition1, partition2):
                execution = model.execute(x)
                actual = model.frame_logits(x)
            assert relative_error(actual, expected) < 1e-4, (partition1, partition2)
            assert torch.allclose(execution.logits, actual.mean(1))
            assert execution.policy_gflops == pytest.approx(eq5, rel=1e-6)  # what the policy asked, however run
            # what ran covers what was asked for (whole 16-channel blocks: at least Eq. 5's channels)
            assert all(e >= p * (1 - 1e-6) for e, p in zip(execution.executed_gflops, eq5, strict=True))


@pytest.mark.parametrize("name", ["adafuse_tsn_r18_tiny", "adafuse_tsm_r50_tiny"])
@pytest.mark.parametrize("partition", PARTITIONS)
def test_executed_gflops_equal_fvcore_of_the_executed_graph(name, partition):
    """fvcore traces the gated forward under a fixed random policy: the traced graph is the static network
    of exactly those gathered convolutions, and fvcore counts it independently of ``record_macs``."""
    frames, size = 4, 32
    model = create_model(name, frames=frames, size=size).eval()
    generator = torch.Generator().manual_seed(3)
    forced = [decisions("random", 1, frames, b.conv1.out_channels, generator) for b in model.gated_blocks()]
    with model.follow_policy(forced), executing_partitions(partition, partition):
        executed = model.execute(random_clips(1, frames, size)).executed_gflops[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warns about the data-dependent channel plans
            reference = fvcore_gflops(model, frames, size)
    assert executed == pytest.approx(reference, rel=1e-9)
    assert executed <= model.full_gflops(frames, size)


def test_policy_net_decisions_cost_what_eq5_says():
    model = create_model("adafuse_tsn_r50_tiny").eval()
    for block in model.gated_blocks():  # logits far apart, so that all three decisions occur
        for fc in (block.policy.fc_in, block.policy.fc_out):
            torch.nn.init.normal_(fc.weight)
    clips = random_clips(3, 4, 64)
    with torch.inference_mode():
        execution = model.execute(clips)
        model(clips)
    eq5 = model.policy_gflops().tolist()
    policy = execution.policy
    assert execution.policy_gflops == [p.gflops for p in policy] == pytest.approx(eq5, rel=1e-9)
    assert all(e >= p * (1 - 1e-6) for e, p in zip(execution.executed_gflops, eq5, strict=True))
    assert all(0.05 < p.overall.keep < 0.95 and p.overall.skip > 0.05 and p.overall.reuse > 0.05 for p in policy)


def test_policy_record_counts_every_block_and_frame():
    model = create_model("adafuse_tsn_r18_tiny").eval()
    clips, frames = 2, 4
    generator = torch.Generator().manual_seed(4)
    forced = [decisions("random", clips, frames, b.conv1.out_channels, generator) for b in model.gated_blocks()]
    with torch.inference_mode(), model.follow_policy(forced):
        policy = model.forward_with_policy(random_clips(clips, frames, 64))[1]

    executed = [first_frame_reuse_as_skip(codes) for codes in forced]
    for clip, record in enumerate(policy):
        assert len(record.blocks) == len(forced) and len(record.frames) == frames
        for block, codes in zip(record.blocks, executed, strict=True):
            fractions = [(codes[clip] == code).double().mean().item() for code in (KEEP, REUSE, SKIP)]
            assert [block.keep, block.reuse, block.skip] == pytest.approx(fractions)
        assert record.frames[0].reuse == 0  # a reuse at the first frame is executed as the skip it is
        all_codes = torch.cat([codes[clip] for codes in executed], dim=1)
        assert record.overall.skip == pytest.approx((all_codes == SKIP).double().mean().item())


def test_training_draws_hard_decisions_and_both_loss_terms_reach_the_policy_nets():
    model = create_model("adafuse_tsm_r50_tiny").train()
    clips, labels = random_clips(2, 4, 64), torch.tensor([0, 1])
    policy_fcs = [fc.weight for block in model.gated_blocks() for fc in (block.policy.fc_in, block.policy.fc_out)]

    def gradients_of(term: str) -> list[torch.Tensor]:
        model.zero_grad()
        logits = model(clips)
        loss = F.cross_entropy(logits, labels) if term == "cross_entropy" else model.policy_gflops().mean()
        loss.backward()
        return [weight.grad for weight in policy_fcs]

    for term in ("cross_entropy", "gflops"):
        grads = gradients_of(term)
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0, term
    masks = model.last_record.blocks[0].masks
    assert set(masks.sum(-1).unique().tolist()) == {1.0} and set(masks.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0 < model.policy_gflops().min().item() <= model.full_gflops(4, 64)


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_force_saving_reaches_the_fraction_on_the_paper_model(fraction, reuse):
    with torch.device("meta"):
        model = create_model("adafuse_tsn_r50")
    with model.force_saving(fraction, reuse=reuse) as saved:
        assert saved == pytest.approx(fraction, abs=0.005)


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("fraction", [0.2, 0.4])
def test_force_saving_is_one_fixed_policy_executing_what_it_claims(fraction, reuse):
    model = create_model("adafuse_tsn_r50_tiny").eval()
    with torch.inference_mode(), model.force_saving(fraction, reuse=reuse) as saved:
        execution = model.execute(random_clips(2, 8, 64))
        second = model.execute(random_clips(2, 8, 64, seed=1))
    assert saved == pytest.approx(fraction, abs=0.02)
    full = execution.full_gflops
    assert execution.policy_gflops == pytest.approx([full * (1 - saved)] * 2, rel=1e-6)  # float32 masks
    assert all(full * (1 - saved) * (1 - 1e-6) <= executed <= full for executed in execution.executed_gflops)
    assert execution.policy[0] == execution.policy[1] == second.policy[0]
    usage = execution.policy[0].overall
    assert usage.skip > 0 and (usage.reuse > 0) == reuse


def test_full_compute_keeps_everything_and_costs_the_full_figure():
    model = create_model("adafuse_tsn_r50_tiny").eval()
    with torch.inference_mode(), model.full_compute():
        execution = model.execute(random_clips(1, 8, 64))
    assert execution.executed_gflops == [pytest.approx(execution.full_gflops, rel=1e-12)]
    assert execution.policy[0].overall.keep == 1.0
    assert all(p.device.type == "cpu" for p in model.parameters())  # the meta pass left the real weights


def test_tsn_weights_load_with_only_the_policy_nets_new():
    for adafuse, tsn in (("adafuse_tsn_r50_tiny", "tsn_r50_tiny"), ("adafuse_tsm_last_r50_tiny", "tsm_r50_tiny")):
        model = create_model(adafuse)
        missing, unexpected = model.load_state_dict(create_model(tsn).state_dict(), strict=False)
        assert not unexpected and missing and all(".policy." in key for key in missing)
    gated = [name for name, m in model.named_modules() if isinstance(m, AdaFuseBlock)]
    assert gated == ["backbone.layer4.0", "backbone.layer4.1"]  # TSM+Last: the last stage only


def test_adafuse_tsn_r50_matches_the_paper():
    with torch.device("meta"):
        model, tsn = create_model("adafuse_tsn_r50"), create_model("tsn_r50")
    cost, dense = count_flops(model, 8, 224), count_flops(tsn, 8, 224)
    assert cost.params_m == pytest.approx(37.7, rel=0.03)  # the paper's, with FCs shared within a stage
    assert cost.params_m == pytest.approx(37.6866, abs=1e-4)
    # Full compute: TSN-R50 plus both policy FCs of every block on every frame (hidden 196608 / width).
    policy_macs, in_channels = 0, 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for _ in range(blocks):
            hidden = 196608 // width
            policy_macs += 2 * in_channels * hidden + hidden * 3 * width
            in_channels = 4 * width
    assert cost.gflops == pytest.approx(dense.gflops + 8 * policy_macs / 1e9, rel=1e-12)
    assert cost.gflops == pytest.approx(33.2, rel=0.03)  # the paper's TSN-R50 figure (Table 5)


def test_flops_command_prints_the_full_compute_figure(capsys):
    assert clipwise_main(["flops", "--model", "adafuse_tsn_r50", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        model = create_model("adafuse_tsn_r50")
    expected = count_flops(model, 8, 224)
    assert printed == {"gflops": round(expected.gflops, 4), "params_m": round(expected.params_m, 4)}


def test_follow_policy_rejects_decisions_of_the_wrong_shape():
    model = create_model("adafuse_tsn_r18_tiny")
    assert isinstance(model, AdaFuse)
    widths = [b.conv1.out_channels for b in model.gated_blocks()]
    with pytest.raises(ValueError, match="gated blocks"):
        model.follow_policy([torch.zeros(4, w, dtype=torch.long) for w in widths[1:]])
    with pytest.raises(ValueError, match="width"):
        model.follow_policy([torch.zeros(4, w + 1, dtype=torch.long) for w in widths])
