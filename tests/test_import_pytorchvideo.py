"""``clipwise import`` against PyTorchVideo's own code (``tests/pytorchvideo_hub.py``: its hub builders, with the
RoIAlign stand-in and why): x3d_s, x3d_m, slow_r50 and i3d_r50 with random weights, BN statistics and biases,
saved in the hub format, imported through the command, loaded as the server loads a version and compared with
PyTorchVideo's forward on the same clip; their FLOPs counted by fvcore on PyTorchVideo's model."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pytest
import torch
from flops_reference import fvcore_gflops
from pytorchvideo_hub import MODELS, hub, hub_logits, randomised, save_hub_checkpoint

from clipwise.cli import main
from clipwise.models.checkpoint import load_version_dir
from clipwise.models.imports import CheckpointImportError, import_checkpoint
from clipwise.models.labels import bundled_labels

KINETICS = bundled_labels("kinetics400")


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """builder → (its randomised PyTorchVideo model, the hub-format file of it), each made once."""
    pytorchvideo, directory = hub(), tmp_path_factory.mktemp("pytorchvideo")

    @functools.cache
    def make(builder: str) -> tuple[torch.nn.Module, Path]:
        model = randomised(getattr(pytorchvideo, builder)(), seed=len(builder))
        return model, save_hub_checkpoint(model, directory / f"{builder}.pyth")

    return make


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("builder", ["x3d_s", "x3d_m", "slow_r50", "i3d_r50"])
def test_an_imported_version_computes_pytorchvideos_logits_and_counts_its_flops(builder, hub_checkpoint, tmp_path):
    source, checkpoint = hub_checkpoint(builder)
    preset, (frames, size) = MODELS[builder]
    out = tmp_path / "repo" / builder
    args = ["import", "--source", "pytorchvideo", "--checkpoint", str(checkpoint), "--architecture", preset]
    assert main([*args, "--labels", "kinetics400", "--out", str(out)]) == 0
    loaded = load_version_dir(out)  # every check of a server load

    clip = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = loaded.model(clip)
    assert relative_difference(logits, hub_logits(source, clip)) < 1e-4

    manifest = loaded.manifest
    if builder in ("x3d_s", "i3d_r50"):  # the architecture fields at work: X3D's shortcut, I3D's pool
        assert manifest.full_gflops == pytest.approx(fvcore_gflops(source, frames, size), rel=1e-6)
    assert manifest.labels == KINETICS and manifest.trained
    assert manifest.source.format == "pytorchvideo" and manifest.source.file == checkpoint.name
    assert manifest.source.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    spec = manifest.preprocessing
    assert (spec.sampling, spec.frames, spec.crop_size) == ("dense", frames, size)
    assert spec.stride == {"x3d_s": 6, "x3d_m": 5}.get(builder, 8)  # 13x6, 16x5, 8x8
    assert spec.short_side == (256 if preset.endswith("r50") else size)
    assert spec.mean == (0.45,) * 3 and spec.std == (0.225,) * 3


def test_x3d_with_the_shortcut_bn_pytorchvideo_lacks_is_refused_naming_it(hub_checkpoint):
    _, checkpoint = hub_checkpoint("x3d_s")
    with pytest.raises(CheckpointImportError) as refused:
        import_checkpoint("pytorchvideo", checkpoint, "x3d_s", KINETICS, {"strided_shortcut_norm": True})
    message = str(refused.value)
    assert "missing from the file (4)" in message  # weight, bias, running mean and variance; the counter may miss
    assert "stages.0.0.shortcut.1.weight ← blocks.1.res_blocks.0.branch1_norm.weight" in message


def test_i3d_without_its_pool_after_res2_does_not_fit(hub_checkpoint):
    _, checkpoint = hub_checkpoint("i3d_r50")
    with pytest.raises(CheckpointImportError) as refused:
        import_checkpoint("pytorchvideo", checkpoint, "i3d_r50", KINETICS, {"res2_temporal_pool": False})
    message = str(refused.value)  # res3.. are one block further in the file: blocks.2 is the pool
    assert "stages.2.0.conv1.weight [256, 512, 3, 1, 1] ← blocks.3.res_blocks.0.branch2.conv_a.weight [128" in message
    assert "in the file without a place in the model" in message


def test_a_label_list_of_another_length_is_refused_at_the_classifier(hub_checkpoint):
    _, checkpoint = hub_checkpoint("x3d_s")
    with pytest.raises(CheckpointImportError, match=r"head\.fc\.weight \[174, 2048\] ← blocks\.5\.proj\.weight \[400"):
        import_checkpoint("pytorchvideo", checkpoint, "x3d_s", [f"class {index}" for index in range(174)])
