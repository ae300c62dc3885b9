"""``clipwise import`` of the layouts whose code does not install here: mmaction2, PySlowFast, torchvision.

Each test takes a Clipwise model with random weights, writes it in the source's layout with the tests' own
renaming (``tests/source_layouts.py``: facts from reading each source's model code, in the other direction than
the importer goes), checks the result against counts and literal names and shapes of the source's code, imports
it and checks that every tensor came back to the place it left. A misplaced, missing or spare tensor fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flops_reference import fvcore_gflops
from pytorchvideo_hub import randomised
from source_layouts import in_layout

from clipwise.models import create_model
from clipwise.models.imports import import_checkpoint
from clipwise.models.labels import bundled_labels

KINETICS = bundled_labels("kinetics400")


def written(state: dict[str, torch.Tensor], path: Path, container: str | None, **extra: object) -> Path:
    torch.save({container: state, **extra} if container else state, path)
    return path


def assert_every_tensor_back(imported: torch.nn.Module, original: torch.nn.Module) -> None:
    got, expected = imported.state_dict(), original.state_dict()
    assert got.keys() == expected.keys()
    assert [key for key in expected if not torch.equal(got[key], expected[key])] == []


def assert_has(state: dict[str, torch.Tensor], facts: dict[str, list[int]]) -> None:
    """``state`` holds these keys with these shapes."""
    assert {key: list(state[key].shape) if key in state else None for key in facts} == facts


# --- mmaction2 (mmaction/models/backbones/resnet.py, resnet3d.py, resnet_tsm.py; heads' fc_cls) ---------------


@pytest.mark.parametrize("preset", ["tsn_r50", "tsm_r50"])
def test_mmaction2_tsn_and_tsm(preset, tmp_path):
    original = randomised(create_model(preset, num_classes=400))
    state = in_layout("mmaction2", original)
    conv1 = "conv1.conv.net" if preset == "tsm_r50" else "conv1.conv"
    assert len(state) == 320  # as torchvision's ResNet-50, cls_head.fc_cls for its fc
    facts = {
        "backbone.conv1.conv.weight": [64, 3, 7, 7],
        f"backbone.layer3.5.{conv1}.weight": [256, 1024, 1, 1],
        "backbone.layer4.0.downsample.conv.weight": [2048, 1024, 1, 1],
        "backbone.layer4.2.conv3.bn.running_var": [2048],
        "cls_head.fc_cls.weight": [400, 2048],
    }
    assert_has(state, facts)
    checkpoint = written(state, tmp_path / "mmaction2.pth", "state_dict", meta={"mmaction2_version": "1.2.0"})
    imported = import_checkpoint("mmaction2", checkpoint, preset, KINETICS)
    assert_every_tensor_back(imported.model, original)
    spec = imported.preprocessing  # segments of the 1x1x8 recipe; mean / std from mmaction2's 0-255 units
    assert (spec.sampling, spec.frames, spec.short_side, spec.crop_size) == ("segments", 8, 256, 224)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


MMACTION2_3D_FACTS = {
    "i3d_r50": {  # inflate ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0)), conv1 5x7x7
        "backbone.conv1.conv.weight": [64, 3, 5, 7, 7],
        "backbone.layer1.2.conv1.conv.weight": [64, 256, 3, 1, 1],
        "backbone.layer2.1.conv1.conv.weight": [128, 512, 1, 1, 1],
        "backbone.layer4.1.conv1.conv.weight": [512, 2048, 3, 1, 1],
    },
    "slowonly_r50": {  # inflate (0, 0, 1, 1), conv1 1x7x7
        "backbone.conv1.conv.weight": [64, 3, 1, 7, 7],
        "backbone.layer2.3.conv1.conv.weight": [128, 512, 1, 1, 1],
        "backbone.layer3.5.conv1.conv.weight": [256, 1024, 3, 1, 1],
    },
}


@pytest.mark.parametrize(("preset", "frames", "stride"), [("i3d_r50", 32, 2), ("slowonly_r50", 8, 8)])
def test_mmaction2_i3d_and_slowonly(preset, frames, stride, tmp_path):
    original = randomised(create_model(preset, num_classes=400))
    state = in_layout("mmaction2", original)
    assert len(state) == 320
    assert_has(state, {**MMACTION2_3D_FACTS[preset], "cls_head.fc_cls.weight": [400, 2048]})
    imported = import_checkpoint("mmaction2", written(state, tmp_path / "m.pth", "state_dict"), preset, KINETICS)
    assert_every_tensor_back(imported.model, original)
    spec = imported.preprocessing
    assert (spec.sampling, spec.frames, spec.stride, spec.short_side, spec.crop_size) == (
        "dense",
        frames,
        stride,
        256,
        224,
    )


def test_mmaction2_i3d_strides_and_pools_in_time_as_its_backbone_does():
    """32 frames: conv1 and pool1 stride 2 in time (16, then 8), pool2 after layer1 (4); fvcore counts the same."""
    fields = {"stem_temporal_stride": 2, "stem_pool_temporal_stride": 2, "res2_temporal_pool": True}
    model = create_model("i3d_r50", num_classes=400, frames=32, size=32, **fields).eval()
    frames = {}
    for name in ("stem.conv", "stem", "stages.0", "stages.1", "stages.3"):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, out, name=name: frames.update({name: out.shape[2]})
        )
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32, 32))
    assert frames == {"stem.conv": 16, "stem": 8, "stages.0": 8, "stages.1": 4, "stages.3": 4}
    assert model.full_gflops() == pytest.approx(fvcore_gflops(model, 32, 32), rel=1e-6)


# --- PySlowFast (slowfast/models: video_model_builder, stem_helper, resnet_helper, head_helper, operators.SE) -----


PYSLOWFAST_FACTS = {
    "slowonly_r50": {
        "s1.pathway0_stem.conv.weight": [64, 3, 1, 7, 7],
        "s5.pathway0_res2.branch2.a.weight": [512, 2048, 3, 1, 1],
    },
    "i3d_r50": {
        "s1.pathway0_stem.conv.weight": [64, 3, 5, 7, 7],
        "s3.pathway0_res1.branch2.a.weight": [128, 512, 1, 1, 1],
    },
}


@pytest.mark.parametrize("preset", ["slowonly_r50", "i3d_r50"])
def test_pyslowfast_resnets(preset, tmp_path):
    original = randomised(create_model(preset, num_classes=400))
    state = in_layout("pyslowfast", original)
    assert len(state) == 320
    assert_has(
        state,
        {
            **PYSLOWFAST_FACTS[preset],
            "s2.pathway0_res0.branch1_bn.weight": [256],
            "head.projection.weight": [400, 2048],
        },
    )
    checkpoint = written(state, tmp_path / "s.pyth", "model_state", epoch=196, cfg="TRAIN:\n  ENABLE: True\n")
    imported = import_checkpoint("pyslowfast", checkpoint, preset, KINETICS)
    assert_every_tensor_back(imported.model, original)
    assert imported.model.config.res2_temporal_pool == (preset == "i3d_r50")  # the `i3d` arch's pool1


def test_pyslowfast_x3d(tmp_path):
    original = randomised(create_model("x3d_s"))
    state = in_layout("pyslowfast", original)
    assert len(state) == 568
    facts = {
        "s1.pathway0_stem.conv_xy.weight": [24, 3, 1, 3, 3],
        "s1.pathway0_stem.conv.weight": [24, 1, 5, 1, 1],
        "s2.pathway0_res0.branch1_bn.weight": [24],  # PySlowFast's ResBlock: a BN wherever branch1 is
        "s2.pathway0_res0.branch2.se.fc1.weight": [8, 54, 1, 1, 1],
        "s2.pathway0_res1.branch2.se.fc1.weight": None,  # SE on the 1st, 3rd, ... block only
        "s4.pathway0_res10.branch2.se.fc2.bias": [216],
        "s5.pathway0_res6.branch2.c_bn.running_var": [192],
        "head.lin_5.weight": [2048, 432, 1, 1, 1],
        "head.projection.weight": [400, 2048],
    }
    assert_has(state, facts)
    imported = import_checkpoint(
        "pyslowfast", written(state, tmp_path / "X3D_S.pyth", "model_state"), "x3d_s", KINETICS
    )
    assert_every_tensor_back(imported.model, original)
    spec = imported.preprocessing
    assert (spec.frames, spec.stride, spec.short_side, spec.crop_size, spec.mean) == (13, 6, 160, 160, (0.45,) * 3)


# --- torchvision (torchvision/models/resnet.py) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "count", "facts"),
    [
        ("tsn_r50", 320, {"layer4.2.conv3.weight": [2048, 512, 1, 1], "layer1.0.downsample.1.running_mean": [256]}),
        ("tsn_r18", 122, {"layer1.0.conv1.weight": [64, 64, 3, 3], "layer2.0.downsample.0.weight": [128, 64, 1, 1]}),
    ],
)
def test_torchvision_resnet_as_a_tsn_of_imagenet_classes(preset, count, facts, tmp_path):
    original = randomised(create_model(preset, num_classes=1000))
    state = in_layout("torchvision", original)
    assert len(state) == count
    assert_has(state, {**facts, "conv1.weight": [64, 3, 7, 7], "fc.weight": [1000, original.fc.in_features]})
    labels = [f"imagenet class {index}" for index in range(1000)]
    imported = import_checkpoint("torchvision", written(state, tmp_path / "resnet.pth", None), preset, labels)
    assert_every_tensor_back(imported.model, original)
    assert imported.preprocessing.mean == (0.485, 0.456, 0.406)
