"""clipwise.models.gating: how the executor chooses what to run, its calibration, and the costs that policies and
training read (the partitions' results are checked against the masked reference in test_models_adafuse)."""

from __future__ import annotations

import pytest
import torch
from partitions import forced_choice
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.models import create_model
from clipwise.models.adafuse import KEEP, REUSE, SKIP
from clipwise.models.gating_partitions import PARTITIONS, Candidates, ConvCost, PairCosts, fit_cost

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster


def clip(frames: int = 8, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_candidates_count_what_each_partition_computes():
    # two clips of three frames, four channels: clip 0 uses channel 0 at every frame and 1 once, clip 1 channel 2
    mask = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]], dtype=torch.bool
    )
    candidates = Candidates.of(mask, clips=2, frames=3)
    assert candidates.offers("sets")  # counts them
    assert candidates.counts["dense"] == [(6, None)]
    assert candidates.counts["union"] == [(6, 3)]
    assert candidates.counts["clips"] == [(3, 2), (3, 1)]
    assert sorted(candidates.counts["sets"]) == [(1, 2), (2, 1), (3, 1)]
    groups = {name: candidates.groups(name) for name in PARTITIONS}
    assert groups["union"][0].channels.tolist() == [0, 1, 2]
    assert [group.channels.tolist() for group in groups["clips"]] == [[0, 1], [2]]
    sets = sorted((group.size, group.channels.tolist()) for group in groups["sets"])
    assert sets == [(1, [0, 1]), (2, [0]), (3, [2])]


def test_the_cheapest_predicted_partition_is_chosen():
    mask = torch.zeros(8, 64, dtype=torch.bool)
    mask[:, :16] = True  # one block of channels at every frame: union and sets compute the same
    candidates = Candidates.of(mask, clips=1, frames=8)
    gathering_is_cheap = ConvCost(dense=(0.0, 1.0), gathered=(0.0, 0.0, 0.01))  # per frame and channel
    gathering_is_dear = ConvCost(dense=(0.0, 1.0), gathered=(100.0, 0.0, 0.01))  # a huge call overhead
    assert candidates.choose(gathering_is_cheap) == "union"  # ties with sets go to the simpler
    assert candidates.choose(gathering_is_dear) == "dense"
    assert forced_choice(candidates, "union", gathering_is_dear) == "union"
    assert not candidates.offers("clips")  # one clip: no such partition
    assert forced_choice(candidates, "clips", gathering_is_dear) == "dense"


def test_fitted_cost_models_reproduce_the_timings_they_were_fitted_on():
    dense = [(1, 2.0), (8, 9.0)]  # 1 + 1 per frame
    gathered = [(f, k, 0.5 + 0.1 * k + 0.2 * f * k) for f in (1, 8) for k in (4, 8, 12)]
    cost = fit_cost(dense, gathered)
    assert cost.predict(4, None) == pytest.approx(5.0)
    assert cost.predict(4, 10) == pytest.approx(0.5 + 1 + 8, rel=1e-6)
    assert cost.predict(4, 0) == 0.0  # nothing to compute: no call at all


def forcing_costs(model, cost: ConvCost):
    """Replace every gated block's cost models at the configured size."""
    size = model.config.size // 4  # the stem strides by 4: the first stage's input
    for block in model.gated_blocks():
        for key in list(block._costs) or [(size, size)]:
            block._costs[key] = PairCosts(cost, cost, calibrated=True)


def test_the_executor_follows_its_cost_models():
    model = randomise_batch_norms(create_model("adafuse_tsn_r18_tiny"))
    model.calibrate()
    widths = [block.conv1.out_channels for block in model.gated_blocks()]
    # every frame keeps the last 16 channels (one block) and skips the others
    one_block = [torch.cat([torch.full((8, w - 16), SKIP), torch.full((8, 16), KEEP)], 1) for w in widths]

    def logits_of(model) -> torch.Tensor:
        with model.follow_policy(one_block):
            return model.execute(clip()).logits

    with torch.inference_mode(), model.follow_policy(one_block):
        forcing_costs(model, ConvCost(dense=(0.0, 1.0), gathered=(100.0, 0.0, 0.0)))
        dear = model.execute(clip())
        assert_branches_live(model, logits_of, rtol=0, atol=1e-5)
        forcing_costs(model, ConvCost(dense=(0.0, 1.0), gathered=(0.0, 0.0, 1e-6)))
        cheap = model.execute(clip())
    assert set(dear.policy[0].executed) == {"dense/dense"} and dear.executed_gflops == [dear.full_gflops]
    # blocks 16 wide keep everything (dense); the others compute their one block
    assert cheap.policy[0].executed == ["dense/dense" if w == 16 else "union/union" for w in widths]
    assert cheap.executed_gflops == pytest.approx(cheap.policy_gflops)  # one whole block: the union is the policy
    assert torch.allclose(cheap.logits, dear.logits, atol=1e-5)


