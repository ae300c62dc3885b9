"""The Open Inference Protocol over gRPC through a real server process, with Triton's own gRPC client.

``clipwise serve`` runs in a process of its own (``benchmarks/grpc_vs_http.py``'s ``server_process``: the
server's generated messages and ``tritonclient.grpc``'s may not share one) on the bundled repository, HTTP and
gRPC on free ports. Every bundled model answers the same clips over gRPC as over HTTP — top-1, scores, FLOPs,
policy — and as the version computes them in this process. Bad requests are answered with the HTTP route's
message under the mapped status, counted as over HTTP, and leave every model served.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from live_server import wait_for
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from clipwise.models.checkpoint import list_model_names, load_version
from clipwise.service.config import BUNDLED_REPOSITORY
from clipwise.service.grpc_api import generate
from clipwise.service.local import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.grpc_vs_http import Servers, serialised_once, server_process  # noqa: E402

BUNDLED = list_model_names(BUNDLED_REPOSITORY)
SMALL = "tsn_r18_tiny"
SMALL_CLIP = (3, 8, 64, 64)
CLIP_BYTES = 4 * int(np.prod(SMALL_CLIP))
UPLOAD_LIMIT_MB = 4.12  # 10 clips of SMALL fit, 11 pass by a few KiB (within gRPC's framing allowance), 13 by far
MAX_PENDING = 6
OUTPUTS = ("logits", "probabilities", "executed_gflops")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    flags = {
        "model_repository": BUNDLED_REPOSITORY,
        "max_upload_mb": UPLOAD_LIMIT_MB,
        "max_json_mb": UPLOAD_LIMIT_MB,
        "max_pending_requests": MAX_PENDING,
        "torch_threads": 1,
    }
    with server_process(log, **flags) as servers:
        yield servers


@pytest.fixture(scope="module")
def over_grpc(servers: Servers) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(servers.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def over_http(servers: Servers) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(servers.http_url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def clip_shape(client: triton_grpc.InferenceServerClient, model: str) -> list[int]:
    return [int(size) for size in client.get_model_metadata(model).inputs[0].shape[1:]]


def clips(shape: list[int] | tuple[int, ...], count: int, seed: int = 0) -> np.ndarray:
    return torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed)).numpy()


def grpc_infer(
    client: triton_grpc.InferenceServerClient, model: str, values: np.ndarray, datatype: str = "FP32", **options
) -> triton_grpc.InferResult:
    tensor = triton_grpc.InferInput(options.pop("input_name", "clips"), list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return client.infer(model, [tensor], **options)


def http_infer(
    client: triton_http.InferenceServerClient, model: str, values: np.ndarray, datatype: str = "FP32", **options
) -> triton_http.InferResult:
    tensor = triton_http.InferInput(options.pop("input_name", "clips"), list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=True)
    outputs = options.pop("outputs", None) or [triton_http.InferRequestedOutput(name) for name in OUTPUTS]
    return client.infer(model, [tensor], outputs=outputs, **options)


def parameters_of(result: triton_grpc.InferResult) -> dict[str, object]:
    """A gRPC response's parameters as values (its JSON form would turn int64 into strings)."""
    parameters = result.get_response().parameters
    return {name: getattr(value, value.WhichOneof("parameter_choice")) for name, value in parameters.items()}


def requests_counted(servers: Servers, model: str, status: str) -> float:
    """``clipwise_requests_total`` of ``model`` with ``status``, summed over versions and backends."""
    text = httpx.get(f"{servers.http_url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "clipwise_requests_total"
        and (sample.labels["model"], sample.labels["status"]) == (model, status)
    )


# ---------------------------------------------------------------- the generated code


def test_the_committed_modules_are_what_the_proto_generates(tmp_path: Path) -> None:
    for name, content in generate.generate(tmp_path).items():
        assert (generate.HERE / name).read_bytes() == content, f"{name} is stale: run {generate.__name__}"


# ---------------------------------------------------------------- health and metadata


