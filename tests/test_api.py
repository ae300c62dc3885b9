"""The HTTP API through a real server: uvicorn on a loopback port, httpx as the client.

The servers serve a temporary repository holding two versions of ``tsn_r18_tiny`` (the newest is
served). Expected values come from outside the service: frame counts from PyAV, frame indices from the
sampler, scores from the model run in-process on the same views.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import torch
from live_server import assert_error, serving, wait_for

from clipwise.cli import build_parser
from clipwise.commands.serve import settings_from
from clipwise.export.runtime import MODEL_FILE as ONNX_FILE
from clipwise.export.runtime import open_backend
from clipwise.models import create_model
from clipwise.models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_version, save_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.service.errors import ApiError
from clipwise.service.schemas import PredictResponse
from clipwise.service.slots import SlotPool, deadline_in
from clipwise.video import ClipSpec, load_clips
from clipwise.video.synthetic import encode_video, index_coded_frames

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(11)]
PREDICT = f"/v1/models/{MODEL}/predict"
UPLOAD_LIMIT_MB = 1.0
BOUNDARY = "clipwise-test-boundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


# ---------------------------------------------------------------- servers


def save_versions(repository: Path, count: int) -> Path:
    for seed in range(count):
        torch.manual_seed(seed)
        save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, repository, MODEL, trained=False)
    return repository


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_versions(tmp_path_factory.mktemp("repository"), 2)


@pytest.fixture(scope="session")
def client(repository: Path) -> Iterator[httpx.Client]:
    with serving(create_app(Settings(model_repository=repository, max_upload_mb=UPLOAD_LIMIT_MB))) as client:
        yield client


@pytest.fixture(scope="session")
def strict_client(repository: Path) -> Iterator[httpx.Client]:
    """Limits small enough for tiny test videos: 100x100 pixels, 1 s, and no time at all to decode."""
    settings = Settings(model_repository=repository, max_pixels=100 * 100, max_duration_s=1.0, decode_timeout_s=1e-6)
    with serving(create_app(settings)) as client:
        yield client


# ---------------------------------------------------------------- helpers


def small_video(frames: int, size: int = 64, fps: int = 25) -> bytes:
    return encode_video(index_coded_frames(frames, size, size), container_format="mp4", fps=fps)


def random_bytes(count: int) -> bytes:
    return np.random.default_rng(0).bytes(count)


def count_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def audio_only(container_format: str) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def multipart_body(*files: bytes, closed: bool = True) -> bytes:
    """A multipart/form-data body with one ``file`` part per item, its closing boundary unless not ``closed``."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"\r\n\r\n'.encode()
    body = b"\r\n".join(head + data for data in files)
    return body + (f"\r\n--{BOUNDARY}--\r\n".encode() if closed else b"")


def predict(client: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return client.post(PREDICT, params=params, files={"file": ("clip.mp4", data)})


def served_spec(repository: Path) -> ClipSpec:
    return ClipSpec(**load_version(repository, MODEL).manifest.preprocessing.to_dict())


@pytest.fixture(scope="session")
def videos(h264_video: Path, vp9_video: Path) -> dict[str, bytes]:
    return {"h264": h264_video.read_bytes(), "vp9": vp9_video.read_bytes()}


# ---------------------------------------------------------------- predictions


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_predict_returns_the_documented_response(
    client: httpx.Client, repository: Path, videos: dict[str, bytes], codec: str
) -> None:
    data = videos[codec]
    response = predict(client, data)
    assert response.status_code == 200, response.text
    body = PredictResponse.model_validate_json(response.content)
    assert set(response.json()) == set(PredictResponse.model_fields)
    assert (body.model, body.version, body.backend, body.policy) == (MODEL, 2, "torch", None)
    assert body.request_id == response.headers["x-request-id"]

    num_frames = count_frames(data)
    assert body.video.codec == codec and body.video.num_frames == num_frames
    assert body.video.frame_indices == served_spec(repository).frame_indices(num_frames)
    assert 0 < body.video.frames_decoded <= num_frames and not body.video.truncated

    assert [p.label for p in body.predictions] == [LABELS[p.index] for p in body.predictions]
    scores = [p.score for p in body.predictions]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)

    full = load_version(repository, MODEL).manifest.full_gflops
    assert body.flops.full_gflops == pytest.approx(full)
    assert body.flops.executed_gflops == pytest.approx(full)  # TSN is static: it executes everything
    assert body.flops.saving == pytest.approx(1 - body.flops.executed_gflops / body.flops.full_gflops, abs=1e-12)
    timing = body.timing_ms
    assert timing.total >= timing.decode + timing.preprocess + timing.inference > 0


