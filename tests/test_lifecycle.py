"""Model lifecycle through a real server: the token, load / unload / versions, swaps under load, the
repository watcher and ``clipwise deploy``.

Which version answered a prediction is checked against the outside: its top-1 and scores against those of the
version it names, run in-process on the same views (``answers``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from answers import in_process_scores, wrong_answer
from live_server import assert_error, serving, wait_for

from clipwise.commands import deploy
from clipwise.models import create_model
from clipwise.models.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, list_versions, load_version, save_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(7)]
TOKEN = "a-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WATCH_INTERVAL_S = 0.05
TOLERANCE = 1e-5  # one process, one preprocessing: only batching changes the float sums


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """Versions 1 and 2 of the model, different weights."""
    for seed in (1, 2):
        add_version(tmp_path, seed)
    return tmp_path / "repository"


def add_version(root: Path, seed: int, repository: str = "repository") -> Path:
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=len(LABELS))
    return save_version(model, LABELS, root / repository, MODEL, trained=False)


def admin_server(repository: Path, **settings: object) -> contextlib.AbstractContextManager[httpx.Client]:
    return serving(create_app(Settings(model_repository=repository, admin_token=TOKEN, **settings)))


def scores_of(repository: Path, version: int, video: bytes) -> list[float]:
    """The class scores version ``version`` gives the video, run in-process."""
    return in_process_scores(load_version(repository, MODEL, version), video)


def predicted(client: httpx.Client, video: bytes) -> dict:
    """The body of a prediction with every class's score."""
    response = client.post(
        f"/v1/models/{MODEL}/predict", params={"top_k": len(LABELS)}, files={"file": ("a.mp4", video)}
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_answered_by(repository: Path, version: int, body: dict, video: bytes) -> None:
    """``body`` is version ``version``'s answer: its version, top-1 and scores."""
    assert wrong_answer(body, {version: scores_of(repository, version, video)}, TOLERANCE) is None


def load(client: httpx.Client, version: int | None = None, name: str = MODEL) -> httpx.Response:
    params = {} if version is None else {"version": version}
    return client.post(f"/v1/models/{name}/load", params=params, headers=AUTH)


def served_version(client: httpx.Client) -> int:
    return client.get(f"/v1/models/{MODEL}").json()["version"]


# ---------------------------------------------------------------- the token


def test_management_is_disabled_without_a_token(repository: Path) -> None:
    with serving(create_app(Settings(model_repository=repository))) as client:
        for method, route in [("POST", "load"), ("POST", "unload"), ("GET", "versions")]:
            response = client.request(method, f"/v1/models/{MODEL}/{route}", headers=AUTH)
            assert "CLIPWISE_ADMIN_TOKEN" in assert_error(response, 403, "management_disabled").error.message
        assert served_version(client) == 2


def test_a_missing_or_wrong_token_is_401(repository: Path) -> None:
    wrong = [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    with admin_server(repository) as client:
        for headers in wrong:
            response = client.post(f"/v1/models/{MODEL}/unload", headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        assert served_version(client) == 2


def test_a_short_token_is_refused_at_configuration() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(admin_token="short")


# ---------------------------------------------------------------- load, unload, versions


def test_load_rolls_back_and_forward(repository: Path, h264_video: Path) -> None:
    video = h264_video.read_bytes()
    with admin_server(repository) as client:
        assert_answered_by(repository, 2, predicted(client, video), video)
        response = load(client, 1)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["version"], body["previous_version"], body["backends"]) == (MODEL, 1, 2, ["torch"])
        assert_answered_by(repository, 1, predicted(client, video), video)
        assert load(client).json()["version"] == 2  # default: the newest
        assert served_version(client) == 2


def test_versions_lists_the_repository_with_what_is_wrong(repository: Path) -> None:
    with admin_server(repository) as client:
        broken = repository / MODEL / "3"
        broken.mkdir()
        (broken / MANIFEST_FILE).write_text("{}")
        response = client.get(f"/v1/models/{MODEL}/versions", headers=AUTH)
        assert response.status_code == 200, response.text
        body = response.json()
        assert_error(client.get("/v1/models/nothing/versions", headers=AUTH), 404, "model_not_found")
    assert (body["model"], body["served_version"]) == (MODEL, 2)
    assert [entry["version"] for entry in body["versions"]] == [1, 2, 3]
    assert [entry["valid_manifest"] for entry in body["versions"]] == [True, True, False]
    assert "invalid manifest" in body["versions"][2]["problem"]
    first = body["versions"][0]
    described = (first["architecture"], first["trained"], first["backends"], first["default_backend"])
    assert described == (MODEL, False, ["torch"], "auto")


def test_a_version_that_cannot_be_served_is_refused_and_the_old_one_keeps_serving(
    repository: Path, h264_video: Path
) -> None:
    video = h264_video.read_bytes()
    with admin_server(repository) as client:
        tampered = add_version(repository.parent, 3)
        (tampered / WEIGHTS_FILE).write_bytes((tampered / WEIGHTS_FILE).read_bytes()[:-8] + bytes(8))
        assert "sha256" in assert_error(load(client, 3), 502, "invalid_version").error.message

        bad_schema = add_version(repository.parent, 4)
        manifest = json.loads((bad_schema / MANIFEST_FILE).read_text())
        (bad_schema / MANIFEST_FILE).write_text(json.dumps({**manifest, "labels": []}))
        assert "invalid manifest" in assert_error(load(client, 4), 502, "invalid_version").error.message

        # schema and weights are fine, but the head has the preset's classes and the manifest 7 labels: the
        # warm-up sees it
        model = create_model(MODEL)
        classes = model.config.num_classes
        wrong_head = save_version(model, [f"c{i}" for i in range(classes)], repository, MODEL, trained=False)
        manifest = json.loads((wrong_head / MANIFEST_FILE).read_text())
        del manifest["kwargs"]["num_classes"]
        (wrong_head / MANIFEST_FILE).write_text(json.dumps({**manifest, "labels": LABELS}))
        message = assert_error(load(client), 502, "invalid_version").error.message
        assert f"logits of shape (1, {classes})" in message

        assert_answered_by(repository, 2, predicted(client, video), video)
        metrics = client.get("/metrics").text
        assert f'clipwise_model_loads_total{{model="{MODEL}",outcome="refused"}} 3.0' in metrics


def test_unknown_models_and_versions_are_404(repository: Path) -> None:
    with admin_server(repository) as client:
        assert_error(load(client, 9), 404, "version_not_found")
        assert_error(load(client, name="nothing"), 404, "model_not_found")
        assert_error(load(client, name="..."), 404, "model_not_found")
        assert_error(client.post("/v1/models/%2E%2E/load", headers=AUTH), 404, "model_not_found")
        assert_error(client.post("/v1/models/..%2F..%2Fetc/load", headers=AUTH), 404, "not_found")
        assert_error(load(client, 0), 422, "validation_error")
        assert_error(client.post("/v1/models/nothing/unload", headers=AUTH), 404, "model_not_found")
        assert served_version(client) == 2


def test_unload_stops_serving_until_the_next_load(repository: Path, h264_video: Path) -> None:
    video = h264_video.read_bytes()
    with admin_server(repository) as client:
        response = client.post(f"/v1/models/{MODEL}/unload", headers=AUTH)
        assert response.json() == {"model": MODEL, "version": 2}
        assert client.get("/v1/models").json() == {"models": []}
        predict = client.post(f"/v1/models/{MODEL}/predict", files={"file": ("a.mp4", video)})
        assert_error(predict, 404, "model_not_found")
        assert_error(client.post(f"/v1/models/{MODEL}/unload", headers=AUTH), 404, "model_not_found")
        assert load(client).json()["previous_version"] is None
        assert_answered_by(repository, 2, predicted(client, video), video)


def test_swaps_under_load_drop_no_request_and_each_answer_is_its_version(repository: Path, h264_video: Path) -> None:
    video = h264_video.read_bytes()
    expected = {version: scores_of(repository, version, video) for version in (1, 2)}
    stop = threading.Event()
    with admin_server(repository) as client:

        def keep_predicting() -> list[dict]:
            answers = []
            while not stop.is_set() or not answers:
                answers.append(predicted(client, video))
            return answers

        with ThreadPoolExecutor(3) as pool:
            clients = [pool.submit(keep_predicting) for _ in range(3)]
            for version in (1, 2, 1, 2):
                assert load(client, version).status_code == 200
            stop.set()
            answers = [answer for future in clients for answer in future.result()]
    assert {answer["version"] for answer in answers} == {1, 2}
    wrong = [reason for answer in answers if (reason := wrong_answer(answer, expected, TOLERANCE))]
    assert wrong == [], f"{len(wrong)} of {len(answers)} answers: {wrong[:5]}"


# ---------------------------------------------------------------- watching the repository


def refused_loads(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'clipwise_model_loads_total{{model="{MODEL}",outcome="refused"}}'):
            return float(line.split()[-1])
    return 0.0


def test_the_watcher_loads_new_versions_refuses_bad_ones_and_respects_rollbacks(repository: Path) -> None:
    settings = Settings(model_repository=repository, admin_token=TOKEN, watch=True, watch_interval_s=WATCH_INTERVAL_S)
    app = create_app(settings)
    state = app.state.service
    with serving(app) as client:
        add_version(repository.parent, 3)
        wait_for(lambda: served_version(client) == 3, "the watcher to load version 3")

        broken = add_version(repository.parent, 4)
        (broken / WEIGHTS_FILE).write_bytes(b"not weights")
        wait_for(lambda: refused_loads(client) == 1, "the watcher to refuse version 4")
        assert served_version(client) == 3

        assert load(client, 1).status_code == 200  # a rollback: version 3 is not loaded again
        polls = state.watch_polls  # the next poll may have begun before the rollback: wait for the one after it
        wait_for(lambda: state.watch_polls >= polls + 2, "a whole poll of the watcher after the rollback")
        assert (served_version(client), refused_loads(client)) == (1, 1)

        add_version(repository.parent, 5)
        wait_for(lambda: served_version(client) == 5, "the watcher to load version 5")


# ---------------------------------------------------------------- clipwise deploy


def run_deploy(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    deploy.register(parser.add_subparsers())
    args = parser.parse_args(["deploy", *argv])
    return args.run(args)


def test_deploy_copies_a_trained_version_and_the_server_loads_it(repository: Path, h264_video: Path) -> None:
    trained = add_version(repository.parent, 7, repository="runs")  # as `clipwise train --out runs/NAME` leaves it
    with admin_server(repository) as client:
        url = str(client.base_url)
        assert (
            run_deploy(
                "--from", str(trained), "--name", MODEL, "--repository", str(repository), "--url", url, "--token", TOKEN
            )
            == 0
        )
        assert_answered_by(repository, 3, predicted(client, h264_video.read_bytes()), h264_video.read_bytes())
    deployed = repository / MODEL / "3"
    assert sorted(path.name for path in deployed.iterdir()) == sorted(path.name for path in trained.iterdir())
    assert (deployed / WEIGHTS_FILE).read_bytes() == (trained / WEIGHTS_FILE).read_bytes()
    assert [path.name for path in (repository / MODEL).iterdir() if path.name.startswith(".")] == []


def test_deploy_refuses_a_bad_version_before_copying_anything(repository: Path, capsys: pytest.CaptureFixture) -> None:
    trained = add_version(repository.parent, 7, repository="runs")
    (trained / WEIGHTS_FILE).write_bytes(b"tampered")
    assert run_deploy("--from", str(trained.parent), "--name", MODEL, "--repository", str(repository)) == 1
    assert "sha256" in capsys.readouterr().err
    assert sorted(path.name for path in (repository / MODEL).iterdir()) == ["1", "2"]


def test_deploy_says_when_the_server_does_not_load_the_copied_version(
    repository: Path, capsys: pytest.CaptureFixture
) -> None:
    trained = add_version(repository.parent, 7, repository="runs")
    with serving(create_app(Settings(model_repository=repository))) as client:  # no admin token: 403
        assert (
            run_deploy(
                "--from",
                str(trained),
                "--name",
                MODEL,
                "--repository",
                str(repository),
                "--url",
                str(client.base_url),
                "--token",
                TOKEN,
            )
            == 2
        )
        assert served_version(client) == 2
    assert "version 3 is in the repository" in capsys.readouterr().err
    assert list_versions(repository / MODEL) == [1, 2, 3]