def test_calibration_times_every_gated_pair_at_the_served_size():
    model = create_model("adafuse_tsn_r50_tiny").eval()
    assert not any(sorted(block._costs) for block in model.gated_blocks())
    model.calibrate()
    sizes = [sorted(block._costs) for block in model.gated_blocks()]
    assert all(len(block_sizes) == 1 for block_sizes in sizes)
    assert sizes[0] == [(16, 16)] and sizes[-1] == [(2, 2)]  # 64² input: the stem strides by 4, then stages
    for block in model.gated_blocks():
        costs = block._costs[sorted(block._costs)[0]]
        assert costs.calibrated
        for cost in (costs.conv1_cost, costs.conv2_cost):
            assert all(value >= 0 for value in (*cost.dense, *cost.gathered))
            assert cost.predict(8, None) > 0


def test_a_policy_skipping_the_same_channels_everywhere_predicts_less_time():
    """The latency-aware cost term: as many channels skipped, at the same frames or at different ones."""
    model = create_model("adafuse_tsn_r18_tiny").eval()
    model.calibrate()
    widths = [block.conv1.out_channels for block in model.gated_blocks()]
    generator = torch.Generator().manual_seed(0)
    same = [torch.cat([torch.full((8, w // 2), SKIP), torch.full((8, w - w // 2), KEEP)], 1) for w in widths]
    scattered = [code[:, torch.randperm(w, generator=generator)] for code, w in zip(same, widths, strict=True)]
    scattered = [
        torch.stack([row[torch.randperm(len(row), generator=generator)] for row in code]) for code in scattered
    ]
    ratios, gflops = {}, {}
    for name, decisions in (("same", same), ("scattered", scattered)):
        with torch.inference_mode(), model.follow_policy(decisions):
            model(clip())
            ratios[name], gflops[name] = model.policy_time_ratio().item(), model.policy_gflops().item()
    assert gflops["same"] == pytest.approx(gflops["scattered"])  # Eq. 5 cannot tell them apart ...
    assert ratios["same"] < ratios["scattered"]  # ... the executor's time can


def test_the_latency_term_reaches_the_policy_nets_in_training():
    model = create_model("adafuse_tsn_r18_tiny", num_classes=3, decision_group=4)
    model.calibrate()
    model.train()
    model(clip())
    model.policy_time_ratio().mean().backward()
    gradients = [p.grad for block in model.gated_blocks() for p in block.policy.fc_out.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)
    assert sum(g.abs().sum().item() for g in gradients) > 0


@pytest.mark.parametrize("group", [4, 8, 16])
def test_decisions_per_group_of_channels(group):
    model = create_model("adafuse_tsn_r18_tiny", decision_group=group).eval()
    for block in model.gated_blocks():  # decisive policy nets
        torch.nn.init.normal_(block.policy.fc_out.weight, std=1.0)
        assert block.policy.fc_out.out_features == 3 * block.conv1.out_channels // group
    with torch.inference_mode():
        model(clip())
    for decisions in model.last_record.blocks:
        codes = decisions.masks.argmax(-1)
        grouped = codes.view(*codes.shape[:2], -1, group)
        assert (grouped == grouped[..., :1]).all()  # every channel of a group follows its group
    assert len({code for d in model.last_record.blocks for code in d.masks.argmax(-1).unique().tolist()}) > 1


def test_decision_groups_must_divide_the_width():
    with pytest.raises(ValueError, match="do not divide"):
        create_model("adafuse_tsn_r18_tiny", decision_group=3)


@pytest.mark.parametrize("saving", [0.2, 0.4, 0.6])
def test_random_decisions_save_what_they_are_drawn_for(saving):
    with torch.device("meta"):
        model = create_model("adafuse_tsn_r50")
    decisions = model.random_decisions(saving, clips=2)
    widths = [block.conv1.out_channels for block in model.gated_blocks()]
    assert [tuple(codes.shape) for codes in decisions] == [(2, 8, width) for width in widths]
    assert all((codes[:, 0] != REUSE).all() for codes in decisions)  # nothing to reuse at a first frame
    first = decisions[0]
    assert (first[0] != first[1]).any() and (first[0, 0] != first[0, 1]).any()  # drawn per clip and frame
    _, policies = model.execution_of(decisions, 8, 224, [(0.0, 0.0)] * len(widths))
    full = model.full_gflops()
    assert [1 - policy.gflops / full for policy in policies] == pytest.approx([saving, saving], abs=0.01)