def test_health_and_metadata_match_http(
    over_grpc: triton_grpc.InferenceServerClient, over_http: triton_http.InferenceServerClient
) -> None:
    assert over_grpc.is_server_live() and over_grpc.is_server_ready()
    assert over_grpc.get_server_metadata(as_json=True) == over_http.get_server_metadata()
    for model in BUNDLED:
        expected = over_http.get_model_metadata(model)
        metadata = over_grpc.get_model_metadata(model, expected["versions"][-1])
        assert (metadata.name, list(metadata.versions), metadata.platform) == (
            model,
            expected["versions"],
            expected["platform"],
        )
        tensors = [(t.name, t.datatype, list(t.shape)) for t in (*metadata.inputs, *metadata.outputs)]
        assert tensors == [(t["name"], t["datatype"], t["shape"]) for t in (*expected["inputs"], *expected["outputs"])]
        assert over_grpc.is_model_ready(model) and over_grpc.is_model_ready(model, expected["versions"][-1])
    assert not over_grpc.is_model_ready("nothing") and not over_grpc.is_model_ready(SMALL, "99")
    with pytest.raises(InferenceServerException) as refused:
        over_grpc.get_model_metadata("nothing")
    assert refused.value.status() == "StatusCode.NOT_FOUND" and "not served" in refused.value.message()


# ---------------------------------------------------------------- inference on every bundled model


@pytest.mark.parametrize("model", BUNDLED)
def test_every_bundled_model_answers_as_over_http_and_in_process(
    over_grpc: triton_grpc.InferenceServerClient, over_http: triton_http.InferenceServerClient, model: str
) -> None:
    values = clips(clip_shape(over_grpc, model), 2, seed=len(model))
    result = grpc_infer(over_grpc, model, values, request_id=f"grpc-{model}")
    answer = http_infer(over_http, model, values)
    for name in OUTPUTS:
        np.testing.assert_allclose(result.as_numpy(name), answer.as_numpy(name), rtol=1e-6, atol=1e-7)
    scores = result.as_numpy("probabilities")
    assert scores.argmax(-1).tolist() == answer.as_numpy("probabilities").argmax(-1).tolist()
    parameters, http_parameters = parameters_of(result), answer.get_response()["parameters"]
    assert parameters.keys() == http_parameters.keys()
    policy, backend = parameters.pop("policy", None), parameters.pop("backend")
    assert (policy, backend) == (http_parameters.pop("policy", None), http_parameters.pop("backend"))
    assert parameters == pytest.approx(http_parameters, rel=1e-9)
    assert (result.get_response().id, result.get_response().model_name) == (f"grpc-{model}", model)
    if backend == "torch":  # in-process torch is the reference the served torch version must meet
        expected = load_version(BUNDLED_REPOSITORY, model).model.execute(torch.from_numpy(values))
        np.testing.assert_allclose(result.as_numpy("logits"), expected.logits.numpy(), rtol=1e-4, atol=1e-5)
        if policy is not None:  # adaptive: the decisions are the model's own
            decided = [{key: value for key, value in p.items() if key != "executed"} for p in json.loads(policy)]
            assert decided == [p.model_dump(mode="json", exclude={"executed"}) for p in expected.policy]


def test_request_ids_are_echoed_and_logged(servers: Servers) -> None:
    """Over Triton's own generated stub: the trailing metadata carry the id, the response ``id`` is the
    request's own or else the request id, and the server's access line carries it."""
    channel = grpc.insecure_channel(servers.grpc_address, options=[("grpc.max_send_message_length", 1 << 26)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="clips", datatype="FP32", shape=[1, *SMALL_CLIP])
    request = service_pb2.ModelInferRequest(
        model_name=SMALL, inputs=[tensor], raw_input_contents=[clips(SMALL_CLIP, 1).tobytes()]
    )
    response, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "grpc-id-check")])
    assert response.id == "grpc-id-check" and ("x-request-id", "grpc-id-check") in call.trailing_metadata()
    request.id = "own-id"
    response, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "not sane!")])
    made = dict(call.trailing_metadata())["x-request-id"]
    assert response.id == "own-id" and re.fullmatch(r"[0-9a-f]{32}", made)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(service_pb2.ModelInferRequest(model_name="nothing"), metadata=[("x-request-id", "gone-1")])
    trailing = dict(refused.value.trailing_metadata())
    assert trailing == {"x-request-id": "gone-1", "clipwise-error-code": "model_not_found"}
    channel.close()
    for line in (
        "[grpc-id-check] GRPC ModelInfer OK",
        f"[{made}] GRPC ModelInfer OK",
        "[gone-1] GRPC ModelInfer NOT_FOUND",
    ):
        wait_for(lambda line=line: line in servers.log.read_text(), f"{line!r} in the server's log", timeout=10)