def test_views_are_averaged_as_the_model_scores_them_in_process(
    client: httpx.Client, repository: Path, videos: dict[str, bytes]
) -> None:
    data = videos["h264"]
    response = predict(client, data, clips=2, crops=3, top_k=len(LABELS))
    assert response.status_code == 200, response.text
    body = PredictResponse.model_validate_json(response.content)

    served = load_version(repository, MODEL)
    spec = ClipSpec(**served.manifest.preprocessing.to_dict())
    views = load_clips(data, spec, clips=2, crops=3)
    expected = served.model.execute(views.clips).logits.softmax(dim=-1).mean(dim=0)
    assert {p.index: p.score for p in body.predictions} == pytest.approx(dict(enumerate(expected.tolist())), abs=1e-5)
    assert sum(p.score for p in body.predictions) == pytest.approx(1, abs=1e-5)
    assert body.video.frame_indices == spec.frame_indices(count_frames(data), clips=2)
    assert body.flops.full_gflops == pytest.approx(6 * served.manifest.full_gflops)
    assert body.flops.executed_gflops == pytest.approx(body.flops.full_gflops)


@pytest.mark.parametrize("top_k", [1, 3, len(LABELS)])
def test_top_k_sets_the_number_of_predictions(client: httpx.Client, videos: dict[str, bytes], top_k: int) -> None:
    response = predict(client, videos["h264"], top_k=top_k)
    assert response.status_code == 200, response.text
    assert len({p["index"] for p in response.json()["predictions"]}) == top_k


def test_concurrent_requests_report_the_same_as_one_alone(client: httpx.Client, videos: dict[str, bytes]) -> None:
    alone = predict(client, videos["h264"]).json()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: predict(client, videos["h264"]).json(), range(4)))
    for body in together:
        assert body["predictions"] == alone["predictions"]
        assert body["flops"] == alone["flops"]


# ---------------------------------------------------------------- client errors


@pytest.mark.parametrize(
    "params",
    [
        {"top_k": 0},
        {"top_k": len(LABELS) + 1},
        {"top_k": "many"},
        {"clips": 0},
        {"clips": 11},
        {"crops": 2},
        {"version": 0},
        {"version": "latest"},
        {"unknown": 1},
    ],
    ids=lambda params: "-".join(f"{k}={v}" for k, v in params.items()),
)
def test_bad_parameters_are_422(client: httpx.Client, videos: dict[str, bytes], params: dict) -> None:
    body = assert_error(predict(client, videos["h264"], **params), 422, "validation_error")
    assert next(iter(params)) in body.error.message


def test_a_body_without_the_file_part_is_422(client: httpx.Client) -> None:
    response = client.post(PREDICT, files={"video": ("clip.mp4", b"data")})
    assert "'file'" in assert_error(response, 422, "validation_error").error.message


def test_a_body_that_is_not_multipart_is_415(client: httpx.Client, videos: dict[str, bytes]) -> None:
    response = client.post(PREDICT, content=videos["h264"], headers={"content-type": "video/mp4"})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("make_upload", "status", "code"),
    [
        (lambda video: b"", 400, "empty_video"),
        (lambda video: video[: len(video) // 2], 400, "undecodable_video"),
        (lambda video: video[:64] + random_bytes(4096), 400, "undecodable_video"),
        (lambda video: random_bytes(4096), 415, "not_a_video"),
        (lambda video: b"a text file, not a video\n" * 20, 415, "not_a_video"),
        (lambda video: audio_only("matroska"), 415, "not_a_video"),
        (lambda video: audio_only("wav"), 415, "not_a_video"),
    ],
    ids=["empty", "truncated", "garbage-after-header", "random-bytes", "text", "audio-only-mkv", "audio-only-wav"],
)
def test_unusable_uploads_are_4xx(
    client: httpx.Client, videos: dict[str, bytes], make_upload: Callable[[bytes], bytes], status: int, code: str
) -> None:
    assert_error(predict(client, make_upload(videos["h264"])), status, code)


def test_an_upload_over_the_limit_is_413_from_its_content_length(client: httpx.Client) -> None:
    oversized = bytes(int(UPLOAD_LIMIT_MB * (1 << 20)) + 1)
    assert_error(predict(client, oversized), 413, "upload_too_large")


def test_a_streamed_upload_is_cut_at_the_limit(client: httpx.Client) -> None:
    """No Content-Length (chunked transfer): the body is counted as it arrives."""
    body = multipart_body(bytes(int(UPLOAD_LIMIT_MB * (1 << 20)) + 1))
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    response = client.post(PREDICT, content=chunks, headers=MULTIPART)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "upload_too_large")


