"""The bundled model repository: trained versions of every family that load as the service loads them and
classify the sample clips of ``examples/`` sensibly."""

from pathlib import Path

import pytest
import torch

from clipwise.models.checkpoint import LoadedVersion, load_version
from clipwise.training.synthetic import CLASSES, TEMPORAL_CLASSES
from clipwise.video import ClipSpec, load_clips

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
EXAMPLES = ROOT / "examples"
MAX_BUNDLE_MB = 48  # the tiny models, and the small pair (width 32: 11 MB each)
FAMILIES = {"tsn", "adafuse", "ada3d", "x3d", "ctnet", "fusion"}
ORDER_BLIND = {"tsn_r18_tiny", "tsn_r18_small", "adafuse_tsn_r18_small"}  # frame averaging (the execution-aware
# AdaFuse reuses no channel across frames in its learned levels): it sees an L shape move, not which way
SAMPLES = {"moving_right.mp4": "moving_right", "static_circle.mp4": "static_circle"}


@pytest.fixture(scope="module")
def bundled() -> dict[str, LoadedVersion]:
    names = sorted(path.name for path in REPOSITORY.iterdir() if path.is_dir())
    return {name: load_version(REPOSITORY, name) for name in names}


def test_every_family_is_bundled_within_the_size_budget(bundled):
    assert {loaded.model.family for loaded in bundled.values()} >= FAMILIES
    size = sum(path.stat().st_size for path in REPOSITORY.rglob("*") if path.is_file())
    assert size <= MAX_BUNDLE_MB * 1e6


def test_every_version_is_trained_on_the_synthetic_benchmark(bundled):
    for name, loaded in bundled.items():
        manifest = loaded.manifest
        assert manifest.trained, name
        assert manifest.labels == list(CLASSES), name
        assert len(manifest.data_fingerprint or "") == 64, name
        assert manifest.metrics["top1"] > 2 / len(CLASSES), name  # validation top-1, well above chance
        assert 0 < manifest.metrics["mean_executed_gflops"] <= manifest.full_gflops * (1 + 1e-6), name


@pytest.mark.parametrize("clip, label", SAMPLES.items())
def test_the_sample_clips_are_classified_sensibly(bundled, clip, label):
    data = (EXAMPLES / clip).read_bytes()
    for name, loaded in bundled.items():
        spec = ClipSpec(**loaded.manifest.preprocessing.to_dict())
        with torch.inference_mode():
            execution = loaded.model.eval().execute(load_clips(data, spec).clips)
        predicted = loaded.manifest.labels[int(execution.logits[0].argmax())]
        if label in TEMPORAL_CLASSES and name in ORDER_BLIND:
            assert predicted in TEMPORAL_CLASSES, name
        else:
            assert predicted == label, name
        assert 0 < execution.executed_gflops[0] <= execution.full_gflops * (1 + 1e-6), name
