"""Hardening through a real server: odd and broken videos, limits enforced before work is spent, hostile
names, versions and checkpoints, the token, and what the logs keep.

The server decodes under ``edge_cases.LIMITS`` (a low pixel limit, so the "oversized" video is small)
with a 1 MiB upload limit. A prediction is checked against the version it names run in-process on the same
views: its top-1 and scores (``answers``). Upload limits are checked over raw sockets: the client sends part of
a body, or declares more than it sends, and the server must answer without the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import torch
from answers import in_process_scores, wrong_answer
from edge_cases import EDGE_CASES, LIMITS
from live_server import assert_error, one_model_repository, serving, wait_for

import clipwise.video.decode as video_decode
from clipwise.models import create_model
from clipwise.models.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    LoadedVersion,
    load_version,
    save_version,
    sha256_file,
)
from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.service.errors import VIDEO_ERRORS
from clipwise.service.log import RequestIdFilter
from clipwise.service.schemas import PredictResponse
from clipwise.service.upload import FRAMING_ALLOWANCE
from clipwise.video import ClipSpec, load_clips

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(5)]
PREDICT = f"/v1/models/{MODEL}/predict"
TOKEN = "hardening-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT = 1 << 20
BOUNDARY = "hardening-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
PART_HEAD = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'.encode()
MARKER = b"CLIPWISE-BODY-MARKER-5f1c"  # a byte pattern no log line may carry


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of the model (the newest is served)."""
    root = tmp_path_factory.mktemp("hardening") / "repository"
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, root, MODEL, trained=False)
    return root


def settings(repository: Path, **overrides: object) -> Settings:
    limits = {
        "max_pixels": LIMITS.max_pixels,
        "max_duration_s": LIMITS.max_duration_s,
        "decode_timeout_s": LIMITS.decode_timeout_s,
    }
    return Settings(
        model_repository=repository,
        admin_token=TOKEN,
        max_upload_mb=UPLOAD_LIMIT / (1 << 20),
        **{**limits, **overrides},
    )


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[httpx.Client]:
    with serving(create_app(settings(repository))) as client:
        yield client


@pytest.fixture(scope="module")
def served(repository: Path) -> LoadedVersion:
    return load_version(repository, MODEL)