def test_a_body_ending_inside_the_file_is_400(client: httpx.Client, videos: dict[str, bytes]) -> None:
    response = client.post(PREDICT, content=multipart_body(videos["h264"], closed=False), headers=MULTIPART)
    assert_error(response, 400, "malformed_multipart")


def test_two_file_parts_are_422(client: httpx.Client, videos: dict[str, bytes]) -> None:
    response = client.post(PREDICT, content=multipart_body(videos["h264"], videos["h264"]), headers=MULTIPART)
    assert_error(response, 422, "validation_error")
    assert client.post(PREDICT, content=multipart_body(videos["h264"]), headers=MULTIPART).status_code == 200


def test_limits_on_the_video_itself(strict_client: httpx.Client) -> None:
    assert_error(predict(strict_client, small_video(10, size=128)), 413, "too_many_pixels")
    assert_error(predict(strict_client, small_video(50)), 413, "video_too_long")
    assert_error(predict(strict_client, small_video(10)), 408, "decode_timeout")


def test_unknown_model_or_version_is_404(client: httpx.Client, videos: dict[str, bytes]) -> None:
    data = videos["h264"]
    assert_error(client.post("/v1/models/nope/predict", files={"file": ("a.mp4", data)}), 404, "model_not_found")
    assert_error(client.post("/v1/models/..%2F..%2Fetc/predict", files={"file": ("a.mp4", data)}), 404, "not_found")
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    message = assert_error(predict(client, data, version=1), 404, "version_not_found").error.message
    assert "version 2" in message and "[1, 2]" in message  # on disk, but not the version served
    assert_error(predict(client, data, version=7), 404, "version_not_found")
    assert predict(client, data, version=2).status_code == 200


def test_unknown_routes_and_methods_answer_json(client: httpx.Client) -> None:
    assert_error(client.get("/no/such/route"), 404, "not_found")
    response = client.get(PREDICT)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


# ---------------------------------------------------------------- request ids


def test_request_ids_are_accepted_when_sane_and_replaced_otherwise(client: httpx.Client) -> None:
    sane = "trace-42.a:b_C"
    assert client.get("/healthz", headers={"X-Request-ID": sane}).headers["x-request-id"] == sane
    for insane in ("has spaces", "x" * 65, "semi;colon"):
        echoed = client.get("/healthz", headers={"X-Request-ID": insane}).headers["x-request-id"]
        assert echoed != insane and len(echoed) == 32
    first, second = (client.get("/healthz").headers["x-request-id"] for _ in range(2))
    assert first != second
    body = assert_error(client.get("/nowhere", headers={"X-Request-ID": sane}), 404, "not_found")
    assert body.error.request_id == sane


# ---------------------------------------------------------------- health and models


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"status": "ready", "models": [MODEL]}


def test_model_list_and_detail(client: httpx.Client, repository: Path) -> None:
    manifest = load_version(repository, MODEL).manifest
    (summary,) = client.get("/v1/models").json()["models"]
    assert summary == {
        "name": MODEL,
        "version": 2,
        "family": "tsn",
        "architecture": MODEL,
        "full_gflops": manifest.full_gflops,
        "trained": False,
    }
    detail = client.get(f"/v1/models/{MODEL}").json()
    assert {key: detail[key] for key in summary} == summary
    assert detail["versions"] == [1, 2] and detail["labels"] == LABELS
    assert detail["preprocessing"] == manifest.preprocessing.to_dict()
    assert detail["input_shape"] == [3, 8, 64, 64]
    assert detail["kwargs"] == {"num_classes": len(LABELS)}
    assert detail["weights_sha256"] == manifest.weights_sha256


