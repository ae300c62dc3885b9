"""E3D search: the analytic description against the built models, the scores, mutations, search and CLI."""

import json
import math
import random
from dataclasses import replace

import pytest
import torch

from clipwise.cli import main as clipwise_main
from clipwise.models import count_flops, create_model, get_preset
from clipwise.models.e3d_search import (
    KERNELS,
    MAX_CHANNELS,
    MIN_CHANNELS,
    analytic_gflops,
    depth,
    homoentr_score,
    initial_structure,
    mutate,
    refinement,
    search,
    stentr_score,
)
from clipwise.models.x3d import X3D, X3D_S, StageSpec

PRESETS = ["x3d_s", "x3d_m", "x3d_l", "e3d_s", "e3d_m", "e3d_l", "x3d_l_tiny", "e3d_m_tiny"]


def meta_gflops(config) -> float:
    with torch.device("meta"):
        model = X3D(config)
    return count_flops(model, config.frames, config.size).gflops


@pytest.mark.parametrize("name", PRESETS)
def test_analytic_count_equals_the_built_model(name):
    config = get_preset(name).config
    assert analytic_gflops(config) * 1e9 == pytest.approx(meta_gflops(config) * 1e9, abs=0.5)


def test_depth_is_the_authors_layer_count():
    assert [depth(get_preset(name).config) for name in ("e3d_s", "e3d_m", "e3d_l")] == [83, 83, 167]


def test_refinement_factor():
    assert refinement(13, 80, (1, 1, 1)) == 1.0
    # [13, 10, 10] vs [3, 3, 3]: cos = 99 / (sqrt(369) * sqrt(27))
    assert refinement(13, 10, (3, 3, 3)) == pytest.approx(-math.log(1 - 99 / math.sqrt(369 * 27)))
    # The paper's kernel-selection observation: spatial kernels early (large maps), 3D kernels late (small).
    assert refinement(13, 80, (1, 5, 5)) > refinement(13, 80, (3, 3, 3))
    assert refinement(13, 5, (3, 3, 3)) > refinement(13, 5, (1, 3, 3))


def test_scores_of_a_one_block_network_by_hand():
    stage = StageSpec(kernel=3, temporal_kernel=3, layers=1, bottleneck=32, out_channels=16, stride=2)
    config = replace(initial_structure(frames=8, size=64), stem_channels=8, stages=(stage,), head_channels=64)
    # stem 3->8 1x3x3 at 8x32x32, block 8->32 1x1x1, depthwise 3x3x3 at 8x16x16, 32->16, head 16->64
    stem, dw = refinement(8, 32, (1, 3, 3)), refinement(8, 16, (3, 3, 3))
    homo = 0.5 * (math.log(27) + math.log(8) + math.log(27) + math.log(32) + math.log(16)) + math.log(64)
    assert homoentr_score(config) == pytest.approx(homo)
    assert stentr_score(config) == pytest.approx(homo + 0.5 * (math.log(stem) + math.log(dw)))


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_stentr_ranks_e3d_above_x3d(size):
    x3d, e3d = get_preset(f"x3d_{size}").config, get_preset(f"e3d_{size}").config
    assert (e3d.frames, e3d.size) == (x3d.frames, x3d.size)
    assert analytic_gflops(e3d) <= analytic_gflops(x3d)
    assert stentr_score(e3d) > stentr_score(x3d)


def test_only_the_refinement_ranks_e3d_l_above_x3d_l():
    x3d, e3d = get_preset("x3d_l").config, get_preset("e3d_l").config
    assert homoentr_score(e3d) < homoentr_score(x3d)
    assert stentr_score(e3d) > stentr_score(x3d)


def test_mutations_stay_in_the_search_space():
    rng, config = random.Random(0), initial_structure()
    for _ in range(300):
        config = mutate(config, rng, max_layers=83)
        channels = [config.stem_channels] + [c for s in config.stages for c in (s.bottleneck, s.out_channels)]
        assert all(c % 8 == 0 and MIN_CHANNELS <= c <= MAX_CHANNELS for c in channels)
        assert all((s.temporal_kernel, s.kernel) in KERNELS for s in config.stages)
        outs = [config.stem_channels] + [s.out_channels for s in config.stages]
        assert outs == sorted(outs), "channels never shrink along the network"
        assert config.stages[0].layers <= 3 and all(s.layers <= 6 for s in config.stages)
        assert [s.stride for s in config.stages] == [2, 2, 2, 1, 2]


def test_short_search_beats_x3d_s_within_budget():
    result = search(initial_structure(), budget_gflops=1.9, max_layers=83, iterations=2000, population=64, seed=0)
    best = result.best
    assert result.initial.config == initial_structure() and result.initial.score < best.score
    assert best.depth <= 83 and meta_gflops(best.config) == pytest.approx(best.gflops) and best.gflops <= 1.9
    assert best.score == stentr_score(best.config) > stentr_score(X3D_S)


def test_search_is_deterministic_for_a_seed():
    def run(seed):
        return search(initial_structure(), 1.9, 83, iterations=300, population=16, seed=seed).best.config

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_initial_structure_over_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        search(initial_structure(), budget_gflops=0.1, max_layers=83, iterations=1, population=1)


def test_cli_writes_an_arch_file_that_builds_and_runs(tmp_path, capsys):
    out = tmp_path / "arch.json"
    argv = ["search", "e3d", "--budget-gflops", "1.9", "--frames", "13", "--size", "160", "--iterations", "300"]
    argv += ["--population", "16", "--seed", "1", "--out", str(out), "--no-progress"]
    assert clipwise_main(argv) == 0
    document = json.loads(out.read_text())
    assert document["search"]["gflops"] <= 1.9 and str(out) in capsys.readouterr().out
    with torch.device("meta"):
        searched = create_model("e3d", arch=str(out))
    assert count_flops(searched, 13, 160).gflops == pytest.approx(document["search"]["gflops"])
    model = create_model("e3d", arch=str(out), num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 4, 64, 64))
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