def test_the_benchmarks_request_serialised_once_answers_as_tritons_client(
    servers: Servers, over_grpc: triton_grpc.InferenceServerClient
) -> None:
    """``benchmarks/grpc_vs_http.py`` times the server and the transport alone with a ModelInfer serialised once
    and sent as bytes: every time it is sent, it gets the answer Triton's client gets for the same clips."""
    values = clips(SMALL_CLIP, 2, seed=7)
    with serialised_once(servers.grpc_address, SMALL, values) as once:
        answers = [triton_grpc.InferResult(service_pb2.ModelInferResponse.FromString(once())) for _ in range(2)]
    expected = grpc_infer(over_grpc, SMALL, values)
    for answer in answers:
        assert answer.get_response().model_name == SMALL
        for name in OUTPUTS:
            np.testing.assert_allclose(answer.as_numpy(name), expected.as_numpy(name), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- bad requests

BAD_REQUESTS = {  # case -> (values, datatype, options, gRPC status)
    "wrong shape": (clips((3, 8, 64, 63), 1), "FP32", {}, "INVALID_ARGUMENT"),
    "wrong datatype": (clips(SMALL_CLIP, 1).astype(np.float64), "FP64", {}, "INVALID_ARGUMENT"),
    "wrong input name": (clips(SMALL_CLIP, 1), "FP32", {"input_name": "frames"}, "INVALID_ARGUMENT"),
    "not finite": (np.full((1, *SMALL_CLIP), np.nan, dtype=np.float32), "FP32", {}, "INVALID_ARGUMENT"),
    "unknown version": (clips(SMALL_CLIP, 1), "FP32", {"model_version": "99"}, "NOT_FOUND"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_the_http_message_under_the_mapped_status(
    over_grpc: triton_grpc.InferenceServerClient, over_http: triton_http.InferenceServerClient, case: str
) -> None:
    values, datatype, options, status = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as over_http_refused:
        http_infer(over_http, SMALL, values, datatype, **options)
    with pytest.raises(InferenceServerException) as refused:
        grpc_infer(over_grpc, SMALL, values, datatype, **options)
    assert refused.value.status() == f"StatusCode.{status}"
    assert refused.value.message() == over_http_refused.value.message()


def test_unknown_models_outputs_and_backends_are_refused(
    over_grpc: triton_grpc.InferenceServerClient, over_http: triton_http.InferenceServerClient
) -> None:
    values = clips(SMALL_CLIP, 1)
    for call in (grpc_infer, http_infer):
        with pytest.raises(InferenceServerException) as refused:
            call(over_grpc if call is grpc_infer else over_http, "nothing", values)
        assert "model 'nothing' is not served" in refused.value.message()
    unknown = [triton_grpc.InferRequestedOutput("nothing")]
    with pytest.raises(InferenceServerException, match="unknown output 'nothing'") as refused:
        grpc_infer(over_grpc, SMALL, values, outputs=unknown)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="parameters.backend") as refused:
        grpc_infer(over_grpc, SMALL, values, parameters={"backend": "tpu"})
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert parameters_of(grpc_infer(over_grpc, SMALL, values, parameters={"backend": "torch"}))["backend"] == "torch"


def test_oversized_messages_are_refused_and_nothing_is_lost(
    servers: Servers, over_grpc: triton_grpc.InferenceServerClient, over_http: triton_http.InferenceServerClient
) -> None:
    """Past the upload limit by a few KiB: the HTTP message, counted as a 413; past it by more than the framing
    allowance: gRPC's own refusal. Both RESOURCE_EXHAUSTED, and the server answers the next request."""
    refused_before = requests_counted(servers, SMALL, "413")
    with pytest.raises(InferenceServerException) as over_http_refused:
        http_infer(over_http, SMALL, clips(SMALL_CLIP, 11))
    with pytest.raises(InferenceServerException) as refused:
        grpc_infer(over_grpc, SMALL, clips(SMALL_CLIP, 11))
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert refused.value.message() == over_http_refused.value.message() == "upload larger than the limit of 4.12 MiB"
    assert requests_counted(servers, SMALL, "413") == refused_before + 2
    with pytest.raises(InferenceServerException) as refused:
        grpc_infer(over_grpc, SMALL, clips(SMALL_CLIP, 13))
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert grpc_infer(over_grpc, SMALL, clips(SMALL_CLIP, 10)).as_numpy("logits").shape[0] == 10
    assert all(over_grpc.is_model_ready(model) for model in BUNDLED) and over_grpc.is_server_ready()


# ---------------------------------------------------------------- load


def test_a_small_load_over_grpc_is_answered_right_batched_and_counted(
    servers: Servers, over_grpc: triton_grpc.InferenceServerClient
) -> None:
    """Clients at the admission limit, each with its own clips: every answer is its clips' (as answered alone),
    some requests share a forward pass, and the metrics count each one."""
    clients, rounds = MAX_PENDING, 6
    inputs = [clips(SMALL_CLIP, 1 + index % 3, seed=100 + index) for index in range(clients)]
    alone = [grpc_infer(over_grpc, SMALL, values).as_numpy("logits") for values in inputs]
    counted_before = requests_counted(servers, SMALL, "200")
    answers: dict[int, list[tuple[np.ndarray, int]]] = {index: [] for index in range(clients)}
    failures: list[BaseException] = []
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        own = triton_grpc.InferenceServerClient(servers.grpc_address)
        try:
            start.wait()
            for _ in range(rounds):
                result = grpc_infer(own, SMALL, inputs[index])
                answers[index].append((result.as_numpy("logits"), parameters_of(result)["batch_size"]))
        except BaseException as error:  # reported below with the others
            failures.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and all(len(got) == rounds for got in answers.values()), failures
    for index, got in answers.items():
        for logits, _ in got:
            np.testing.assert_allclose(logits, alone[index], rtol=1e-4, atol=1e-5)
    assert max(batch for got in answers.values() for _, batch in got) > 1
    assert requests_counted(servers, SMALL, "200") == counted_before + clients * rounds


def requests_held(servers: Servers) -> float:
    text = httpx.get(f"{servers.http_url}/metrics").text
    (family,) = (
        family for family in text_string_to_metric_families(text) if family.name == "clipwise_requests_in_progress"
    )
    return family.samples[0].value


def test_admission_control_holds_grpc_and_http_requests_together(
    servers: Servers, over_grpc: triton_grpc.InferenceServerClient, over_http: triton_http.InferenceServerClient
) -> None:
    """Every place held by HTTP uploads still arriving: one more request is refused at once over either transport
    with the same message (UNAVAILABLE over gRPC, 503 over HTTP); the held requests are then answered."""
    values = clips(SMALL_CLIP, 1, seed=11).tobytes()
    head = {"inputs": [{"name": "clips", "shape": [1, *SMALL_CLIP], "datatype": "FP32"}]}
    head["inputs"][0]["parameters"] = {"binary_data_size": len(values)}
    header = json.dumps(head).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Length": str(len(header) + len(values))}
    rest_may_come = threading.Event()
    statuses: list[int] = []

    def body() -> Iterator[bytes]:
        yield header + values[:1000]
        rest_may_come.wait(timeout=60)
        yield values[1000:]

    def held() -> None:
        url = f"{servers.http_url}/v2/models/{SMALL}/infer"
        statuses.append(httpx.post(url, content=body(), headers=headers, timeout=120).status_code)

    threads = [threading.Thread(target=held) for _ in range(MAX_PENDING)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: requests_held(servers) == MAX_PENDING, "every place held", timeout=60)
        with pytest.raises(InferenceServerException) as refused:
            grpc_infer(over_grpc, SMALL, clips(SMALL_CLIP, 1))
        with pytest.raises(InferenceServerException) as over_http_refused:
            http_infer(over_http, SMALL, clips(SMALL_CLIP, 1))
    finally:
        rest_may_come.set()
        for thread in threads:
            thread.join(timeout=120)
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert refused.value.message() == over_http_refused.value.message()
    assert f"limit of {MAX_PENDING} requests" in refused.value.message()
    assert statuses == [200] * MAX_PENDING


def test_a_grpc_port_in_use_stops_the_server_at_startup_saying_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = [f"--grpc-port={port}", f"--port={free_port()}", f"--models={SMALL}"]
        command = [sys.executable, "-m", "clipwise.cli", "serve", *flags]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert f"CLIPWISE_GRPC_PORT / --grpc-port {port}:" in run.stdout + run.stderr


def test_kserves_grpc_client_gets_the_same_answer(
    servers: Servers, over_grpc: triton_grpc.InferenceServerClient, tmp_path: Path
) -> None:
    """KServe's SDK compiles an older copy of the .proto, without ``double_param``: it reads the float
    parameters (the FLOPs) as empty, the others as sent."""
    values = clips(SMALL_CLIP, 2, seed=5)
    np.save(tmp_path / "clips.npy", values)
    client = Path(__file__).with_name("kserve_grpc_client.py")
    command = [sys.executable, str(client), servers.grpc_address, SMALL, str(tmp_path / "clips.npy")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert (answer["live"], answer["ready"], answer["model_ready"], answer["id"]) == (True, True, True, "kserve-1")
    expected = grpc_infer(over_grpc, SMALL, values).as_numpy("logits")
    np.testing.assert_allclose(np.array(answer["logits"], dtype=np.float32), expected, rtol=1e-6, atol=1e-7)
    assert "torch" in answer["parameters"]["backend"] and "int64_param: 1" in answer["parameters"]["batch_size"]