def test_docs_and_openapi_describe_the_api(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/models/{name}/predict"]["post"]
    upload = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    assert {"400", "404", "408", "413", "415", "422"} <= set(operation["responses"])
    expected_parameters = {"name", "version", "top_k", "clips", "crops", "backend"}
    assert {param["name"] for param in operation["parameters"]} == expected_parameters
    components = schema["components"]["schemas"]
    assert {"AdaFusePolicy", "Ada3DPolicy", "FusionPolicy"} <= set(components)
    assert "HTTPValidationError" not in components  # every 422 is documented as the error body it really is
    documented = """PredictResponse FlopsReport VideoReport TimingReport ModelDetail ErrorResponse LoadResponse
        UnloadResponse VersionList VersionInfo InferResponse InferOutput ModelMetadata TensorMetadata V2Error""".split()
    for name in documented:
        undocumented = [field for field, spec in components[name]["properties"].items() if "description" not in spec]
        assert undocumented == [], f"{name}: {undocumented}"


# ---------------------------------------------------------------- backends

ADMIN_TOKEN = "backend-test-admin-token"
ADAFUSE = "adafuse_tsn_r18_tiny"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 of the model with its model.onnx."""
    from clipwise.export.onnx import export_version  # the export extra (onnx, onnxscript): only these tests need it

    repository = save_versions(tmp_path_factory.mktemp("exported"), 1)
    export_version(repository / MODEL / "1")
    adafuse = create_model(ADAFUSE, num_classes=len(LABELS))
    export_version(save_version(adafuse, LABELS, repository, ADAFUSE, trained=False), check=False)
    return repository


def add_backend_variants(repository: Path) -> None:
    """Version 2: version 1 with onnxruntime as the manifest's default; version 3: other weights, carrying
    version 1's model.onnx; version 4: version 1 with a model.onnx that is not a graph."""
    first = repository / MODEL / "1"
    for number in (2, 3, 4):
        shutil.copytree(first, repository / MODEL / str(number))
    manifest = json.loads((first / MANIFEST_FILE).read_text())
    (repository / MODEL / "2" / MANIFEST_FILE).write_text(json.dumps({**manifest, "backend": "onnxruntime"}))
    torch.manual_seed(3)
    other = save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, repository, "scratch", trained=False)
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        shutil.copy(other / name, repository / MODEL / "3" / name)
    (repository / MODEL / "4" / ONNX_FILE).write_bytes(b"not an onnx graph")


@pytest.fixture(scope="module")
def backend_client(exported: Path) -> Iterator[httpx.Client]:
    """A server of version 1; versions 2 to 4 appear in the repository once it serves."""
    settings = Settings(model_repository=exported, models=[MODEL], admin_token=ADMIN_TOKEN)
    with serving(create_app(settings)) as client:
        add_backend_variants(exported)
        yield client


def load_version_at(client: httpx.Client, version: int) -> httpx.Response:
    return client.post(f"/v1/models/{MODEL}/load?version={version}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def test_a_version_with_model_onnx_runs_on_either_backend_and_reports_alike(
    backend_client: httpx.Client, exported: Path, videos: dict[str, bytes]
) -> None:
    data = videos["h264"]
    detail = backend_client.get(f"/v1/models/{MODEL}").json()
    assert (detail["version"], detail["backends"]) == (1, ["onnxruntime", "openvino", "torch"])
    answers = {}
    for backend in ("torch", "onnxruntime", "openvino"):
        response = predict(backend_client, data, backend=backend, top_k=len(LABELS), clips=2)
        assert response.status_code == 200, response.text
        answers[backend] = PredictResponse.model_validate_json(response.content)
        assert answers[backend].backend == backend

    loaded = load_version(exported, MODEL, 1)
    views = load_clips(data, served_spec(exported), clips=2)
    expected = open_backend(loaded, "onnxruntime").execute(views.clips).logits.softmax(-1).mean(0).tolist()
    torch_scores = {p.index: p.score for p in answers["torch"].predictions}
    for backend in ("onnxruntime", "openvino"):
        scores = {p.index: p.score for p in answers[backend].predictions}
        assert scores == pytest.approx(dict(enumerate(expected)), abs=1e-5)
        assert scores == pytest.approx(torch_scores, rel=1e-3)
        assert answers[backend].flops == answers["torch"].flops


