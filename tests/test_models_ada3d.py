"""Ada3D: the selection net's cost, greedy and sampled policies, rewards, and executed MACs that equal an
independent count of the static network each clip's policy really ran."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from flops_reference import fvcore_gflops
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.models import count_flops, create_model
from clipwise.models.ada3d import Actions, Ada3D, Plan, Selection, SelectionNet, ada3d_rewards
from clipwise.models.flops import track_macs

TINY = ["ada3d_i3d_r50_tiny", "ada3d_slowonly_r50_tiny"]


def tiny_model(name: str = "ada3d_i3d_r50_tiny") -> Ada3D:
    """A tiny preset with random batch norms: its backbone's residual branches all count in the logits."""
    torch.manual_seed(0)
    return randomise_batch_norms(create_model(name, num_classes=5))


def clips_for(model: Ada3D, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = model.config.size
    return torch.randn(count, 3, model.config.frames, size, size, generator=generator)


def random_plans(model: Ada3D, count: int, seed: int) -> list[Plan]:
    generator = torch.Generator().manual_seed(seed)
    frames = model.config.frames
    plans = []
    for _ in range(count):
        kept = torch.randperm(frames, generator=generator)[: int(torch.randint(1, frames, (1,), generator=generator))]
        on = torch.rand(model.num_stages, generator=generator) < 0.5
        plans.append(Plan(tuple(sorted(kept.tolist())), tuple(on.tolist())))
    return plans


@functools.cache
def selection_reference_gflops(name: str) -> float:
    """fvcore's count of a preset's selection net on a clip (one trace per preset: tracing is slow)."""
    model = tiny_model(name)
    return fvcore_gflops(model.selection, model.config.frames, model.config.size)


def reference_gflops(model: Ada3D, plan: Plan) -> float:
    """fvcore's count of what the plan runs: the selection net on all frames, the static backbone (real
    1×k×k convs in the 2D stages) on the kept frames."""
    backbone = fvcore_gflops(model.static_backbone(plan), len(plan.frames), model.config.size)
    return selection_reference_gflops(model.preset) + backbone


def static_logits(model: Ada3D, clip: torch.Tensor, plan: Plan) -> torch.Tensor:
    with torch.no_grad():
        return model.static_backbone(plan).eval()(clip[None, :, list(plan.frames)])[0]


def assert_plans_live(model: Ada3D, clips: torch.Tensor, plans: list[Plan]) -> None:
    """Silencing a residual branch of the backbone moves the logits of ``plans`` beyond the tests' tolerance."""
    with torch.no_grad():
        assert_branches_live(model, lambda m: m.run_backbone(clips, plans), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_runs_with_a_policy_per_clip(name):
    model = tiny_model(name)
    execution = model.execute(clips_for(model, 2))
    assert execution.logits.shape == (2, 5) and torch.isfinite(execution.logits).all()
    for policy in execution.policy:
        assert len(policy.stages_3d) == model.num_stages == len(model.backbone.switchable_stages)
        assert policy.frame_fraction == len(policy.frames_kept) / model.config.frames
    assert model.preprocessing() == model.backbone.preprocessing() and model.preprocessing().sampling == "dense"


def test_selection_net_costs_the_papers_0_08_gflops_a_frame_at_112():
    frames = 8
    selection = SelectionNet(frames, stages=5, trunk="mobilenet_v2", width_mult=1.0, input_size=112)
    per_frame = count_flops(selection, frames, 224).gflops / frames  # frames are resized to 112² first
    assert per_frame == pytest.approx(0.08, rel=0.03)
    two_frames = SelectionNet(2, stages=5, trunk="mobilenet_v2", width_mult=1.0, input_size=112)
    assert count_flops(two_frames, 2, 112).gflops == pytest.approx(fvcore_gflops(two_frames, 2, 112), rel=1e-9)


@pytest.mark.parametrize("name", ["ada3d_i3d_r50_tiny", "ada3d_slowonly_r50_tiny"])
def test_small_presets_size_the_selection_net_to_their_backbone(name):
    """The paper's MobileNetV2 is ~1 % of I3D-R50; a tiny backbone's selection net must stay as small a share."""
    model = create_model(name, num_classes=11)
    assert model.config.selection_net == "motion_cnn"
    selection = count_flops(model.selection, 8, 64).gflops
    assert fvcore_gflops(model.selection, 8, 64) == pytest.approx(selection, rel=1e-9)
    assert selection < 0.05 * (model.full_gflops() - selection)


def test_motion_descriptor_is_zero_for_a_still_clip_and_not_for_a_moving_one():
    net = SelectionNet(4, stages=2, trunk="motion_cnn", width_mult=1.0, input_size=32).eval()
    frame = torch.randn(1, 3, 1, 32, 32)
    still = frame.expand(1, 3, 4, 32, 32)
    moving = torch.cat([frame.roll(shift, dims=-1) for shift in range(0, 16, 4)], dim=2)
    half = net.features.descriptor_size // 2
    with torch.no_grad():
        assert torch.equal(net.clip_features(still)[:, half:], torch.zeros(1, half))
        assert net.clip_features(moving)[:, half:].abs().sum() > 0


@pytest.mark.parametrize(("name", "backbone"), [("ada3d_i3d_r50", "i3d_r50"), ("ada3d_slowonly_r50", "slowonly_r50")])
def test_full_compute_figure_is_the_selection_net_plus_the_whole_backbone(name, backbone):
    with torch.device("meta"):
        model, plain = create_model(name), create_model(backbone)
    frames, size = model.config.frames, model.config.size
    selection = count_flops(model.selection, frames, size).gflops
    assert model.full_gflops() == pytest.approx(count_flops(plain, frames, size).gflops + selection, rel=1e-12)


@pytest.mark.parametrize("name", TINY)
def test_full_compute_count_matches_fvcore(name):
    model = tiny_model(name)
    assert model.full_gflops() == pytest.approx(reference_gflops(model, model.full_plan()), rel=1e-9)


def test_greedy_keeps_what_reaches_one_half_and_never_an_empty_clip():
    selection = Selection(
        frame_logits=torch.tensor([[2.0, -1.0, 0.0, -3.0], [-2.0, -0.5, -4.0, -1.0]]),
        stage_logits=torch.tensor([[0.1, -0.1], [-5.0, 0.0]]),
    )
    actions = selection.greedy()
    assert actions.frames.tolist() == [[True, False, True, False], [False, True, False, False]]
    assert actions.stages.tolist() == [[True, False], [False, True]]
    assert actions.plans() == [Plan((0, 2), (True, False)), Plan((1,), (False, True))]


def test_model_follows_its_selection_heads_greedily():
    model = tiny_model()
    frame_logits = torch.tensor([3.0, -3.0, 0.5, -0.5, -2.0, 1.0, -1.0, 4.0])
    stage_logits = torch.tensor([1.0, -1.0, -2.0, 2.0, 0.5])
    with torch.no_grad():
        for head, bias in ((model.selection.frame_head, frame_logits), (model.selection.stage_head, stage_logits)):
            head.weight.zero_()
            head.bias.copy_(bias)
    clips = clips_for(model, 2)
    with model.full_compute():
        _, forced = model.forward_with_policy(clips)
    assert forced == [model.full_plan().policy(model.config.frames, model.full_gflops())] * 2
    _, policies = model.forward_with_policy(clips)
    for policy in policies:
        assert policy.frames_kept == [0, 2, 5, 7]
        assert policy.stages_3d == [True, False, False, True, True]
        assert (policy.frame_fraction, policy.stage_fraction) == (0.5, 0.6)


@pytest.mark.parametrize("name", TINY)
def test_executed_macs_of_random_policies_equal_fvcore_of_the_static_networks(name):
    model = tiny_model(name)
    clips = clips_for(model, 3)
    plans = random_plans(model, 3, seed=1)
    assert len(set(plans)) == 3
    with torch.no_grad(), track_macs(3) as tracker:
        selection = model.select(clips)
        logits = model.run_backbone(clips, plans)
    assert selection.frame_probs.shape == (3, model.config.frames)
    for clip, plan, executed, clip_logits in zip(clips, plans, tracker.gflops, logits, strict=True):
        assert executed == pytest.approx(reference_gflops(model, plan), rel=1e-9)
        assert torch.allclose(clip_logits, static_logits(model, clip, plan), atol=1e-5)
    assert_plans_live(model, clips, plans)


def test_execute_records_what_each_clips_greedy_policy_ran():
    model = tiny_model()
    clips = clips_for(model, 3)
    with torch.no_grad():  # spread the heads so that the clips' greedy policies differ
        for head in (model.selection.frame_head, model.selection.stage_head):
            torch.nn.init.normal_(head.weight, std=1.0, generator=torch.Generator().manual_seed(2))
        selection = model.select(clips)
        model.selection.frame_head.bias.sub_(selection.frame_logits.median(dim=0).values)
        model.selection.stage_head.bias.sub_(selection.stage_logits.median(dim=0).values)
    execution = model.execute(clips)
    plans = [Plan(tuple(policy.frames_kept), tuple(policy.stages_3d)) for policy in execution.policy]
    assert len(set(plans)) > 1
    assert any(len(plan.frames) < model.config.frames for plan in plans)
    for clip, plan, executed, clip_logits in zip(
        clips, plans, execution.executed_gflops, execution.logits, strict=True
    ):
        assert executed == pytest.approx(reference_gflops(model, plan), rel=1e-9)
        assert torch.allclose(clip_logits, static_logits(model, clip, plan), atol=1e-5)
    assert_plans_live(model, clips, plans)


def test_dropped_frames_are_never_computed():
    model = tiny_model()
    plan = Plan((1, 4, 6), (True,) * model.num_stages)
    clip = clips_for(model, 1)
    with torch.no_grad(), track_macs(1) as tracker:
        logits = model.run_backbone(clip, [plan])
    assert tracker.gflops[0] == pytest.approx(count_flops(model.backbone, 3, model.config.size).gflops, rel=1e-12)
    assert tracker.gflops[0] < 0.5 * model.backbone.full_gflops()
    changed = clip.clone()
    changed[:, :, [0, 2, 3, 5, 7]] = 100.0
    with torch.no_grad():
        assert torch.equal(model.run_backbone(changed, [plan]), logits)


def test_rewards_follow_eq_4_for_frames_and_stages_apart():
    actions = Actions(
        frames=torch.tensor([[True] * 6 + [False] * 2, [True] * 2 + [False] * 6]),
        stages=torch.tensor([[True, True, False, False, False], [True] * 5]),
    )
    frame_reward, stage_reward = ada3d_rewards(torch.tensor([True, False]), actions, gamma=0.4)
    assert frame_reward.tolist() == pytest.approx([1 - 6 / 8, -0.4])
    assert stage_reward.tolist() == pytest.approx([1 - (2 / 5) ** 2, -0.4])


def test_sampled_actions_follow_the_bernoulli_policies_and_keep_a_frame():
    generator = torch.Generator().manual_seed(0)
    rows = 4000
    selection = Selection(
        frame_logits=torch.tensor([[-30.0, -20.0, -30.0, -30.0]]).repeat(rows, 1),
        stage_logits=torch.full((rows, 2), math.log(0.3 / 0.7)),
    )
    actions = selection.sample(generator)
    assert actions.frames.tolist() == [[False, True, False, False]] * rows
    assert actions.stages.float().mean().item() == pytest.approx(0.3, abs=0.02)


def test_log_prob_is_the_bernoulli_log_likelihood_and_trains_both_heads():
    model = tiny_model().train()
    clips = clips_for(model, 3)
    selection = model.select(clips)
    actions = selection.sample(torch.Generator().manual_seed(3))
    frame_log_prob, stage_log_prob = selection.log_prob(actions)
    expected_frames = torch.distributions.Bernoulli(logits=selection.frame_logits).log_prob(actions.frames.float())
    expected_stages = torch.distributions.Bernoulli(logits=selection.stage_logits).log_prob(actions.stages.float())
    assert torch.allclose(frame_log_prob, expected_frames.sum(dim=1))
    assert torch.allclose(stage_log_prob, expected_stages.sum(dim=1))

    logits = model.run_backbone(clips, actions.plans())
    labels = torch.tensor([0, 1, 2])
    frame_reward, stage_reward = ada3d_rewards(logits.argmax(dim=1) == labels, actions, gamma=0.5)
    policy_loss = -(frame_reward * frame_log_prob + stage_reward * stage_log_prob).mean()
    (policy_loss + F.cross_entropy(logits, labels)).backward()  # Eq. 8: joint fine-tuning
    for parameter in (
        model.selection.frame_head.weight,
        model.selection.stage_head.weight,
        model.backbone.stem.conv.weight,
    ):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_force_saving_runs_a_fixed_plan_saving_about_the_fraction():
    model = tiny_model()
    clips = clips_for(model, 2)
    for fraction in (0.2, 0.4, 0.6):
        target = model.saving_plan(fraction)
        with model.force_saving(fraction):
            execution = model.execute(clips)
        assert abs(target.saved_fraction - fraction) < 0.03
        for executed, policy in zip(execution.executed_gflops, execution.policy, strict=True):
            assert 1 - executed / execution.full_gflops == pytest.approx(target.saved_fraction, rel=1e-9)
            assert policy == target.plan.policy(model.config.frames, model.plan_gflops(target.plan))


def test_paper_preset_saving_plans_land_within_a_percent():
    with torch.device("meta"):
        model = create_model("ada3d_i3d_r50", size=224)
    for fraction in (0.2, 0.4, 0.6):
        assert abs(model.saving_plan(fraction).saved_fraction - fraction) < 0.01
