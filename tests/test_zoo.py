"""Contract checks that every registered preset must pass, whatever its family.

Family-specific behaviour and paper figures live in each family's own test module; this one makes sure
a new preset cannot join the registry without running, counting its cost exactly as fvcore does and
round-tripping through a checkpoint the service can load.
"""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
from flops_reference import fvcore_gflops
from randomised import assert_branches_live, randomise_batch_norms

from clipwise.models import count_flops, create_model, get_preset, list_models
from clipwise.models.ada3d import Ada3D
from clipwise.models.adafuse import AdaFuse
from clipwise.models.base import Preprocessing
from clipwise.models.checkpoint import load_version, save_version
from clipwise.models.policy import Ada3DPolicy, AdaFusePolicy, FusionPolicy
from clipwise.models.x3d import E3D_S, architecture_of

ALL = list_models(buildable=True)
TINY = [name for name in ALL if name.endswith("_tiny")]
SMALL_TWINS = [name for name in ALL if name.endswith("_small")]  # between the paper presets and the tiny ones
PAPER = [name for name in ALL if not name.endswith(("_tiny", "_small"))]


SMALL = {"frames": 8, "size": 32}  # fast to trace; 8 frames: the fusion stem and transitions pool time by 8


def tiny_clips(model, clips: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(clips, 3, model.config.frames, model.config.size, model.config.size)


def test_every_paper_preset_has_a_tiny_twin():
    assert PAPER, "the registry is empty"
    assert [name for name in PAPER if f"{name}_tiny" not in ALL] == []


@pytest.mark.parametrize("name", PAPER + TINY + SMALL_TWINS)
def test_preset_builds_and_counts_on_the_meta_device(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    cost = count_flops(model, model.config.frames, model.config.size)
    assert cost.gflops > 0 and cost.params_m > 0
    Preprocessing(**model.preprocessing().to_dict())  # validates
    assert dataclasses.replace(get_preset(name).config, num_classes=10) == model.config


def required_fields(name: str, directory: Path) -> dict[str, str]:
    """What a preset that needs config fields is given: ``e3d`` an architecture file (E3D-S's)."""
    fields = {}
    for field in get_preset(name).requires:
        assert field == "arch", f"{name} needs {field}: say here what the test gives it"
        path = directory / "arch.json"
        path.write_text(json.dumps({"architecture": architecture_of(E3D_S)}))
        fields[field] = str(path)
    return fields


def decision_gflops(model: torch.nn.Module, frames: int, size: int) -> float:
    """What an adaptive model computes to decide, which fvcore leaves out of its full-compute count: under full
    compute nothing reads the decisions, and the graph fvcore traces drops what nothing reads. AdaFuse: both FCs
    of every policy net on every frame (from their shapes), once per clip for an execution-aware (prefix) policy;
    Ada3D: the selection net (fvcore counts it alone)."""
    if isinstance(model, AdaFuse):
        fcs = [fc for block in model.gated_blocks() for fc in (block.policy.fc_in, block.policy.fc_out)]
        decisions = 1 if model.config.structure == "prefix" else frames
        return decisions * sum(fc.in_features * fc.out_features for fc in fcs) / 1e9
    if isinstance(model, Ada3D):
        return fvcore_gflops(model.selection, frames, size)
    return 0.0


@pytest.mark.parametrize("name", list_models())
def test_preset_counts_what_fvcore_counts(name, tmp_path):
    """Every registered preset (paper sizes too, on small clips): the meta-device count against fvcore's trace of
    a real forward pass at full compute, exactly; adaptive models differ by their decision nets, exactly."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL, **required_fields(name, tmp_path)).eval()
    counted = count_flops(model, SMALL["frames"], SMALL["size"]).gflops
    with model.full_compute(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about the data-dependent shapes of adaptive models
        traced = fvcore_gflops(model, SMALL["frames"], SMALL["size"])
    decisions = decision_gflops(model, SMALL["frames"], SMALL["size"])
    assert counted == pytest.approx(traced + decisions, rel=1e-9)
    assert (decisions > 0) == isinstance(model, AdaFuse | Ada3D)


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_executes_with_a_record(name):
    model = create_model(name, num_classes=11).eval()
    execution = model.execute(tiny_clips(model))
    assert execution.logits.shape == (2, 11) and torch.isfinite(execution.logits).all()
    assert len(execution.executed_gflops) == 2
    assert all(0 < g <= execution.full_gflops * (1 + 1e-9) for g in execution.executed_gflops)
    if execution.policy is None:
        assert execution.executed_gflops == pytest.approx([execution.full_gflops] * 2)
    else:
        assert len(execution.policy) == 2
        assert all(isinstance(p, AdaFusePolicy | Ada3DPolicy | FusionPolicy) for p in execution.policy)


@pytest.mark.parametrize("name", TINY)
def test_tiny_preset_round_trips_through_a_checkpoint(name, tmp_path):
    model = randomise_batch_norms(create_model(name, num_classes=3))  # statistics that must travel too
    labels = ["a", "b", "c"]
    version_dir = save_version(model, labels, tmp_path, "m", trained=False)
    loaded = load_version(tmp_path, "m")
    assert (loaded.version, loaded.path) == (1, version_dir)
    assert loaded.manifest.architecture == name and loaded.manifest.labels == labels
    clips = tiny_clips(model, 1)
    assert torch.allclose(loaded.model.execute(clips).logits, model.execute(clips).logits, atol=1e-5)
    assert_branches_live(model, lambda m: m.execute(clips).logits, rtol=1e-5, atol=1e-5)


def test_flops_command_lists_every_buildable_preset(capsys):
    from clipwise.cli import main

    assert main(["flops", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in rows] == ALL
    tsn = next(row for row in rows if row["model"] == "tsn_r18_tiny")
    with torch.device("meta"):
        model = create_model("tsn_r18_tiny")
    assert tsn["gflops"] == pytest.approx(count_flops(model, 8, 64).gflops, abs=1e-4)


def test_a_preset_that_needs_a_field_says_so():
    assert "e3d" in list_models() and "e3d" not in ALL
    with pytest.raises(TypeError, match="arch="):
        create_model("e3d")