def test_auto_serves_with_the_backend_timed_fastest_at_load(backend_client: httpx.Client, videos: dict[str, bytes]):
    detail = backend_client.get(f"/v1/models/{MODEL}").json()
    choice = detail["backend_choice"]
    timings = choice["timings_ms"]
    assert choice["asked"] == "auto" and set(timings) == {"torch", "onnxruntime", "openvino"}
    assert 1 <= choice["rounds"] <= 5 and all(ms > 0 for ms in timings.values())
    assert detail["backend"] == choice["chosen"] == min(timings, key=timings.get)
    assert "fastest" in choice["reason"]
    for asked in (None, "auto"):
        params = {} if asked is None else {"backend": asked}
        assert predict(backend_client, videos["h264"], **params).json()["backend"] == choice["chosen"]
    metrics = backend_client.get("/metrics").text
    for backend, ms in timings.items():
        line = f'clipwise_backend_timing_seconds{{backend="{backend}",model="{MODEL}"}}'
        assert float(metrics.split(line)[1].split()[0]) == pytest.approx(ms / 1000)
    assert f'clipwise_model_loaded{{backend="{choice["chosen"]}",model="{MODEL}",version="1"}} 1.0' in metrics


def test_the_manifest_names_the_default_backend(backend_client: httpx.Client, videos: dict[str, bytes]) -> None:
    loaded = load_version_at(backend_client, 2).json()
    assert loaded["backends"] == ["onnxruntime", "openvino", "torch"]
    choice = loaded["backend_choice"]
    assert (choice["asked"], choice["chosen"], choice["timings_ms"], choice["rounds"]) == (
        "onnxruntime",
        "onnxruntime",
        {},
        0,
    )
    assert predict(backend_client, videos["h264"]).json()["backend"] == "onnxruntime"
    assert predict(backend_client, videos["h264"], backend="torch").json()["backend"] == "torch"
    assert load_version_at(backend_client, 1).status_code == 200


def test_a_backend_the_version_cannot_run_on_is_422_with_the_reason(
    backend_client: httpx.Client, videos: dict[str, bytes]
) -> None:
    loaded = load_version_at(backend_client, 3).json()  # its model.onnx is version 1's
    assert loaded["backends"] == ["torch"]
    assert loaded["backend_choice"]["reason"] == "torch, the only backend available"
    for backend in ("onnxruntime", "openvino"):
        response = predict(backend_client, videos["h264"], backend=backend)
        assert "other weights" in assert_error(response, 422, "backend_not_available").error.message
    assert predict(backend_client, videos["h264"]).json()["backend"] == "torch"
    assert load_version_at(backend_client, 1).status_code == 200


def test_openvino_says_it_cannot_run_adafuse(backend_client: httpx.Client, videos: dict[str, bytes]) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    loaded = backend_client.post(f"/v1/models/{ADAFUSE}/load", headers=headers).json()
    assert loaded["backends"] == ["onnxruntime", "torch"]
    assert set(loaded["backend_choice"]["timings_ms"]) == {"onnxruntime", "torch"}
    response = backend_client.post(
        f"/v1/models/{ADAFUSE}/predict", params={"backend": "openvino"}, files={"file": ("clip.mp4", videos["h264"])}
    )
    assert "AdaFuse's gated convolutions" in assert_error(response, 422, "backend_not_available").error.message


def test_a_model_onnx_onnxruntime_cannot_open_makes_the_version_invalid(backend_client: httpx.Client) -> None:
    assert ONNX_FILE in assert_error(load_version_at(backend_client, 4), 502, "invalid_version").error.message
    assert backend_client.get(f"/v1/models/{MODEL}").json()["version"] == 1


# ---------------------------------------------------------------- startup


def test_a_version_that_fails_to_load_keeps_the_service_not_ready(tmp_path: Path) -> None:
    repository = save_versions(tmp_path, 1)
    (repository / MODEL / "1" / WEIGHTS_FILE).write_bytes(b"tampered")
    with serving(create_app(Settings(model_repository=repository)), ready=False) as client:
        wait_for(lambda: "failed" in client.get("/readyz").text, "the load to fail")
        assert "sha256" in assert_error(client.get("/readyz"), 503, "not_ready").error.message
        assert client.get("/healthz").status_code == 200
        assert_error(predict(client, b"video"), 404, "model_not_found")


