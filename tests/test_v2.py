"""The Open Inference Protocol v2 through a real server, with Triton's own HTTP client (``tritonclient``).

Expected outputs come from each model version run in-process on the same clips: logits, executed GFLOPs per
clip and the policy. Error bodies are checked raw (httpx): the protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from live_server import serving
from tritonclient.utils import InferenceServerException

from clipwise.models import create_model
from clipwise.models.checkpoint import load_version, save_version
from clipwise.models.policy import AdaFusePolicy
from clipwise.service.app import create_app
from clipwise.service.config import Settings

LABELS = [f"class_{i}" for i in range(6)]
STATIC, ADAPTIVE = "tsn_r18_tiny", "adafuse_tsn_r18_tiny"
CLIP_SHAPE = (3, 8, 64, 64)
UPLOAD_LIMIT_MB = 16
JSON_LIMIT_MB = 8  # a JSON tensor takes about 20 bytes a value


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for seed, name in enumerate((STATIC, ADAPTIVE)):
        torch.manual_seed(seed)
        save_version(create_model(name, num_classes=len(LABELS)), LABELS, root, name, trained=False)
    return root


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[httpx.Client]:
    settings = Settings(model_repository=repository, max_upload_mb=UPLOAD_LIMIT_MB, max_json_mb=JSON_LIMIT_MB)
    with serving(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def triton_client(client: httpx.Client) -> Iterator[triton.InferenceServerClient]:
    url = f"{client.base_url.host}:{client.base_url.port}"
    triton_client = triton.InferenceServerClient(url, network_timeout=60)
    yield triton_client
    triton_client.close()


def clips(count: int, seed: int = 0) -> np.ndarray:
    return torch.randn(count, *CLIP_SHAPE, generator=torch.Generator().manual_seed(seed)).numpy()


def clips_input(values: np.ndarray, *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("clips", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values, binary_data=binary)
    return tensor


def infer_json(client: httpx.Client, model: str, body: dict, **params: str) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", json=body, params=params)


def assert_v2_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


# ---------------------------------------------------------------- health and metadata


def test_health_and_metadata(triton_client: triton.InferenceServerClient, client: httpx.Client) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(STATIC) and triton_client.is_model_ready(STATIC, "1")
    assert not triton_client.is_model_ready("nothing") and not triton_client.is_model_ready(STATIC, "2")
    assert triton_client.get_server_metadata() == {
        "name": "clipwise",
        "version": client.get("/openapi.json").json()["info"]["version"],
        "extensions": ["binary_tensor_data"],
    }
    assert triton_client.get_model_metadata(ADAPTIVE) == {
        "name": ADAPTIVE,
        "versions": ["1"],
        "platform": "torch",
        "inputs": [{"name": "clips", "datatype": "FP32", "shape": [-1, *CLIP_SHAPE]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, len(LABELS)]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]},
            {"name": "executed_gflops", "datatype": "FP64", "shape": [-1]},
        ],
    }
    with pytest.raises(InferenceServerException, match="not served"):
        triton_client.get_model_metadata("nothing")


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("model", [STATIC, ADAPTIVE])
def test_infer_gives_what_the_model_computes_in_process(
    triton_client: triton.InferenceServerClient, repository: Path, model: str, binary: bool
) -> None:
    values = clips(3, seed=len(model))
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "probabilities", "executed_gflops")
    ]
    result = triton_client.infer(model, [clips_input(values, binary=binary)], outputs=outputs, request_id="r-1")
    expected = load_version(repository, model).model.execute(torch.from_numpy(values))

    np.testing.assert_allclose(result.as_numpy("logits"), expected.logits.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected.logits.softmax(-1).numpy(), atol=1e-6)
    executed = result.as_numpy("executed_gflops").tolist()
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (model, "1", "r-1")
    parameters = response["parameters"]
    assert parameters["backend"] == "torch"
    assert parameters["executed_gflops"] == pytest.approx(sum(executed))
    assert parameters["policy_gflops"] == pytest.approx(sum(expected.policy_gflops))
    assert parameters["full_gflops"] == pytest.approx(3 * expected.full_gflops)
    if model == ADAPTIVE:
        # The server's executor chose its computations by its own calibration: what ran lies between what the
        # policy asked for and full compute; the decisions themselves are the model's.
        bounds = zip(executed, expected.policy_gflops, strict=True)
        assert all(policy * (1 - 1e-6) <= ran <= expected.full_gflops for ran, policy in bounds)
        policies = [AdaFusePolicy.model_validate(policy) for policy in json.loads(parameters["policy"])]
        assert [p.model_dump(exclude={"executed"}) for p in policies] == [
            p.model_dump(exclude={"executed"}) for p in expected.policy
        ]
        assert parameters["policy_saving"] > 0
    else:
        assert executed == expected.executed_gflops
        assert "policy" not in parameters and parameters["saving"] == parameters["policy_saving"] == 0


def test_default_outputs_are_all_three_in_binary(triton_client: triton.InferenceServerClient) -> None:
    result = triton_client.infer(STATIC, [clips_input(clips(2), binary=True)])
    names = [output["name"] for output in result.get_response()["outputs"]]
    assert names == ["logits", "probabilities", "executed_gflops"]
    assert result.as_numpy("probabilities").shape == (2, len(LABELS))
    assert all("binary_data_size" in output["parameters"] for output in result.get_response()["outputs"])


def test_a_version_route_and_nested_json_data(client: httpx.Client, repository: Path) -> None:
    values = clips(1, seed=7)
    body = {"inputs": [{"name": "clips", "shape": [1, *CLIP_SHAPE], "datatype": "FP32", "data": values.tolist()}]}
    response = client.post(f"/v2/models/{STATIC}/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    expected = load_version(repository, STATIC).model.execute(torch.from_numpy(values)).logits
    assert outputs["logits"]["shape"] == [1, len(LABELS)]
    np.testing.assert_allclose(outputs["logits"]["data"], expected.reshape(-1).numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- errors


def valid_body(**changes: object) -> dict:
    tensor = {"name": "clips", "shape": [1, *CLIP_SHAPE], "datatype": "FP32", "data": clips(1).reshape(-1).tolist()}
    return {"inputs": [{**tensor, **changes}]}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (valid_body(name="video"), "unexpected input 'video'"),
        (valid_body(datatype="FP16"), "must be FP32"),
        (valid_body(shape=[1, 3, 4, 64, 64]), "the model takes [N, 3, 8, 64, 64]"),
        (valid_body(shape=[0, *CLIP_SHAPE], data=[]), "the model takes [N, 3, 8, 64, 64]"),
        (valid_body(data=[0.5] * 10), "holds 10 values"),
        (valid_body(data=["a"] * int(np.prod(CLIP_SHAPE))), "must hold numbers"),
        (valid_body(data=[[0.5], [0.5, 0.5]]), "must hold numbers"),
        (valid_body(data=None), "send its values as 'data'"),
        (valid_body(shape=[31, *CLIP_SHAPE], data=[0.5]), "at most 30"),
        ({"inputs": []}, "inputs"),
        ({**valid_body(), "outputs": [{"name": "features"}]}, "unknown output 'features'"),
        ({**valid_body(), "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}, "classification"),
    ],
    ids=[
        "input-name",
        "datatype",
        "shape",
        "empty-batch",
        "value-count",
        "strings",
        "ragged",
        "no-data",
        "too-many-clips",
        "no-input",
        "unknown-output",
        "classification",
    ],
)
def test_requests_the_model_cannot_take_are_400(client: httpx.Client, body: dict, fragment: str) -> None:
    assert_v2_error(infer_json(client, STATIC, body), 400, fragment)


def test_non_finite_values_and_bodies_that_are_not_requests_are_400(client: httpx.Client) -> None:
    body = valid_body()
    body["inputs"][0]["data"][5] = float("nan")
    response = client.post(
        f"/v2/models/{STATIC}/infer", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert_v2_error(response, 400, "NaN or infinite")
    assert_v2_error(client.post(f"/v2/models/{STATIC}/infer", content=b"not json"), 400, "invalid inference request")
    header = json.dumps(
        {
            "inputs": [
                {"name": "clips", "shape": [1, *CLIP_SHAPE], "datatype": "FP32", "parameters": {"binary_data_size": 12}}
            ]
        }
    ).encode()
    response = client.post(
        f"/v2/models/{STATIC}/infer",
        content=header + bytes(12),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert_v2_error(response, 400, "holds 3 values")
    response = client.post(
        f"/v2/models/{STATIC}/infer", content=header, headers={"Inference-Header-Content-Length": "999"}
    )
    assert_v2_error(response, 400, "Inference-Header-Content-Length")


def test_a_response_always_carries_an_id(client: httpx.Client) -> None:
    response = infer_json(client, STATIC, valid_body())
    assert response.status_code == 200, response.text
    assert response.json()["id"] == response.headers["x-request-id"]


def test_a_json_body_has_a_lower_limit_than_a_binary_one(client: httpx.Client) -> None:
    over_json = JSON_LIMIT_MB * (1 << 20) + 1
    assert_v2_error(client.post(f"/v2/models/{STATIC}/infer", content=bytes(over_json)), 413, "limit")
    header = json.dumps({"inputs": [{"name": "clips", "shape": [1], "datatype": "FP32"}]}).encode()
    binary = client.post(
        f"/v2/models/{STATIC}/infer",
        content=header + bytes(over_json),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert_v2_error(binary, 400, "has shape [1]")  # read whole, then refused for its shape


def test_other_errors_keep_the_protocol_shape(client: httpx.Client) -> None:
    assert_v2_error(infer_json(client, "nothing", valid_body()), 404, "not served")
    assert_v2_error(client.post(f"/v2/models/{STATIC}/versions/2/infer", json=valid_body()), 404, "version 1, not 2")
    assert_v2_error(infer_json(client, STATIC, valid_body(), backend="onnxruntime"), 422, "model.onnx")
    assert_v2_error(infer_json(client, STATIC, valid_body(), backend="tensorflow"), 422, "backend")
    oversized = client.post(f"/v2/models/{STATIC}/infer", content=bytes(UPLOAD_LIMIT_MB * (1 << 20) + 1))
    assert_v2_error(oversized, 413, "limit")
    compressed = client.post(f"/v2/models/{STATIC}/infer", content=b"x", headers={"content-encoding": "gzip"})
    assert_v2_error(compressed, 415, "uncompressed")
    assert_v2_error(client.get("/v2/models/nothing/ready"), 404, "not served")


def test_openapi_documents_the_protocol_and_every_reference_resolves(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2Error")

    def references(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from references(value)
        elif isinstance(node, list):
            for value in node:
                yield from references(value)

    components = schema["components"]["schemas"]
    prefix = "#/components/schemas/"
    dangling = {ref for ref in references(schema) if not ref.startswith(prefix) or ref[len(prefix) :] not in components}
    assert dangling == set()