def predict(client: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return client.post(PREDICT, params=params, files={"file": ("clip.mp4", data)})


def in_progress(client: httpx.Client) -> float:
    """The server's gauge of inference requests it holds."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("clipwise_requests_in_progress "):
            return float(line.split()[-1])
    raise AssertionError("no clipwise_requests_in_progress in /metrics")


# ---------------------------------------------------------------- odd and broken videos

REFUSED = [name for name, case in EDGE_CASES.items() if case.refusal]
DECODED = [name for name, case in EDGE_CASES.items() if not case.refusal]


@pytest.mark.parametrize("name", REFUSED)
def test_an_unusable_video_is_a_clear_4xx_within_the_decode_limit(
    client: httpx.Client, edge_case_bytes: dict[str, bytes], name: str
) -> None:
    status, code = VIDEO_ERRORS[EDGE_CASES[name].refusal]
    response = predict(client, edge_case_bytes[name])
    assert_error(response, status, code)
    assert response.elapsed.total_seconds() < LIMITS.decode_timeout_s


@pytest.mark.parametrize("name", DECODED)
def test_an_odd_video_gets_the_prediction_its_frames_give(
    client: httpx.Client, served: LoadedVersion, edge_case_bytes: dict[str, bytes], name: str
) -> None:
    case, data = EDGE_CASES[name], edge_case_bytes[name]
    response = predict(client, data, top_k=len(LABELS))
    assert response.status_code == 200, response.text
    assert response.elapsed.total_seconds() < LIMITS.decode_timeout_s
    body = PredictResponse.model_validate_json(response.content)

    expected = in_process_scores(served, data, limits=LIMITS)
    assert wrong_answer(response.json(), {served.version: expected}, tolerance=1e-5) is None
    views = load_clips(data, ClipSpec(**served.manifest.preprocessing.to_dict()), limits=LIMITS)
    video = body.video
    assert (video.num_frames, video.frame_indices) == (views.info.num_frames, views.frame_indices)
    assert (video.truncated, video.rotation) == (case.truncated, case.rotation)


# ---------------------------------------------------------------- limits before work


@contextlib.contextmanager
def raw_connection(client: httpx.Client) -> Iterator[socket.socket]:
    with socket.create_connection((client.base_url.host, client.base_url.port), timeout=10) as sock:
        yield sock


def request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: clipwise", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of the response on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the connection closed before a response: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection (rather than reading on) within the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize(
    "path, status",
    [(PREDICT + "?backend=no-such-runtime", 422), ("/v1/models/no_such_model/predict", 404)],
)
def test_an_early_answer_reaches_a_client_still_sending(client: httpx.Client, path: str, status: int) -> None:
    """Refused before its body is read, the request still gets its JSON answer: the server reads and drops
    the rest of the body first (a reset would lose the answer), and the connection stays open."""
    body = PART_HEAD + os.urandom(UPLOAD_LIMIT - 4096) + f"\r\n--{BOUNDARY}--\r\n".encode()
    with raw_connection(client) as sock:
        sock.sendall(request_head(path, {"Content-Type": MULTIPART, "Content-Length": str(len(body))}) + body)
        answered, headers, _ = read_response(sock)
        assert (answered, headers.get("connection")) == (status, None)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: clipwise\r\n\r\n")  # the same connection serves on
        assert read_response(sock)[0] == 200


def test_a_declared_length_over_the_limit_is_413_before_the_body_is_sent(client: httpx.Client) -> None:
    with raw_connection(client) as sock:
        sock.sendall(request_head(PREDICT, {"Content-Type": MULTIPART, "Content-Length": str(1 << 30)}))
        status, headers, body = read_response(sock)  # not a byte of the gigabyte sent
        assert (status, json.loads(body)["error"]["code"]) == (413, "upload_too_large")
        assert headers["connection"] == "close" and closed_by_server(sock)


def test_a_streamed_body_is_cut_as_soon_as_it_passes_the_limit(client: httpx.Client) -> None:
    """Chunked, so the server cannot know the size: it counts, answers 413 once past the limit (and its
    multipart allowance) although the body has not ended, and closes the connection instead of reading on."""
    chunk = b"\0" * 65536
    with raw_connection(client) as sock:
        sock.sendall(request_head(PREDICT, {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"}))
        sock.sendall(b"%x\r\n%s\r\n" % (len(PART_HEAD), PART_HEAD))
        for _ in range((UPLOAD_LIMIT + FRAMING_ALLOWANCE) // len(chunk) + 1):  # and no end of the body
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, headers, body = read_response(sock)
        assert (status, json.loads(body)["error"]["code"]) == (413, "upload_too_large")
        assert headers["connection"] == "close" and closed_by_server(sock)


def test_a_stalled_upload_is_408_after_the_upload_timeout(repository: Path, h264_video: Path) -> None:
    video = h264_video.read_bytes()
    with serving(create_app(settings(repository, upload_timeout_s=0.5))) as client, raw_connection(client) as sock:
        sock.sendall(request_head(PREDICT, {"Content-Type": MULTIPART, "Content-Length": str(len(video) + 500)}))
        sock.sendall(PART_HEAD + video[:1000])  # and nothing more
        started = time.monotonic()
        status, headers, body = read_response(sock)
        assert (status, json.loads(body)["error"]["code"]) == (408, "upload_timeout")
        assert 0.4 < time.monotonic() - started < 5 and headers["connection"] == "close"


def test_requests_beyond_the_limit_are_503_at_once_with_retry_after(repository: Path, h264_video: Path) -> None:
    """Two uploads that never finish hold both places: a third request is refused at once, not queued."""
    video = h264_video.read_bytes()
    head = request_head(PREDICT, {"Content-Type": MULTIPART, "Content-Length": str(len(video) + 500)})
    with serving(create_app(settings(repository, max_pending_requests=2))) as client:
        with raw_connection(client) as first, raw_connection(client) as second:
            for sock in (first, second):
                sock.sendall(head + PART_HEAD + video[:1000])
            wait_for(lambda: in_progress(client) == 2, "both uploads to be admitted")
            response = predict(client, video)
            assert_error(response, 503, "overloaded")
            assert response.headers["retry-after"] == "1" and response.elapsed.total_seconds() < 2
        wait_for(lambda: in_progress(client) == 0, "the abandoned uploads to be released")
        assert predict(client, video).status_code == 200


def test_a_request_that_overruns_its_deadline_is_504(repository: Path, h264_video: Path) -> None:
    with serving(create_app(settings(repository, request_timeout_s=0.001))) as client:
        assert_error(predict(client, h264_video.read_bytes()), 504, "deadline_exceeded")
        assert in_progress(client) == 0


# ---------------------------------------------------------------- hostile names and versions

OUTSIDE = "{outside}"  # stands for the absolute path of a valid model outside the repository, URL-encoded
HOSTILE_NAMES = [
    "%2e%2e",
    "%2E%2E%2Foutside%2Fevil",
    "..%2Foutside%2Fevil",
    OUTSIDE,
    "...",
    "a" * 4000,
    "%E6%A8%A1%E5%9E%8B",  # unicode
    "tsn_r18_tiny%00",
    "tsn_r18_tiny%2F1",
    "~root",
]


@pytest.fixture(scope="module")
def outside_model(repository: Path) -> Path:
    """A valid model next to the repository (``../outside/evil`` from it), for traversals to aim at."""
    save_version(
        create_model(MODEL, num_classes=len(LABELS)), LABELS, repository.parent / "outside", "evil", trained=False
    )
    return repository.parent / "outside" / "evil"


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda name: name[:24])
def test_hostile_model_names_are_4xx_on_every_route(client: httpx.Client, outside_model: Path, name: str) -> None:
    name = name.replace(OUTSIDE, quote(str(outside_model), safe=""))
    requests = [
        ("GET", f"/v1/models/{name}", {}),
        ("POST", f"/v1/models/{name}/predict", {}),
        ("POST", f"/v1/models/{name}/load", AUTH),
        ("POST", f"/v1/models/{name}/unload", AUTH),
        ("GET", f"/v1/models/{name}/versions", AUTH),
        ("GET", f"/v2/models/{name}", {}),
        ("GET", f"/v2/models/{name}/versions/1/ready", {}),
        ("POST", f"/v2/models/{name}/infer", {}),
    ]
    for method, path, headers in requests:
        response = client.request(method, path, headers=headers, files={"file": ("a.mp4", b"x")})
        assert 400 <= response.status_code < 500, (method, path, response.text)
        assert len(response.content) < 1000  # a 4000-character name is not echoed back whole
    assert [(model["name"], model["version"]) for model in client.get("/v1/models").json()["models"]] == [(MODEL, 2)]


def test_a_literal_dot_dot_path_reaches_no_model(client: httpx.Client) -> None:
    with raw_connection(client) as sock:  # httpx would normalise the dots away
        sock.sendall(b"GET /v1/models/../../../etc/passwd HTTP/1.1\r\nHost: clipwise\r\n\r\n")
        status, _, body = read_response(sock)
    assert (status, json.loads(body)["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize("version", ["-1", "0", "1e3", "1.5", "99999999999999999999999999", "%2e%2e"])
def test_hostile_versions_are_4xx(client: httpx.Client, h264_video: Path, version: str) -> None:
    responses = [
        client.post(f"{PREDICT}?version={version}", files={"file": ("a.mp4", h264_video.read_bytes())}),
        client.post(f"/v1/models/{MODEL}/load?version={version}", headers=AUTH),
        client.get(f"/v2/models/{MODEL}/versions/{version}"),
    ]
    assert all(400 <= response.status_code < 500 for response in responses), [r.text for r in responses]


# ---------------------------------------------------------------- checkpoints that must not load


def pickled_weights(version: Path) -> None:
    """A torch pickle where the safetensors file should be (its sha256 in the manifest)."""
    torch.save({"weights": torch.zeros(3)}, version / WEIGHTS_FILE)


def truncated_weights(version: Path) -> None:
    weights = version / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def weights_outside(version: Path) -> None:
    """The weights a symlink to an identical file outside the repository."""
    outside = version.parents[2] / f"outside-{version.name}.safetensors"
    shutil.move(version / WEIGHTS_FILE, outside)
    (version / WEIGHTS_FILE).symlink_to(outside)


def version_outside(version: Path) -> None:
    """The whole version directory a symlink to an identical one outside the repository."""
    outside = version.parents[2] / f"outside-version-{version.name}"
    shutil.move(version, outside)
    version.symlink_to(outside, target_is_directory=True)


def manifest_change(**fields: object) -> Callable[[Path], None]:
    def change(version: Path) -> None:
        manifest = json.loads((version / MANIFEST_FILE).read_text())
        (version / MANIFEST_FILE).write_text(json.dumps({**manifest, **fields}))

    return change


BAD_CHECKPOINTS = {
    "pickled_weights": (pickled_weights, "safetensors"),
    "truncated_weights": (truncated_weights, "safetensors"),
    "weights_symlinked_outside": (weights_outside, "outside the repository"),
    "version_symlinked_outside": (version_outside, "outside the repository"),
    "unknown_manifest_field": (manifest_change(command="rm -rf /"), "invalid manifest"),
    "unknown_architecture": (manifest_change(architecture="os.system"), "os.system"),
    "unknown_config_field": (manifest_change(kwargs={"num_classes": len(LABELS), "exec": "x"}), "exec"),
    "sha_not_a_digest": (manifest_change(weights_sha256="../../etc/passwd"), "invalid manifest"),
}


@pytest.fixture(scope="module")
def checkpoint_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_model_repository(tmp_path_factory.mktemp("checkpoints") / "repository", MODEL, LABELS)


@pytest.fixture(scope="module")
def checkpoint_client(checkpoint_repository: Path) -> Iterator[httpx.Client]:
    with serving(create_app(settings(checkpoint_repository))) as client:
        yield client


def add_copy_of_version_1(repository: Path, change: Callable[[Path], None]) -> int:
    """A copy of version 1 as the next version, changed by ``change``, its manifest's sha256 updated to the
    weights it now holds (so the sha256 check alone cannot be what refuses it)."""
    model_dir = repository / MODEL
    number = max(int(path.name) for path in model_dir.iterdir()) + 1
    version = model_dir / str(number)
    shutil.copytree(model_dir / "1", version)
    change(version)
    manifest = json.loads((version / MANIFEST_FILE).read_text())
    if len(manifest["weights_sha256"]) == 64:
        manifest["weights_sha256"] = sha256_file(version / WEIGHTS_FILE)
        (version / MANIFEST_FILE).write_text(json.dumps(manifest))
    return number


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_refused_and_the_served_version_keeps_serving(
    checkpoint_client: httpx.Client, checkpoint_repository: Path, h264_video: Path, case: str
) -> None:
    change, fragment = BAD_CHECKPOINTS[case]
    number = add_copy_of_version_1(checkpoint_repository, change)
    response = checkpoint_client.post(f"/v1/models/{MODEL}/load?version={number}", headers=AUTH)
    assert fragment in assert_error(response, 502, "invalid_version").error.message
    video = h264_video.read_bytes()
    answer = predict(checkpoint_client, video, top_k=len(LABELS))
    assert answer.status_code == 200, answer.text
    expected = in_process_scores(load_version(checkpoint_repository, MODEL, 1), video)
    assert wrong_answer(answer.json(), {1: expected}, tolerance=1e-5) is None


def test_a_symlink_inside_the_repository_is_followed(checkpoint_client: httpx.Client, checkpoint_repository: Path):
    def weights_from_version_1(version: Path) -> None:
        (version / WEIGHTS_FILE).unlink()
        (version / WEIGHTS_FILE).symlink_to(Path("..") / "1" / WEIGHTS_FILE)

    number = add_copy_of_version_1(checkpoint_repository, weights_from_version_1)
    response = checkpoint_client.post(f"/v1/models/{MODEL}/load?version={number}", headers=AUTH)
    assert response.status_code == 200, response.text
    assert checkpoint_client.post(f"/v1/models/{MODEL}/load?version=1", headers=AUTH).status_code == 200


# ---------------------------------------------------------------- the token


def test_every_route_that_changes_the_server_needs_the_token(client: httpx.Client) -> None:
    """From the OpenAPI document: every operation other than a read or an inference is a management route,
    and every management route answers 401 without the token, changing nothing."""
    paths = client.get("/openapi.json").json()["paths"]
    operations = [(method, path, spec) for path, methods in paths.items() for method, spec in methods.items()]
    management = [(method, path) for method, path, spec in operations if "management" in spec["tags"]]
    changing = {(method, path) for method, path, _ in operations if method != "get"}
    inference = {(method, path) for method, path in changing if path.endswith(("/predict", "/infer"))}
    assert changing - inference <= set(management) and len(management) >= 3
    for method, path in management:
        assert_error(client.request(method.upper(), path.replace("{name}", MODEL)), 401, "unauthorized")
    assert [(model["name"], model["version"]) for model in client.get("/v1/models").json()["models"]] == [(MODEL, 2)]


# ---------------------------------------------------------------- logs


def test_logs_carry_request_ids_and_never_request_bodies(
    client: httpx.Client, h264_video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = h264_video.read_bytes()
    caplog.handler.addFilter(RequestIdFilter())
    sent = [
        lambda: predict(client, video + MARKER),  # decodes: the marker trails the video
        lambda: predict(client, MARKER * 100),  # not a video
        lambda: client.post(PREDICT, files={"file": (MARKER.decode(), video), MARKER.decode(): MARKER.decode()}),
        lambda: client.post(PREDICT, content=MARKER, headers={"content-type": MULTIPART}),  # malformed
        lambda: client.post(f"/v2/models/{MODEL}/infer", content=MARKER),  # not JSON
        lambda: client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [{"name": MARKER.decode()}]}),
        lambda: client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": MARKER.decode(), "shape": [1], "datatype": MARKER.decode(), "data": [1]}]},
        ),
        lambda: client.post(
            f"/v2/models/{MODEL}/infer",
            json={
                "inputs": [{"name": "clips", "shape": [1, 3, 8, 64, 64], "datatype": "FP32", "data": [0.0]}],
                "outputs": [{"name": MARKER.decode()}],
            },
        ),
    ]

    def access_logged() -> set[str]:  # the access line is written once the response has gone
        return {record.request_id for record in caplog.records if record.name == "clipwise.access"}

    with caplog.at_level(logging.DEBUG):
        request_ids = {send().headers["x-request-id"] for send in sent}
        wait_for(lambda: request_ids <= access_logged(), "the access line of every request")
    server_side = [record for record in caplog.records if not record.name.startswith(("httpx", "httpcore"))]
    assert not [record.getMessage() for record in server_side if MARKER.decode() in record.getMessage()]
    ours = [record for record in server_side if record.name.startswith(("service", "clipwise"))]
    assert len(ours) > len(sent) and all(record.request_id != "-" for record in ours)  # "-": outside a request


def test_an_unexpected_error_reading_an_upload_is_a_422_naming_the_stage_logged_once_with_its_request_id(
    repository: Path, h264_video: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_index(*args: object) -> None:
        raise KeyError("a bug of the reader")

    monkeypatch.setattr(video_decode, "_read_index", broken_index)  # decoding in this process reaches it
    caplog.handler.addFilter(RequestIdFilter())
    with serving(create_app(settings(repository, decode_workers=0))) as client, caplog.at_level(logging.WARNING):
        response = predict(client, h264_video.read_bytes())
    body = assert_error(response, 422, "unreadable_video")
    assert "while indexing its packets (KeyError)" in body.error.message and "a bug" not in body.error.message
    logged = [record for record in caplog.records if "an upload could not be read" in record.getMessage()]
    assert len(logged) == 1 and logged[0].request_id == response.headers["x-request-id"]
    assert "a bug of the reader" in logged[0].getMessage()