def test_startup_is_refused_when_a_default_model_is_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_repository=save_versions(tmp_path, 1), models=f"{MODEL},missing")
    with pytest.raises(RuntimeError, match="did not start"), serving(create_app(settings)):
        pass
    assert "models ['missing'] have no version" in caplog.text


def test_a_server_bug_is_a_generic_500_with_the_request_id(tmp_path: Path) -> None:
    app = create_app(Settings(model_repository=tmp_path))

    def broken() -> None:
        raise RuntimeError("a secret detail")

    app.add_api_route("/broken", broken)
    with serving(app) as client:
        assert client.get("/readyz").json() == {"status": "ready", "models": []}
        body = assert_error(client.get("/broken"), 500, "internal_error")
        assert "secret" not in body.error.message and body.error.request_id in body.error.message


# ---------------------------------------------------------------- settings and the worker pool


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLIPWISE_PORT", "9000")
    monkeypatch.setenv("CLIPWISE_HOST", "0.0.0.0")
    monkeypatch.setenv("CLIPWISE_MODELS", "a, b")
    args = build_parser().parse_args(["serve", "--port", "9001", "--model-repository", str(tmp_path)])
    settings = settings_from(args)
    assert (settings.port, settings.host, settings.model_repository, settings.models) == (
        9001,
        "0.0.0.0",
        tmp_path,
        ["a", "b"],
    )
    assert settings.max_upload_bytes == 200 << 20


def test_the_slot_pool_refuses_work_it_cannot_start_before_the_deadline() -> None:
    async def scenario() -> None:
        pool = SlotPool(slots=1)
        busy = asyncio.create_task(pool.run(lambda: time.sleep(0.3), deadline_in(5)))
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as refused:
            await pool.run(lambda: None, deadline_in(0.05))
        assert (refused.value.status, refused.value.headers) == (503, {"Retry-After": "1"})
        await busy
        assert (await pool.run(lambda: 7, deadline_in(5)))[0] == 7
        pool.shutdown()

    asyncio.run(scenario())


def test_the_slot_pool_answers_504_past_the_deadline_and_keeps_the_slot_until_the_work_ends() -> None:
    async def scenario() -> None:
        pool = SlotPool(slots=1)
        finished = threading.Event()

        def slow() -> None:
            time.sleep(0.3)
            finished.set()

        with pytest.raises(ApiError) as late:
            await pool.run(slow, deadline_in(0.05))
        assert late.value.status == 504 and not finished.is_set()
        _, queue_ms = await pool.run(lambda: None, deadline_in(5))
        assert finished.is_set() and queue_ms > 100  # waited for the abandoned job to free its slot
        pool.shutdown()

    asyncio.run(scenario())


def test_an_adaptive_model_reports_its_dense_counterparts_time(tmp_path: Path) -> None:
    """The manifest names the dense model a user would deploy instead; GET /v1/models/{name} gives that model's
    own time per view, measured when it loaded, beside the adaptive model's full-compute time."""
    torch.manual_seed(0)
    adaptive = create_model("adafuse_tsn_r18_tiny", num_classes=len(LABELS), structure="prefix")
    save_version(adaptive, LABELS, tmp_path, "adafuse", trained=False, counterpart=MODEL)
    save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, tmp_path, MODEL, trained=False)
    orphan = create_model("adafuse_tsn_r18_tiny", num_classes=len(LABELS), structure="prefix")
    save_version(orphan, LABELS, tmp_path, "orphan", trained=False, counterpart="not_served")
    with serving(create_app(Settings(model_repository=tmp_path))) as client:
        dense = client.get(f"/v1/models/{MODEL}").json()
        report = client.get("/v1/models/adafuse").json()["counterpart"]
        assert report == {
            "name": MODEL,
            "backend": dense["backend"],
            "ms_per_view": dense["full_compute_ms"][dense["backend"]],
        }
        assert report["ms_per_view"] > 0
        assert client.get("/v1/models/orphan").json()["counterpart"] == {
            "name": "not_served",
            "backend": None,
            "ms_per_view": None,
        }
        assert client.get(f"/v1/models/{MODEL}").json()["counterpart"] is None
