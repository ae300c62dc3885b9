"""Probabilistic fusion: the 3D DenseNet-121 template, its strategies, v-DropPath and freezing."""

import math

import pytest
import torch
from flops_reference import fvcore_gflops
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.models import count_flops, create_model
from clipwise.models.checkpoint import load_version, save_version
from clipwise.models.fusion import (
    PATHS,
    UNITS,
    FusionDenseNet,
    FusionTemplate,
    format_strategy,
    freeze,
    observed_strategy,
    parse_strategy,
)
from clipwise.models.policy import FusionPolicy

TINY_LAYERS = 12  # 2 + 3 + 4 + 3
KEPT_PATHS = {"S": ("pointwise",), "ST": ("temporal",), "S+ST": ("pointwise", "temporal")}
ALL_PRESETS = [
    "fusion_densenet121",
    "fusion_template_densenet121",
    "fusion_densenet121_tiny",
    "fusion_template_densenet121_tiny",
]


def random_clips(clips: int, frames: int = 16, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(clips, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def paper_model(name: str = "fusion_densenet121", **overrides) -> FusionDenseNet | FusionTemplate:
    with torch.device("meta"):
        return create_model(name, **overrides)


def random_strategy(seed: int, layers: int = TINY_LAYERS) -> list[str]:
    draws = torch.randint(len(UNITS), (layers,), generator=torch.Generator().manual_seed(seed))
    return [UNITS[index] for index in draws.tolist()]


def set_drop_rates(template: FusionTemplate, rates: torch.Tensor) -> None:
    with torch.no_grad():
        template.drop_logits.copy_(torch.logit(rates))


def encode(template: FusionTemplate, strategy: list[str]) -> None:
    """Drop rates whose most probable strategy is ``strategy``: 0.2 for the unit's paths, 0.8 for the others."""
    kept = torch.tensor([[path in KEPT_PATHS[unit] for path in PATHS] for unit in strategy])
    set_drop_rates(template, torch.where(kept, 0.2, 0.8))


def trained_tiny_template(seed: int = 0) -> FusionTemplate:
    """A tiny template with random batch norms, as after training (their statistics from relaxed-mask runs)."""
    torch.manual_seed(seed)
    template = create_model("fusion_template_densenet121_tiny", num_classes=7)
    return randomise_batch_norms(template, random_clips(3, seed=seed) * 2 + 0.5, seed=seed)


@pytest.mark.parametrize("name", [name for name in ALL_PRESETS if name.endswith("_tiny")])
def test_tiny_forward_gives_finite_logits_and_the_strategy_per_clip(name):
    model = create_model(name).eval()
    with torch.no_grad():
        logits, policy = model.forward_with_policy(random_clips(2))
    assert logits.shape == (2, 174) and torch.isfinite(logits).all()
    assert policy == [FusionPolicy(strategy=model.active_strategy())] * 2
    expected = observed_strategy(TINY_LAYERS) if isinstance(model, FusionDenseNet) else "S+ST"
    assert policy[0].strategy == parse_strategy(expected, TINY_LAYERS)


def test_paper_figures_are_the_full_template_at_the_256_test_crop():
    """Table 1: 3D DenseNet-121, 16 frames, 31 G, 21.4 M (174 classes)."""
    template = count_flops(paper_model("fusion_template_densenet121"), 16, 256)
    assert template.gflops == pytest.approx(31.306, abs=1e-3)
    assert template.gflops == pytest.approx(31.0, rel=0.03)
    assert template.params_m == pytest.approx(21.405, abs=1e-3)
    assert template.params_m == pytest.approx(21.4, rel=0.01)
    static = count_flops(paper_model(strategy="S+ST"), 16, 256)
    assert static.gflops == template.gflops
    assert (template.params_m - static.params_m) * 1e6 == pytest.approx(58 * len(PATHS))  # the drop rates


def test_paper_preset_runs_the_observed_pattern():
    model = paper_model()
    assert model.config.strategy == "S+ST*29,ST*26,S+ST*3"
    assert count_flops(model, 16, 224).gflops == pytest.approx(23.332, abs=1e-3)


def test_units_cost_what_their_paths_cost():
    cost = {unit: count_flops(paper_model(strategy=unit), 16, 224).gflops for unit in UNITS}
    assert cost["S"] < cost["ST"] < cost["S+ST"]
    # A temporal path costs three pointwise paths: ST − S = 2·pointwise, S+ST − ST = pointwise.
    assert cost["ST"] - cost["S"] == pytest.approx(2 * (cost["S+ST"] - cost["ST"]), rel=1e-9)
    # One layer: the first one reads 64 channels at 4×56² (16 frames, stem stride 2×2×2 and a 2×2×2 max pool).
    first_s = ",".join(["S"] + ["S+ST"] * 57)
    saved = cost["S+ST"] - count_flops(paper_model(strategy=first_s), 16, 224).gflops
    assert saved * 1e9 == pytest.approx(3 * 64 * 128 * 4 * 56 * 56)


def test_strategy_strings_round_trip_and_reject_nonsense():
    units = ["S+ST", "S+ST", "ST", "S", "S", "S", "S+ST"]
    assert format_strategy(units) == "S+ST*2,ST,S*3,S+ST"
    assert parse_strategy("S+ST*2,ST,S*3,S+ST", 7) == units
    assert parse_strategy("ST", 3) == ["ST", "ST", "ST"]
    assert parse_strategy(units, 7) == units
    assert format_strategy(["S"] * 5) == "S"
    for bad in ("S+ST*2,T*5", "S*3", "S,,ST", ["S", "X"]):
        with pytest.raises(ValueError):
            parse_strategy(bad, 7 if not isinstance(bad, list) else 2)
    assert observed_strategy(58) == "S+ST*29,ST*26,S+ST*3"


@pytest.mark.parametrize("seed", [1, 2])
def test_frozen_network_reproduces_the_template_under_its_hard_mask(seed):
    template = trained_tiny_template(seed)
    strategy = random_strategy(seed)
    encode(template, strategy)
    assert template.most_probable_strategy() == strategy
    frozen = freeze(template, strategy).eval()
    clips = random_clips(2, seed=seed + 10)
    with torch.no_grad():
        expected = template(clips)
        with template.use_strategy(strategy):
            forced = template(clips)
        assert torch.allclose(frozen(clips), expected, rtol=1e-5, atol=1e-5)
        assert_branches_live(template, lambda model: model(clips), rtol=1e-5, atol=1e-5)
    assert torch.equal(forced, expected)
    assert [tuple(layer.mix.paths) for layer in frozen.layers] == [KEPT_PATHS[unit] for unit in strategy]
    dropped = sum(
        weight.numel()
        for layer, unit in zip(template.layers, strategy, strict=True)
        for path in PATHS
        if path not in KEPT_PATHS[unit]
        for weight in layer.mix.paths[path].parameters()
    )
    template_params = sum(p.numel() for p in template.parameters())
    assert sum(p.numel() for p in frozen.parameters()) == template_params - dropped - template.drop_logits.numel()
    static = create_model("fusion_densenet121_tiny", num_classes=7, strategy=format_strategy(strategy))
    assert count_flops(frozen, 16, 64) == count_flops(static, 16, 64)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_executed_flops_are_those_of_the_frozen_network(seed):
    template = trained_tiny_template()
    strategy = random_strategy(seed)
    encode(template, strategy)
    execution = template.execute(random_clips(2, seed=seed))
    frozen = freeze(template, strategy)
    reference = count_flops(frozen, 16, 64).gflops
    assert execution.executed_gflops == pytest.approx([reference] * 2, rel=1e-9)
    assert reference == pytest.approx(fvcore_gflops(frozen, 16, 64), rel=1e-9)
    assert reference < execution.full_gflops == pytest.approx(count_flops(template, 16, 64).gflops)
    assert [policy.strategy for policy in execution.policy] == [strategy] * 2
    assert frozen.execute(random_clips(2, seed=seed)).executed_gflops == pytest.approx([reference] * 2)


def test_training_runs_every_path_with_relaxed_per_clip_masks():
    template = create_model("fusion_template_densenet121_tiny").train()
    torch.manual_seed(0)
    clips = random_clips(1).expand(2, -1, -1, -1, -1)
    logits = template(clips)
    assert not torch.allclose(logits[0], logits[1])  # same clip, different masks
    logits.logsumexp(dim=1).sum().backward()
    assert torch.isfinite(template.drop_logits.grad).all() and (template.drop_logits.grad != 0).all()
    assert template.execute(clips).policy[0].strategy == ["S+ST"] * TINY_LAYERS
    masks = template.sample_keep_masks(4000)
    assert masks.shape == (4000, TINY_LAYERS, 2) and ((masks >= 0) & (masks <= 1)).all()
    assert masks.mean().item() == pytest.approx(0.9, abs=0.01)  # keep rate 1 − p at p = 0.1
    assert ((masks > 0.05) & (masks < 0.95)).float().mean() < 0.2  # temperature 0.2: nearly binary


def test_inference_runs_the_most_probable_strategy():
    template = create_model("fusion_template_densenet121_tiny")
    rates = [(0.1, 0.1), (0.1, 0.7), (0.7, 0.1), (0.7, 0.9), (0.9, 0.6), (0.5, 0.5)] * 2
    set_drop_rates(template, torch.tensor(rates))
    expected = ["S+ST", "S", "ST", "S", "ST", "S+ST"] * 2
    assert template.most_probable_strategy() == expected
    assert template.eval().active_strategy() == expected
    set_drop_rates(template, torch.rand(TINY_LAYERS, 2, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01)
    argmax = template.unit_probabilities().argmax(dim=1).tolist()
    assert template.most_probable_strategy() == [UNITS[index] for index in argmax]


def test_marginals_are_one_minus_the_square_root_of_the_drop_rate():
    template = create_model("fusion_template_densenet121_tiny")
    rates = torch.rand(TINY_LAYERS, 2, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    set_drop_rates(template, rates)
    assert torch.allclose(template.marginals(), 1 - rates.sqrt(), atol=1e-6)
    assert torch.allclose(create_model("fusion_template_densenet121_tiny").marginals(), torch.tensor(1 - 0.1**0.5))


def test_regularizer_is_eq5_and_differentiable_in_rates_and_weights():
    template = create_model("fusion_template_densenet121_tiny")
    rates = torch.rand(TINY_LAYERS, 2, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    set_drop_rates(template, rates)
    value = template.regularizer(dataset_size=1000, length_scale=50.0)
    expected = 0.0
    for layer, (p_pointwise, p_temporal) in zip(template.layers, rates.tolist(), strict=True):
        for path, p in (("pointwise", p_pointwise), ("temporal", p_temporal)):
            norm = layer.mix.paths[path].conv.weight.detach().square().sum().item()
            expected += 50.0**2 * (1 - p) / 2000 * norm + (p * math.log(p) + (1 - p) * math.log(1 - p)) / 1000
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert torch.isfinite(template.drop_logits.grad).all() and (template.drop_logits.grad != 0).all()
    path_weight = template.layers[0].mix.paths["temporal"].conv.weight
    assert torch.allclose(path_weight.grad, 50.0**2 * (1 - rates[0, 1]) / 1000 * path_weight.detach(), rtol=1e-5)
    assert template.layers[0].spatial.conv.weight.grad is None


def test_sampling_is_seeded_and_follows_the_rates():
    template = create_model("fusion_template_densenet121_tiny")
    rates = torch.tensor([[0.3, 0.6], [1e-7, 0.5], [0.5, 1e-7], [1 - 1e-7, 1e-7]]).repeat(3, 1)
    set_drop_rates(template, rates)
    draws = [template.sample_strategy(torch.Generator().manual_seed(seed)) for seed in range(600)]
    assert draws[0] == template.sample_strategy(torch.Generator().manual_seed(0))
    assert draws[0] != draws[1] or draws[0] != draws[2]
    by_layer = list(zip(*draws, strict=True))
    assert all(unit in ("S", "S+ST") for unit in by_layer[1])
    assert all(unit in ("ST", "S+ST") for unit in by_layer[2])
    assert set(by_layer[3]) == {"ST"}
    # Layer 0: drop pointwise 0.3, temporal 0.6; given at least one kept (1 − 0.18 = 0.82):
    expected = {"S": 0.7 * 0.6 / 0.82, "ST": 0.3 * 0.4 / 0.82, "S+ST": 0.7 * 0.4 / 0.82}
    units = [unit for layer in (0, 4, 8) for unit in by_layer[layer]]
    for unit, probability in expected.items():
        assert units.count(unit) / len(units) == pytest.approx(probability, abs=0.03)


def test_a_frozen_strategy_is_deployed_as_the_static_preset(tmp_path):
    template = trained_tiny_template()
    strategy = template.sample_strategy(torch.Generator().manual_seed(7))
    frozen = freeze(template, strategy).eval()
    assert frozen.preset == "fusion_densenet121_tiny"
    save_version(frozen, [str(k) for k in range(7)], tmp_path, "fusion", trained=False)
    loaded = load_version(tmp_path, "fusion")
    assert loaded.manifest.kwargs["strategy"] == format_strategy(strategy)
    clips = random_clips(1, seed=3)
    assert torch.equal(loaded.model.execute(clips).logits, frozen.execute(clips).logits)
