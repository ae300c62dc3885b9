"""``/metrics`` through a real server: every figure is checked against the responses the same requests got.

The exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from live_server import serving
from prometheus_client.parser import text_string_to_metric_families

from clipwise.models import create_model
from clipwise.models.checkpoint import save_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings

LABELS = [f"class_{i}" for i in range(5)]
STATIC, ADAFUSE, ADA3D = "tsn_r18_tiny", "adafuse_tsn_r18_tiny", "ada3d_i3d_r50_tiny"
MODELS = (STATIC, ADAFUSE, ADA3D)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for seed, name in enumerate(MODELS):
        torch.manual_seed(seed)
        save_version(create_model(name, num_classes=len(LABELS)), LABELS, root, name, trained=False)
    return root


def samples(client: httpx.Client) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def predict(client: httpx.Client, model: str, video: bytes, **params: object) -> httpx.Response:
    return client.post(f"/v1/models/{model}/predict", params=params, files={"file": ("clip.mp4", video)})


def test_metrics_count_what_the_responses_report(repository: Path, h264_video: Path) -> None:
    video = h264_video.read_bytes()
    with serving(create_app(Settings(model_repository=repository))) as client:
        bodies = {model: [predict(client, model, video, clips=2).json() for _ in range(2)] for model in MODELS}
        assert predict(client, STATIC, b"").status_code == 400
        assert predict(client, STATIC, video, backend="onnxruntime").status_code == 422
        infer = {"inputs": [{"name": "clips", "shape": [1, 3, 8, 64, 64], "datatype": "FP32", "data": [0.0] * 98304}]}
        v2 = client.post(f"/v2/models/{STATIC}/infer", json=infer).json()["parameters"]
        metrics = samples(client)

    requests = "clipwise_requests_total"
    assert value(metrics, requests, model=STATIC, version="1", backend="torch", status="200") == 3
    assert value(metrics, requests, model=STATIC, version="1", backend="torch", status="400") == 1
    assert value(metrics, requests, model=STATIC, version="1", backend="onnxruntime", status="422") == 1
    for model in (ADAFUSE, ADA3D):
        assert value(metrics, requests, model=model, version="1", backend="torch", status="200") == 2

    for model, answered in bodies.items():
        v2_gflops = v2["executed_gflops"] if model == STATIC else 0.0
        executed = sum(body["flops"]["executed_gflops"] for body in answered) + v2_gflops
        full = sum(body["flops"]["full_gflops"] for body in answered) + (v2["full_gflops"] if model == STATIC else 0)
        policy = sum(body["flops"]["policy_gflops"] for body in answered) + v2_gflops
        assert value(metrics, "clipwise_executed_gflops_total", model=model) == pytest.approx(executed)
        assert value(metrics, "clipwise_policy_gflops_total", model=model) == pytest.approx(policy)
        assert value(metrics, "clipwise_full_gflops_total", model=model) == pytest.approx(full)
        per_view = {body["full_compute_ms_per_view"] for body in answered}
        assert len(per_view) == 1 and None not in per_view  # timed once, at load
        full_compute_s = value(metrics, "clipwise_full_compute_seconds", model=model, backend="torch")
        assert full_compute_s == pytest.approx(per_view.pop() / 1000)
        decoded = 3 if model == STATIC else 2  # the v2 request has its tensor parsed in the decode stage
        assert value(metrics, "clipwise_stage_seconds_count", model=model, stage="decode") == decoded
        assert value(metrics, "clipwise_stage_seconds_count", model=model, stage="preprocess") == 2
        for stage in ("queue", "inference"):
            assert value(metrics, "clipwise_stage_seconds_count", model=model, stage=stage) == decoded
        total_inference_s = sum(body["timing_ms"]["inference"] for body in answered) / 1000
        measured = value(metrics, "clipwise_stage_seconds_sum", model=model, stage="inference")
        assert measured >= total_inference_s - 1e-6
        assert value(metrics, "clipwise_model_loaded", model=model, version="1", backend="torch") == 1
        assert value(metrics, "clipwise_model_loads_total", model=model, outcome="loaded") == 1

    adafuse_policies = [policy for body in bodies[ADAFUSE] for policy in body["policy"]]
    for measure in ("keep", "reuse", "skip"):
        expected = [policy["overall"][measure] for policy in adafuse_policies]
        observed = value(metrics, "clipwise_policy_fraction_sum", model=ADAFUSE, measure=measure)
        assert observed == pytest.approx(sum(expected))
        assert value(metrics, "clipwise_policy_fraction_count", model=ADAFUSE, measure=measure) == len(expected)
    ada3d_policies = [policy for body in bodies[ADA3D] for policy in body["policy"]]
    for measure in ("frame_fraction", "stage_fraction"):
        expected = [policy[measure] for policy in ada3d_policies]
        observed = value(metrics, "clipwise_policy_fraction_sum", model=ADA3D, measure=measure)
        assert observed == pytest.approx(sum(expected))
        below_half = value(metrics, "clipwise_policy_fraction_bucket", model=ADA3D, measure=measure, le="0.5")
        assert below_half == np.sum(np.asarray(expected) <= 0.5)
    assert value(metrics, "clipwise_policy_fraction_count", model=STATIC, measure="keep") == 0


def test_each_app_has_its_own_registry(repository: Path, h264_video: Path) -> None:
    settings = Settings(model_repository=repository, models=[STATIC])
    with serving(create_app(settings)) as first, serving(create_app(settings)) as second:
        assert predict(first, STATIC, h264_video.read_bytes()).status_code == 200
        requests = (
            "clipwise_requests_total",
            frozenset({"model": STATIC, "version": "1", "backend": "torch", "status": "200"}.items()),
        )
        assert samples(first)[requests] == 1
        assert requests not in samples(second)
