"""The model repository: round trips, tamper and schema checks, name validation, version order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipwise.models import create_model
from clipwise.models.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    list_model_names,
    list_versions,
    load_version,
    save_version,
    validate_name,
)

LABELS = ["a", "b", "c"]
PRESET = "tsn_r18_tiny"


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(PRESET, num_classes=len(LABELS)).eval()


def edit_manifest(version_dir: Path, **changes: object) -> None:
    path = version_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A repository with one version of ``m`` and the model it was saved from."""
    model = tiny_model()
    save_version(model, LABELS, tmp_path, "m", trained=False, metrics={"top1": 0.5})
    return tmp_path, model


def test_round_trip_gives_the_same_logits(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, model = saved
    loaded = load_version(repository, "m")
    clips = torch.randn(2, 3, model.config.frames, model.config.size, model.config.size)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(clips), model(clips), rtol=0, atol=0)
    assert not loaded.model.training
    assert (loaded.name, loaded.version, loaded.manifest.labels) == ("m", 1, LABELS)
    assert loaded.manifest.trained is False and loaded.manifest.metrics == {"top1": 0.5}
    assert loaded.manifest.full_gflops == pytest.approx(model.full_gflops())


def test_a_different_init_gives_different_logits(saved: tuple[Path, torch.nn.Module]) -> None:
    """The round trip above is not vacuous: another seed's weights compute something else."""
    repository, model = saved
    other = tiny_model(seed=1)
    clips = torch.randn(1, 3, model.config.frames, model.config.size, model.config.size)
    with torch.inference_mode():
        assert not torch.allclose(load_version(repository, "m").model(clips), other(clips))


def test_tampered_weights_are_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    weights = repository / "m" / "1" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_version(repository, "m")


def test_missing_weights_are_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    (repository / "m" / "1" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_version(repository, "m")


@pytest.mark.parametrize(
    "changes",
    [
        {"labels": ["a", "b"]},  # 2 labels for num_classes=3
        {"unexpected_field": 1},
        {"weights_sha256": "not-a-hash"},
        {"preprocessing": {"sampling": "segments", "frames": 8}},
        {"schema_version": 2},
    ],
    ids=["labels-vs-classes", "extra-field", "bad-hash", "incomplete-preprocessing", "schema-version"],
)
def test_invalid_manifests_are_refused(saved: tuple[Path, torch.nn.Module], changes: dict) -> None:
    repository, _ = saved
    edit_manifest(repository / "m" / "1", **changes)
    with pytest.raises(CheckpointError, match="invalid manifest"):
        load_version(repository, "m")


def test_unparseable_or_missing_manifest_is_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    manifest = repository / "m" / "1" / MANIFEST_FILE
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid manifest"):
        load_version(repository, "m")
    manifest.unlink()
    with pytest.raises(CheckpointError, match=MANIFEST_FILE):
        load_version(repository, "m")


def test_weights_of_another_shape_are_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    edit_manifest(repository / "m" / "1", architecture="tsn_r50_tiny")
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_version(repository, "m")


def test_weights_missing_layers_are_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    edit_manifest(repository / "m" / "1", kwargs={"num_classes": 3, "layers": [3, 2, 2, 2]})
    with pytest.raises(CheckpointError, match=r"do not match .*missing \['backbone.layer1.2"):
        load_version(repository, "m")


def test_unknown_architecture_is_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    edit_manifest(repository / "m" / "1", architecture="no_such_preset")
    with pytest.raises(CheckpointError, match="cannot build"):
        load_version(repository, "m")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../m", "/abs", "", "-dash", "a b", "x" * 65, "m\x00"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        validate_name(name)
    with pytest.raises(ValueError, match="invalid model name"):
        load_version(tmp_path, name)
    with pytest.raises(ValueError, match="invalid model name"):
        save_version(tiny_model(), LABELS, tmp_path, name, trained=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["tsn_r18_tiny", "model-2", "v1.5", "A"])
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


def test_versions_count_up_and_the_newest_loads_by_default(tmp_path: Path) -> None:
    for seed in range(3):
        save_version(tiny_model(seed), LABELS, tmp_path, "m", trained=False)
    assert list_versions(tmp_path / "m") == [1, 2, 3]
    assert load_version(tmp_path, "m").version == 3
    assert load_version(tmp_path, "m", 2).version == 2
    with pytest.raises(CheckpointError, match="no version 4"):
        load_version(tmp_path, "m", 4)


def test_versions_sort_numerically_and_ignore_other_entries(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    model_dir = repository / "m"
    (model_dir / "1").rename(model_dir / "10")
    for entry in ("9", "0", "-1", "latest", ".staging-x"):
        (model_dir / entry).mkdir()
    (model_dir / "11").write_text("a file, not a version")
    assert list_versions(model_dir) == [9, 10]
    assert load_version(repository, "m").version == 10  # 10 is newer than 9, not older as text
    with pytest.raises(CheckpointError, match="no manifest"):
        load_version(repository, "m", 9)


def test_model_names_list_only_models_with_versions(saved: tuple[Path, torch.nn.Module]) -> None:
    repository, _ = saved
    (repository / "empty").mkdir()
    (repository / ".hidden").mkdir()
    (repository / ".hidden" / "1").mkdir()
    assert list_model_names(repository) == ["m"]
    assert list_model_names(repository / "missing") == []
