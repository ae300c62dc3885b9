"""``clipwise import`` as a user runs it: import → serve → predict over HTTP, nothing in a file runs, and every
misfit named; ``clipwise flops`` of an imported network."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from live_server import serving
from pytorchvideo_hub import hub, randomised, save_hub_checkpoint

from clipwise.cli import main
from clipwise.models import create_model
from clipwise.models.checkpoint import read_manifest
from clipwise.models.imports import CheckpointImportError, import_checkpoint, read_state_dict
from clipwise.models.labels import bundled_labels
from clipwise.service.app import create_app
from clipwise.service.config import Settings

KINETICS = bundled_labels("kinetics400")


def test_the_kinetics_400_list_is_the_400_classes_in_their_alphabetical_order():
    assert len(KINETICS) == len(set(KINETICS)) == 400
    assert KINETICS == sorted(KINETICS)
    assert (KINETICS[0], KINETICS[1], KINETICS[399]) == ("abseiling", "air drumming", "zumba")
    assert "passing American football (not in game)" in KINETICS  # the capital as the dataset spells it


def test_import_serve_predict(tmp_path, h264_video, capsys):
    """A PyTorchVideo X3D-S file, imported by the command, served by a server that does nothing else with it."""
    checkpoint = save_hub_checkpoint(randomised(hub().x3d_s()), tmp_path / "X3D_S.pyth")
    repository = tmp_path / "repository"
    command = ["import", "--source", "pytorchvideo", "--checkpoint", str(checkpoint), "--architecture", "x3d_s"]
    assert main([*command, "--labels", "kinetics400", "--out", str(repository / "x3d_s")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {repository / 'x3d_s' / '1'}"
    manifest = read_manifest(repository / "x3d_s" / "1")

    with serving(create_app(Settings(model_repository=repository))) as client:
        response = client.post("/v1/models/x3d_s/predict?top_k=3", files={"file": h264_video.read_bytes()})
        detail = client.get("/v1/models/x3d_s").json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert all(prediction["label"] == KINETICS[prediction["index"]] for prediction in body["predictions"])
    assert body["flops"]["full_gflops"] == pytest.approx(manifest.full_gflops)
    assert len(body["video"]["frame_indices"][0]) == 13  # X3D-S: 13 frames, every 6th
    assert detail["preprocessing"] == manifest.preprocessing.to_dict()

    fields = {key: value for key, value in manifest.kwargs.items() if key != "num_classes"}
    assert main(["flops", "--model", "x3d_s", "--model-args", json.dumps(fields), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gflops"] == round(manifest.full_gflops, 4)


class WritesAFile:
    """Unpickling this creates ``path``: a stand-in for code a hostile checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_a_caffe2_pickle_is_refused_before_it_is_read(tmp_path):
    marker, checkpoint = tmp_path / "ran", tmp_path / "I3D_8x8_R50.pkl"
    checkpoint.write_bytes(pickle.dumps({"blobs": {"conv1_w": WritesAFile(marker)}}))
    with pytest.raises(CheckpointImportError, match=r"Caffe2 pickle \(\.pkl\).*unpickles nothing"):
        import_checkpoint("pyslowfast", checkpoint, "i3d_r50", KINETICS)
    assert not marker.exists()


def test_a_checkpoint_holding_other_objects_is_refused_and_nothing_in_it_runs(tmp_path):
    marker, checkpoint = tmp_path / "ran", tmp_path / "model.pyth"
    torch.save({"model_state": {"w": torch.zeros(1)}, "hook": WritesAFile(marker)}, checkpoint)
    with pytest.raises(CheckpointImportError, match=r"refused by torch\.load\(weights_only=True\)"):
        read_state_dict(checkpoint, "model_state")
    assert not marker.exists()


def test_a_state_dict_entry_that_is_no_tensor_is_refused(tmp_path):
    torch.save({"state_dict": {"backbone.conv1.conv.weight": torch.zeros(1), "step": 3}}, tmp_path / "m.pth")
    with pytest.raises(CheckpointImportError, match="entries that are not tensors: step"):
        read_state_dict(tmp_path / "m.pth", "state_dict")


def test_every_missing_misshaped_and_spare_tensor_is_named(tmp_path):
    state = {key.removeprefix("backbone."): value for key, value in create_model("tsn_r18_tiny").state_dict().items()}
    del state["layer1.0.bn1.running_var"]
    state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"][:, :8]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointImportError) as refused:
        import_checkpoint("torchvision", tmp_path / "resnet.pth", "tsn_r18_tiny", [f"c{i}" for i in range(174)])
    assert str(refused.value).splitlines()[1:] == [
        "  missing from the file (1): backbone.layer1.0.bn1.running_var ← layer1.0.bn1.running_var",
        "  of another shape in the file (1): backbone.layer1.0.conv2.weight [16, 16, 3, 3] ← layer1.0.conv2.weight "
        "[16, 8, 3, 3]",
        "  in the file without a place in the model (1): layer5.0.conv1.weight",
    ]


def test_a_file_of_another_source_fits_nowhere(tmp_path):
    state = {key: value for key, value in create_model("tsn_r18_tiny").state_dict().items()}  # Clipwise's own names
    torch.save({"state_dict": state}, tmp_path / "m.pth")
    with pytest.raises(CheckpointImportError, match="nothing fits: is it a mmaction2 checkpoint of tsn_r18_tiny"):
        import_checkpoint("mmaction2", tmp_path / "m.pth", "tsn_r18_tiny", [f"c{i}" for i in range(174)])


@pytest.mark.parametrize(
    ("source", "architecture", "error"),
    [
        ("caffe", "x3d_s", "unknown source 'caffe'"),
        (
            "mmaction2",
            "x3d_s",
            "mmaction2 checkpoints import into presets of the families tsn, resnet3d; x3d_s is a x3d",
        ),
        ("pytorchvideo", "adafuse_tsn_r50", "families resnet3d, x3d; adafuse_tsn_r50 is a adafuse"),
        ("pytorchvideo", "x3d_q", "unknown model 'x3d_q'"),
    ],
)
def test_the_command_refuses_what_it_cannot_import(source, architecture, error, tmp_path):
    torch.save({"model_state": {}}, tmp_path / "m.pyth")
    command = ["import", "--source", source, "--checkpoint", str(tmp_path / "m.pyth"), "--architecture", architecture]
    with pytest.raises(SystemExit, match=error):
        main([*command, "--labels", "kinetics400", "--out", str(tmp_path / "repository" / "m")])
    assert not (tmp_path / "repository" / "m").exists() or not any((tmp_path / "repository" / "m").iterdir())
