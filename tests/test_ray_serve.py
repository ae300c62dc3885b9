"""Clipwise on Ray Serve (``clipwise.service.ray_serve``), on a Ray instance this module starts and stops.

One Ray node of 2 CPUs, no dashboard, every server of it on 127.0.0.1 on a free port; the deployment has
2 replicas of 1 CPU and 1 torch thread each, watching a repository in a temporary directory. Clients send
``examples/moving_right.mp4`` in closed loops and the replica that answered is read from each response's
``X-Clipwise-Replica`` header (the replica's actor name, which ``ray.kill`` takes). A request is held in
flight on a replica by sending its upload halfway and the rest only later.
"""

from __future__ import annotations

import http.client
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from live_server import assert_error, wait_for
from pydantic import ValidationError

from clipwise.models.checkpoint import save_version
from clipwise.models.registry import create_model
from clipwise.service.app import create_app
from clipwise.service.config import RAY_LOCAL_ENVIRONMENT, RayServeSettings, Settings
from clipwise.service.local import free_port
from clipwise.service.ray_proxy import REPLICA_HEADER

for _name, _value in RAY_LOCAL_ENVIRONMENT.items():  # Ray reads these when it is imported, and its processes
    os.environ.setdefault(_name, _value)
ray_serve = pytest.importorskip("clipwise.service.ray_serve", reason="the ray extra is not installed")
cluster_utils = pytest.importorskip("ray.cluster_utils")
ray, serve = ray_serve.ray, ray_serve.serve

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(7)]
REPLICAS = 2
CLIENTS = 4
WATCH_INTERVAL_S = 0.2
VIDEO = Path(__file__).resolve().parent.parent / "examples" / "moving_right.mp4"
REPLACEMENT_TIMEOUT_S = 90.0
HELD = REPLICAS  # uploads held halfway: one a replica (Ray routes a request to the one with fewer in flight)
HELD_GAP_S = 0.5  # between two held uploads: the first is routed before the second arrives
BOUNDARY = "clipwise-test-boundary"


def add_version(repository: Path, seed: int) -> int:
    """A new version of the model with weights drawn from ``seed``; its number."""
    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=len(LABELS))
    return int(save_version(model, LABELS, repository, MODEL, trained=False).name)


def versions_on_disk(repository: Path) -> list[int]:
    return sorted(int(path.name) for path in (repository / MODEL).iterdir() if path.name.isdigit())


@pytest.fixture(scope="module")
def ray_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray node of this test's own, every file of it in the test's directories; its address.

    ``Cluster`` writes its address file under the system temporary directory's ``ray/`` whatever ``temp_dir``
    says (``RAY_TMPDIR`` moves it), so that directory is the test's too: nothing is read from or left in
    ``/tmp/ray``, which a new machine does not have.
    """
    system_temp = tmp_path_factory.mktemp("ray_system")
    (system_temp / "ray").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(system_temp))
        cluster = cluster_utils.Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "include_dashboard": False,
                "node_ip_address": "127.0.0.1",
                "dashboard_agent_listen_port": free_port(),
                "temp_dir": str(tmp_path_factory.mktemp("ray")),
            },
        )
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            yield cluster.address
        finally:
            serve.shutdown()
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    repository = tmp_path_factory.mktemp("served") / "repository"
    add_version(repository, seed=1)
    return Settings(
        port=free_port(),
        model_repository=repository,
        models=[MODEL],
        torch_threads=1,
        watch=True,
        watch_interval_s=WATCH_INTERVAL_S,
    )


@pytest.fixture(scope="module")
def clipwise(ray_node: str, settings: Settings) -> Iterator[httpx.Client]:
    """A client of the deployment's HTTP proxy, once both replicas are ready."""
    ray_serve.deploy(settings, RayServeSettings(replicas=REPLICAS))
    with httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=60) as client:
        yield client


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer at all
    replica: str | None = None
    version: int | None = None
    scores: tuple[float, ...] = ()
    code: str | None = None
    retry_after: str | None = None


def predict(client: httpx.Client, video: bytes, **params: int) -> Answer:
    """One prediction; an error answer's ``code`` is None unless it is the documented error body."""
    try:
        response = client.post(
            f"/v1/models/{MODEL}/predict", params={"top_k": len(LABELS), **params}, files={"file": ("a.mp4", video)}
        )
    except httpx.HTTPError:
        return Answer(status=0)
    return answer_of(response)


def answer_of(response: httpx.Response) -> Answer:
    replica, retry_after = response.headers.get(REPLICA_HEADER), response.headers.get("retry-after")
    if response.status_code != 200:
        return Answer(response.status_code, replica, code=documented_code(response), retry_after=retry_after)
    body = response.json()
    scores = {prediction["index"]: prediction["score"] for prediction in body["predictions"]}
    return Answer(200, replica, body["version"], tuple(scores[index] for index in range(len(LABELS))))


