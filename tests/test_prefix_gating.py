"""Execution-aware AdaFuse (``structure="prefix"``): levels, their masks, and the sliced executor against the
dense masked reference, on models whose every branch shows in the output."""

from __future__ import annotations

import pytest
import torch
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.models import create_model
from clipwise.models.adafuse import AdaFuse
from clipwise.models.flops import count_flops
from clipwise.models.gating_partitions import KEEP, REUSE, SKIP
from clipwise.models.prefix_gating import PrefixChoice, choice_masks, prefix_choices

PRESET = "adafuse_tsn_r18_tiny"  # BasicBlocks of 16 … 128 channels at 8×64²


def prefix_model(name: str = PRESET, seed: int = 0) -> AdaFuse:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=5, structure="prefix")
    return randomise_batch_norms(model, seed=seed)


def clips_of(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 8, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_levels_are_quarters_in_blocks_of_16_channels():
    assert prefix_choices(64) == (
        PrefixChoice(64), PrefixChoice(48), PrefixChoice(32), PrefixChoice(16),
        PrefixChoice(48, 16), PrefixChoice(32, 16), PrefixChoice(16, 16),
    )  # fmt: skip
    assert prefix_choices(32) == (PrefixChoice(32), PrefixChoice(16), PrefixChoice(16, 16))
    assert prefix_choices(256)[:4] == (PrefixChoice(256), PrefixChoice(192), PrefixChoice(128), PrefixChoice(64))
    assert prefix_choices(16) == (PrefixChoice(16), PrefixChoice(8), PrefixChoice(8, 8))


def test_a_level_keeps_a_prefix_and_reuses_the_next_channels_on_odd_frames():
    masks = choice_masks((PrefixChoice(2, 1),), frames=3, width=4)[0]
    codes = masks.argmax(-1)
    assert codes.tolist() == [
        [KEEP, KEEP, KEEP, SKIP],
        [KEEP, KEEP, REUSE, SKIP],  # channel 2 copied from frame 0, which computed it
        [KEEP, KEEP, KEEP, SKIP],
    ]
    assert torch.equal(masks.sum(-1), torch.ones(3, 4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sliced_execution_equals_the_masked_reference(seed):
    model = prefix_model(seed=seed)
    clips = clips_of(2, seed)
    choices = model.random_choices(0.4, clips=2, seed=seed)
    assert any(bool((chosen >= 4).any()) for chosen in choices)  # some reuse levels among them

    def logits_of(network: AdaFuse, masked: bool = False) -> torch.Tensor:
        with torch.inference_mode(), network.follow_choices(choices):
            if masked:
                with network.masked_execution():
                    return network.execute(clips).logits
            return network.execute(clips).logits

    torch.testing.assert_close(logits_of(model), logits_of(model, masked=True), rtol=1e-4, atol=1e-5)
    assert_branches_live(model, logits_of, rtol=1e-4, atol=1e-5)


def test_executed_macs_are_each_clips_own_and_eq5():
    model = prefix_model()
    clips = clips_of(3)
    choices = model.random_choices(0.5, clips=3, seed=4)
    with torch.inference_mode(), model.follow_choices(choices):
        together = model.execute(clips)
        alone = []
        for n in range(3):
            with model.follow_choices([chosen[n] for chosen in choices]):
                alone.append(model.execute(clips[n : n + 1]))
    assert together.executed_gflops == pytest.approx(together.policy_gflops, rel=1e-6)
    for n, execution in enumerate(alone):
        assert together.executed_gflops[n] == pytest.approx(execution.executed_gflops[0], rel=1e-9)
        torch.testing.assert_close(together.logits[n], execution.logits[0], rtol=1e-4, atol=1e-6)
    assert len(set(together.executed_gflops)) > 1  # the clips chose differently
    assert all(entry == "prefix/prefix" for entry in together.policy[0].executed)


def test_the_cheapest_levels_cost_what_they_leave_by_hand():
    """Every block at its last level (one step kept, one more reused; the step is half of a block of 16 or 32
    channels, a quarter of wider ones): conv1 computes one step at odd frames and two at even ones, conv2 reads
    two steps."""
    model = prefix_model()
    blocks = model.gated_blocks()
    cheapest = [torch.tensor(len(block.policy.choices) - 1) for block in blocks]
    with torch.inference_mode(), model.follow_choices(cheapest):
        executed = model.execute(clips_of(1)).executed_gflops[0]
    step = {16: 0.5, 32: 0.5, 64: 0.25, 128: 0.25}
    saved = 0.0
    for block, cost in zip(blocks, model.block_costs(8, 64), strict=True):
        share = step[block.conv1.out_channels]
        saved += cost.conv1_macs * (8 - 4 * share - 4 * 2 * share)
        saved += cost.conv2_macs * 8 * (1 - 2 * share)
    assert executed == pytest.approx(model.full_gflops() - saved / 1e9, rel=1e-9)


def test_the_policy_decides_per_clip_and_full_compute_is_the_dense_model():
    model = prefix_model()
    dense = create_model("tsn_r18_tiny", num_classes=5)
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if ".policy." not in k})
    clips = clips_of(2)
    with torch.inference_mode():
        with model.full_compute():
            full = model.execute(clips)
        learned = model.execute(clips)
        reference = dense.eval().execute(clips)
    torch.testing.assert_close(full.logits, reference.logits, rtol=1e-5, atol=1e-6)
    policy_macs = full.full_gflops - reference.full_gflops  # the policy nets: two FCs per gated block
    assert 0 < policy_macs < 1e-3 * reference.full_gflops
    assert learned.policy is not None and len(learned.policy) == 2
    assert all(len(entry.frames) == 8 for entry in learned.policy)


def test_training_gradients_reach_the_policy_through_the_cost():
    model = prefix_model().train()
    logits = model(clips_of(2))
    (logits.sum() + model.policy_gflops().mean()).backward()
    for block in model.gated_blocks():
        assert block.policy.fc_out.weight.grad is not None
        assert block.policy.fc_out.weight.grad.abs().sum() > 0
    time_ratio = model.policy_time_ratio()
    assert time_ratio.shape == (2,) and bool(((time_ratio > 0) & (time_ratio <= 1 + 1e-6)).all())


def test_calibration_times_every_level_and_the_latency_table_predicts_full_compute_as_one():
    model = prefix_model()
    model.calibrate()
    for block in model.gated_blocks():
        assert len(block._choice_seconds) == 1
        (seconds,) = block._choice_seconds.values()
        assert seconds.shape == (len(block.policy.choices),) and bool((seconds > 0).all())
    with torch.inference_mode(), model.full_compute():
        model(clips_of(1))
    assert model.policy_time_ratio().item() == pytest.approx(1.0)


def test_forced_levels_are_checked():
    model = prefix_model()
    blocks = model.gated_blocks()
    with pytest.raises(ValueError, match="gated blocks"):
        model.follow_choices([torch.tensor(0)])
    with pytest.raises(ValueError, match="int64 indices"):
        model.follow_choices([torch.tensor(len(block.policy.choices)) for block in blocks])
    with pytest.raises(ValueError, match="structure='prefix'"):
        create_model(PRESET).follow_choices([torch.tensor(0)] * len(blocks))


def test_fixed_levels_save_about_the_fraction_asked():
    model = prefix_model()
    with model.force_saving(0.3) as saved, torch.inference_mode():
        execution = model.execute(clips_of(1))
    assert saved == pytest.approx(0.3, abs=0.05)
    assert execution.executed_gflops[0] == pytest.approx(model.full_gflops() * (1 - saved), rel=1e-6)


def test_meta_device_count_of_the_small_preset():
    """``adafuse_tsn_r18_small``: TSN-R18 at width 32, 8×112², plus its policy nets."""
    adaptive = count_flops(create_model("adafuse_tsn_r18_small", num_classes=11), 8, 112)
    dense = count_flops(create_model("tsn_r18_small", num_classes=11), 8, 112)
    assert dense.gflops == pytest.approx(1.028724736, rel=1e-9)
    assert 0 < adaptive.gflops - dense.gflops < 1e-4


def test_ordering_channels_by_importance_keeps_the_function_and_sorts_the_prefix():
    model = prefix_model()
    clips = clips_of(2)
    with torch.inference_mode(), model.full_compute():
        before = model.execute(clips).logits
    block = model.gated_blocks()[3]
    importance = block.bn1.weight.abs() * block.conv2.weight.abs().sum((0, 2, 3))
    model.order_channels_by_importance()
    with torch.inference_mode(), model.full_compute():
        after = model.execute(clips).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-6)
    ordered = block.bn1.weight.abs() * block.conv2.weight.abs().sum((0, 2, 3))
    assert torch.equal(ordered, importance.sort(descending=True).values)
    assert not torch.equal(ordered, importance)  # the channels moved
    with pytest.raises(ValueError, match="prefix"):
        create_model(PRESET).order_channels_by_importance()
