"""``clipwise export onnx`` with its check on, for every adaptive family: the graph must give PyTorch's logits and
the same decisions, on models whose decisions are mixed (policy heads drawn large), so the check has
something to compare."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from randomised import decisive_policies, randomise_batch_norms

from clipwise.cli import main as clipwise_main
from clipwise.export.onnx import policies_agree
from clipwise.models import create_model
from clipwise.models.checkpoint import load_version, save_version
from clipwise.models.policy import AdaFusePolicy, ChannelUsage

CASES = {
    "adafuse_channel": ("adafuse_tsn_r18_tiny", {}),
    "adafuse_prefix": ("adafuse_tsn_r18_tiny", {"structure": "prefix"}),
    "ada3d": ("ada3d_i3d_r50_tiny", {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_checks_every_adaptive_family(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    preset, kwargs = CASES[case]
    torch.manual_seed(0)
    model = decisive_policies(randomise_batch_norms(create_model(preset, num_classes=4, **kwargs)))
    version = save_version(model, ["a", "b", "c", "d"], tmp_path, preset, trained=False)
    loaded = load_version(tmp_path, preset)
    config = loaded.model.config
    clips = torch.randn(2, 3, config.frames, config.size, config.size, generator=torch.Generator().manual_seed(0))
    clips[1] = clips[1] * 0.3 + 1.0  # a brighter, flatter clip
    policies = loaded.model.eval().execute(clips).policy
    assert policies is not None and policies[0] != policies[1]  # decisions that depend on the clip

    assert clipwise_main(["export", "onnx", "--model-dir", str(version)]) == 0
    assert "checked against PyTorch" in capsys.readouterr().out
    assert (version / "model.onnx").is_file()


def usage(keep: float) -> ChannelUsage:
    return ChannelUsage(keep=keep, reuse=0.0, skip=1 - keep)


def policy(keep: float, executed: str) -> AdaFusePolicy:
    return AdaFusePolicy(
        overall=usage(keep), blocks=[usage(keep)], frames=[usage(keep)], gflops=1.5, executed=[executed]
    )


def test_policies_agree_within_float32_and_whatever_each_backend_names_its_execution():
    assert policies_agree([policy(0.5, "union/dense")], [policy(0.5 + 1e-7, "union")])
    assert not policies_agree([policy(0.5, "union")], [policy(0.52, "union")])
    assert not policies_agree([policy(0.5, "union")], [policy(0.5, "union"), policy(0.5, "union")])
    assert not policies_agree(None, [policy(0.5, "union")])
    assert policies_agree(None, None)