def documented_code(response: httpx.Response) -> str | None:
    """The error body's code when the body is the documented one, with the one request id of the response."""
    try:
        return assert_error(response, response.status_code, response.json()["error"]["code"]).error.code
    except (AssertionError, ValueError, KeyError, TypeError):
        return None


class Load:
    """``CLIENTS`` threads predicting in closed loops, each on its own connection, until the block ends;
    ``params``: of the predict route."""

    def __init__(self, base_url: str, **params: int) -> None:
        self.base_url = base_url
        self.params = params
        self.video = VIDEO.read_bytes()
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.keep_predicting) for _ in range(CLIENTS)]

    def keep_predicting(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop.is_set():
                self.answers.append(predict(client, self.video, **self.params))

    def wait_until(self, condition: Callable[[list[Answer]], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition(list(self.answers)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; answers: {Counter(self.answers)}")
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def held_prediction(port: int, video: bytes, release: threading.Event) -> Answer:
    """A prediction whose upload stops halfway until ``release`` is set: a request in flight on its replica
    meanwhile. An answer that comes first (the proxy's, once that replica died) is read without the rest."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'.encode()
    body = head + video + f"\r\n--{BOUNDARY}--\r\n".encode()
    half = len(head) + len(video) // 2
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", f"/v1/models/{MODEL}/predict?top_k={len(LABELS)}")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body[:half])
        answered = False
        while not (answered or release.wait(0.05)):
            answered = bool(select.select([connection.sock], [], [], 0)[0])
        if not answered:
            connection.send(body[half:])
        raw = connection.getresponse()
        response = httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read())
    except (OSError, http.client.HTTPException):
        return Answer(status=0)
    finally:
        connection.close()
    return answer_of(response)


class HeldUploads:
    """``count`` predictions held halfway (``held_prediction``), each in a thread, until the block ends; started
    ``HELD_GAP_S`` apart, so that Ray's router counts each before it routes the next."""

    def __init__(self, port: int, count: int) -> None:
        video = VIDEO.read_bytes()
        self.release = threading.Event()
        self.answers: list[Answer] = []
        self.threads = [
            threading.Thread(target=lambda: self.answers.append(held_prediction(port, video, self.release)))
            for _ in range(count)
        ]

    def __enter__(self) -> HeldUploads:
        for thread in self.threads:
            thread.start()
            time.sleep(HELD_GAP_S)
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join()


def replica_holding_a_request(client: httpx.Client, timeout: float = 30) -> str:
    """A replica whose ``/metrics`` shows an inference request in progress, by its actor name. (Ray routes
    ``/metrics`` too to the replica with fewer requests in flight: a request held on each replica is seen.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/metrics")
        for line in response.text.splitlines():
            if line.startswith("clipwise_requests_in_progress ") and float(line.split()[-1]) >= 1:
                return response.headers[REPLICA_HEADER]
        time.sleep(0.05)
    raise TimeoutError("no replica showed a request in progress")


def replicas_of(answers: list[Answer]) -> set[str | None]:
    """The replicas that answered predictions."""
    return {answer.replica for answer in answers if answer.status == 200}


def test_a_serve_config_names_the_settings_by_field() -> None:
    """``app_builder``, the ``import_path`` of a Serve config file: its ``args`` are settings, checked as such."""
    assert isinstance(ray_serve.app_builder({"models": MODEL, "watch": "true", "ray_replicas": "2"}), serve.Application)
    for wrong in ({"ray_replica": "2"}, {"max_upload_mb": "-1"}, {"ray_max_replicas": "1", "ray_replicas": "2"}):
        with pytest.raises(ValidationError):
            ray_serve.app_builder(wrong)


def test_the_replicas_serve_the_apps_routes_errors_and_request_ids(clipwise: httpx.Client, settings: Settings) -> None:
    assert clipwise.get("/readyz").json() == {"status": "ready", "models": [MODEL]}
    assert clipwise.get("/openapi.json").json()["paths"].keys() == create_app(settings).openapi()["paths"].keys()
    for response in (clipwise.get("/no/such/route"), clipwise.get("/healthz", headers={"X-Request-ID": "ray:1"})):
        assert len(response.headers.get_list("x-request-id")) == 1  # the replica's, not the proxy's as well
        assert response.headers[REPLICA_HEADER].startswith("SERVE_REPLICA::")
    assert_error(clipwise.get("/no/such/route"), 404, "not_found")
    assert clipwise.get("/healthz", headers={"X-Request-ID": "ray:1"}).headers["x-request-id"] == "ray:1"
    insane = clipwise.get("/healthz", headers={"X-Request-ID": "not sane"})
    assert insane.headers.get_list("x-request-id") != ["not sane"] and len(insane.headers["x-request-id"]) == 32
    video = VIDEO.read_bytes()
    too_many = clipwise.post(f"/v1/models/{MODEL}/predict", params={"top_k": 99}, files={"file": ("a.mp4", video)})
    assert_error(too_many, 422, "validation_error")
    v2_missing = clipwise.get("/v2/models/no_such_model/ready")
    assert v2_missing.status_code == 404 and set(v2_missing.json()) == {"error"}


def test_two_replicas_answer_predictions_and_share_the_requests(clipwise: httpx.Client) -> None:
    with Load(str(clipwise.base_url)) as load:
        load.wait_until(lambda answers: len(answers) >= 40, "40 answers")
    answers = load.answers
    assert {answer.status for answer in answers} == {200}
    per_replica = Counter(answer.replica for answer in answers)
    assert len(per_replica) == REPLICAS and min(per_replica.values()) >= len(answers) / 5, per_replica


def test_a_new_version_reaches_every_replica_under_load_and_no_request_fails(
    clipwise: httpx.Client, settings: Settings
) -> None:
    def every_replica_on(version: int) -> Callable[[list[Answer]], bool]:
        def condition(answers: list[Answer]) -> bool:
            moved = replicas_of([answer for answer in answers if answer.version == version])
            return len(replicas_of(answers)) == REPLICAS and moved == replicas_of(answers)

        return condition

    old = versions_on_disk(settings.model_repository)[-1]
    with Load(str(clipwise.base_url)) as load:
        load.wait_until(every_replica_on(old), f"both replicas answering version {old}")
        new = add_version(settings.model_repository, seed=old + 1)
        load.wait_until(every_replica_on(new), f"both replicas answering version {new}")
    answers = load.answers
    assert {answer.status for answer in answers} == {200}
    for replica in replicas_of(answers):  # each replica moves once, from the old version to the new
        versions = [answer.version for answer in answers if answer.replica == replica]
        assert versions == sorted(versions) and set(versions) == {old, new}
    scores = {version: {answer.scores for answer in answers if answer.version == version} for version in (old, new)}
    assert len(scores[old]) == len(scores[new]) == 1 and scores[old] != scores[new]  # one answer per version


def test_a_killed_replica_costs_only_retryable_503s_and_ray_replaces_it(
    clipwise: httpx.Client, settings: Settings
) -> None:
    """A replica is killed with a held upload in flight on it: that request is answered 503
    ``replica_unavailable`` (retryable), every other one 200 or 503, and a new replica serves the newest version."""
    with Load(str(clipwise.base_url)) as load:
        load.wait_until(lambda answers: len(replicas_of(answers)) == REPLICAS, "both replicas answering")
    before = replicas_of(load.answers)
    with HeldUploads(settings.port, HELD) as held:
        victim = replica_holding_a_request(clipwise)
        with Load(str(clipwise.base_url)) as load:
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            wait_for(lambda: len(held.answers) > 0, "an answer to the request held on the killed replica")
            held.release.set()  # the others finish on the surviving replica
            load.wait_until(
                lambda answers: len(replicas_of(answers) - before) == 1, "a new replica", REPLACEMENT_TIMEOUT_S
            )
    answers = load.answers + held.answers
    failed = [answer for answer in answers if answer.status != 200]
    print(f"\nkilled {victim}: {len(answers) - len(failed)} answered 200, failed: {Counter(failed)}")
    assert any(answer.code == "replica_unavailable" for answer in held.answers), held.answers
    assert all(answer.status == 503 and answer.retry_after == "1" for answer in failed), failed
    assert {answer.code for answer in failed} <= {"replica_unavailable", "overloaded"}
    (replacement,) = replicas_of(answers) - before
    newest = versions_on_disk(settings.model_repository)[-1]
    assert {answer.version for answer in answers if answer.replica == replacement} == {newest}


def test_deploying_again_is_a_rolling_update_that_drops_no_request(
    clipwise: httpx.Client, settings: Settings, ray_node: str
) -> None:
    """``clipwise serve --engine ray`` to the running cluster, with other settings: one replica, started before
    the old ones stop (surge 100 %, which the 2 CPUs hold once one old replica is gone)."""
    flags = ["--model-repository", str(settings.model_repository), "--models", MODEL, "--port", str(settings.port)]
    flags += ["--torch-threads", "1", "--watch", "--watch-interval-s", str(WATCH_INTERVAL_S), "--max-batch-size", "8"]
    flags += ["--ray-address", ray_node, "--ray-replicas", "1", "--ray-surge-percent", "100"]
    with Load(str(clipwise.base_url)) as load:
        load.wait_until(lambda answers: len(replicas_of(answers)) == REPLICAS, "both replicas answering")
        old = replicas_of(load.answers)
        command = [sys.executable, "-m", "clipwise.cli", "serve", "--engine", "ray", *flags]
        redeploy = subprocess.run(command, capture_output=True, text=True, timeout=REPLACEMENT_TIMEOUT_S)
        assert redeploy.returncode == 0, redeploy.stderr  # it returns once the new replica is ready
        updated = len(load.answers)
        load.wait_until(lambda answers: len(answers) >= updated + 20, "20 more answers")
    answers = load.answers
    assert {answer.status for answer in answers} == {200}
    (new,) = replicas_of(answers[updated + CLIENTS :])  # those sent after the update
    assert new not in old
