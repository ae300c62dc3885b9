"""``clipwise train --init``: starting weights by role from Clipwise versions (trained or imported) and from
torchvision ImageNet files, with the report of what was initialised and what was not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from pytorchvideo_hub import hub, randomised, save_hub_checkpoint
from source_layouts import in_layout

from clipwise.cli import build_parser
from clipwise.commands.train import config_values
from clipwise.models import create_model
from clipwise.models.checkpoint import save_version
from clipwise.models.mobilenet import MobileNetV2Features
from clipwise.training.config import ConfigError, TrainConfig
from clipwise.training.setup import build_model
from clipwise.training.trainer import objective_phases


def torchvision_resnet(preset: str, path: Path) -> dict[str, torch.Tensor]:
    """A torchvision ImageNet ResNet file (1000 classes) made from a random Clipwise TSN."""
    state = in_layout("torchvision", randomised(create_model(preset, num_classes=1000)))
    torch.save(state, path)
    return state


def torchvision_mobilenet_v2(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision MobileNetV2 file: ``features.{i}`` (a block's layers in ``conv``), ``classifier.1``."""
    state = in_layout("torchvision", randomised(MobileNetV2Features()))
    state |= {"classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.randn(1000)}
    assert len(state) == 314  # torchvision's mobilenet_v2().state_dict()
    facts = {
        "features.0.0.weight": [32, 3, 3, 3],
        "features.1.conv.0.0.weight": [32, 1, 3, 3],
        "features.1.conv.1.weight": [16, 32, 1, 1],
        "features.2.conv.0.0.weight": [96, 16, 1, 1],
        "features.17.conv.2.weight": [320, 960, 1, 1],
        "features.18.0.weight": [1280, 320, 1, 1],
        "features.18.1.running_var": [1280],
    }
    assert {key: list(state[key].shape) for key in facts} == facts
    torch.save(state, path)
    return state


def init_report(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "clipwise.training.setup"]


def test_a_tsn_starts_from_an_imagenet_resnet_of_torchvision(tmp_path, caplog):
    file = tmp_path / "resnet18.pth"
    source = torchvision_resnet("tsn_r18", file)
    with caplog.at_level(logging.INFO, logger="clipwise.training.setup"):
        model = build_model(TrainConfig(model="tsn_r18", init=(file,), init_source="torchvision"), num_classes=5)
    backbone = model.backbone.state_dict()
    assert all(torch.equal(backbone[key], tensor) for key, tensor in source.items() if not key.startswith("fc."))
    assert init_report(caplog) == [
        f"initialised 120 of 122 tensors of tsn_r18: 120 from {file}",
        "left as built (2): fc.weight, fc.bias",
        f"not used from {file} (2): fc.weight [5, 512] ← fc.weight [1000, 512], fc.bias [5] ← fc.bias [1000]",
    ]


def test_adafuse_starts_from_a_tsn_version_or_an_imagenet_resnet(tmp_path):
    tsn = randomised(create_model("tsn_r18_tiny", num_classes=5))
    version = save_version(tsn, list("abcde"), tmp_path, "tsn", trained=True)
    adafuse = build_model(TrainConfig(model="adafuse_tsn_r18_tiny", init=(version,)), num_classes=5)
    state = adafuse.state_dict()
    assert all(torch.equal(state[key], tensor) for key, tensor in tsn.state_dict().items())
    assert {key for key in state if key not in tsn.state_dict()} == {key for key in state if ".policy." in key}

    file = tmp_path / "resnet18.pth"
    source = torchvision_resnet("tsn_r18", file)
    adafuse = build_model(TrainConfig(model="adafuse_tsn_r18", init=(file,), init_source="torchvision"), 5)
    backbone = adafuse.backbone.state_dict()
    assert all(torch.equal(backbone[key], tensor) for key, tensor in source.items() if not key.startswith("fc."))


def test_ada3d_takes_its_backbone_from_an_i3d_and_its_selection_net_from_an_imagenet_mobilenet(tmp_path, caplog):
    i3d = randomised(create_model("i3d_r50", num_classes=5))
    version = save_version(i3d, list("abcde"), tmp_path, "i3d", trained=True)
    mobilenet_file = tmp_path / "mobilenet_v2.pth"
    mobilenet = torchvision_mobilenet_v2(mobilenet_file)
    config = TrainConfig(model="ada3d_i3d_r50", init=(version, mobilenet_file), init_source="torchvision")
    with caplog.at_level(logging.INFO, logger="clipwise.training.setup"):
        ada3d = build_model(config, num_classes=5)
    assert all(torch.equal(ada3d.backbone.state_dict()[key], tensor) for key, tensor in i3d.state_dict().items())
    features = in_layout("torchvision", ada3d.selection.features)
    assert features.keys() == mobilenet.keys() - {"classifier.1.weight", "classifier.1.bias"}
    assert all(torch.equal(tensor, mobilenet[key]) for key, tensor in features.items())
    report = init_report(caplog)
    assert (
        report[1] == "left as built (4): selection.frame_head.weight, selection.frame_head.bias, "
        "selection.stage_head.weight, selection.stage_head.bias"
    )
    assert report[2] == f"not used from {mobilenet_file} (2): classifier.1.bias, classifier.1.weight"
    assert [phase.epochs for phase in objective_phases(ada3d, config, train_clips=10)][0] == 0  # backbone trained


def test_init_is_refused_when_a_file_has_no_layout_two_sources_overlap_or_nothing_fits(tmp_path):
    file = tmp_path / "resnet18.pth"
    torchvision_resnet("tsn_r18", file)
    with pytest.raises(ConfigError, match="is a file: give its layout with --init-source"):
        build_model(TrainConfig(model="tsn_r18", init=(file,)), num_classes=5)
    again = tmp_path / "again.pth"
    again.write_bytes(file.read_bytes())
    with pytest.raises(ConfigError, match=f"{file} and {again} both initialise backbone.conv1.weight"):
        build_model(TrainConfig(model="tsn_r18", init=(file, again), init_source="torchvision"), num_classes=5)
    with pytest.raises(ConfigError, match="nothing in .* fits x3d_s_tiny"):
        build_model(TrainConfig(model="x3d_s_tiny", init=(file,), init_source="torchvision"), num_classes=5)


def test_init_paths_from_the_command_line_and_from_saved_configs():
    args = build_parser().parse_args(["train", "--init", "repo/i3d/1", "mobilenet.pth", "--init-source", "torchvision"])
    config = TrainConfig.from_dict(config_values(args))
    assert (config.init, config.init_source) == ((Path("repo/i3d/1"), Path("mobilenet.pth")), "torchvision")
    assert TrainConfig.from_dict(config.to_dict()) == config  # the run directory's config.json, for --resume
    assert TrainConfig.from_dict({"init": "repo/tsn/2"}).init == (Path("repo/tsn/2"),)  # one path, as before


def test_a_model_starts_from_a_source_checkpoint_of_other_classes_by_role(tmp_path, caplog):
    """A PyTorchVideo X3D-S file into an X3D-S of 10 classes: all but the classifier, and the shortcut BN that
    PyTorchVideo's X3D does not have."""
    file = save_hub_checkpoint(randomised(hub().x3d_s()), tmp_path / "X3D_S.pyth")
    with caplog.at_level(logging.INFO, logger="clipwise.training.setup"):
        build_model(TrainConfig(model="x3d_s", init=(file,), init_source="pytorchvideo"), num_classes=10)
    shortcut_bn = [f"stages.0.0.shortcut.1.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var")]
    assert init_report(caplog) == [
        f"initialised 561 of 568 tensors of x3d_s: 561 from {file}",
        f"left as built (7): {', '.join(shortcut_bn)}, stages.0.0.shortcut.1.num_batches_tracked, head.fc.weight, "
        "head.fc.bias",
        f"not used from {file} (2): head.fc.weight [10, 2048] ← blocks.5.proj.weight [400, 2048], head.fc.bias [10] "
        "← blocks.5.proj.bias [400]",
    ]
