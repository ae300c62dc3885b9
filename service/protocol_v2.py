"""The Open Inference Protocol v2 (KServe / Triton HTTP): request and response bodies, tensors in and out.

An inference request carries one FP32 input, ``clips``, of shape [N, 3, T, crop, crop] (the model's clip
shape, normalised as its preprocessing says), as JSON ``data`` (flat row-major or nested) or in the binary
tensor extension: the JSON header's length in the ``Inference-Header-Content-Length`` header, the raw
little-endian bytes after it, ``parameters.binary_data_size`` on the input. The outputs are ``logits`` and
``probabilities`` (FP32 [N, classes]) and ``executed_gflops`` (FP64 [N], per clip); each is returned as
JSON or, when asked (``parameters.binary_data`` on a requested output, or ``binary_data_output`` on the
request), as binary after the JSON. The response ``parameters`` carry the backend, the FLOPs summed over the
clips, the saving and, for adaptive models, the per-clip policy as a JSON string (protocol parameters are
scalars).

The HTTP routes (``clipwise.service.api.routes.v2``) and the gRPC server (``clipwise.service.grpc_api.server``)
share what the protocol means: a request is checked and decoded by ``decode_parts`` (gRPC's message given as the
JSON head it stands for and its raw bytes) and run by ``run_inference``; only reading and encoding differ.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from clipwise.models.base import Execution
from clipwise.service.backends import BackendRequest
from clipwise.service.config import VERSION
from clipwise.service.errors import ApiError
from clipwise.service.inference import flops_report
from clipwise.service.log import REQUEST_ID
from clipwise.service.model_store import ServedModel
from clipwise.service.schemas import MAX_VIEWS
from clipwise.service.slots import deadline_in
from clipwise.service.state import ServiceState

INPUT_NAME = "clips"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
Parameter = bool | int | float | str
Model = TypeVar("Model", bound=BaseModel)


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model input or output (-1: any size)."""

    name: str = Field(description="tensor name")
    datatype: str = Field(description="protocol datatype (FP32, FP64, ...)")
    shape: list[int] = Field(description="dimensions; -1 is variable")


class ServerMetadata(BaseModel):
    """```GET /v2```."""

    name: str = Field(description="server name")
    version: str = Field(description="server version")
    extensions: list[str] = Field(description="protocol extensions supported")


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str = Field(description="model name")
    versions: list[str] = Field(description="versions in the repository")
    platform: str = Field(description="the runtime the served version uses by default")
    inputs: list[TensorMetadata] = Field(description="the model's inputs")
    outputs: list[TensorMetadata] = Field(description="the model's outputs")


class InputHead(BaseModel):
    """An input tensor of an inference request less its values: what is checked before they are read."""

    name: str = Field(description=f"input name: '{INPUT_NAME}'")
    shape: list[int] = Field(description=f"[N, 3, T, crop, crop], N at most {MAX_VIEWS}")
    datatype: str = Field(description="FP32")
    parameters: dict[str, Parameter] = Field(default_factory=dict, description=f"'{BINARY_SIZE}' for binary data")


class InferInput(InputHead):
    """One input tensor of an inference request."""

    data: list[Any] | None = Field(None, description="the values, row-major (flat or nested); absent for binary data")


class RequestHead(BaseModel):
    """An inference request's inputs less their values (the rest of the body is parsed, never made Python objects)."""

    inputs: list[InputHead] = Field(min_length=1, max_length=1)


class RequestedOutput(BaseModel):
    """An output the client wants back."""

    name: str = Field(description="logits, probabilities or executed_gflops")
    parameters: dict[str, Parameter] = Field(default_factory=dict, description="'binary_data': true for binary")


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``."""

    id: str | None = Field(None, description="echoed in the response")
    parameters: dict[str, Parameter] = Field(default_factory=dict, description="'binary_data_output': true")
    inputs: list[InferInput] = Field(min_length=1, max_length=1, description=f"exactly one input, '{INPUT_NAME}'")
    outputs: list[RequestedOutput] | None = Field(None, description="outputs to return (default: all)")


class InferOutput(BaseModel):
    """One output tensor of an inference response."""

    name: str = Field(description="output name")
    shape: list[int] = Field(description="dimensions")
    datatype: str = Field(description="protocol datatype")
    parameters: dict[str, Parameter] = Field(default_factory=dict, description=f"'{BINARY_SIZE}' for binary data")
    data: list[float] | None = Field(None, description="the values, flat row-major; absent for binary data")


class InferResponse(BaseModel):
    """The answer to an inference request."""

    model_name: str = Field(description="model name")
    model_version: str = Field(description="the version that ran")
    id: str = Field(description="the request's id, or its X-Request-ID when it had none")
    parameters: dict[str, Parameter] = Field(
        description="backend, executed_gflops, policy_gflops, full_gflops, saving and policy_saving (over all "
        "clips), batch_size, policy (JSON)"
    )
    outputs: list[InferOutput] = Field(description="the requested outputs")


class ServerLive(BaseModel):
    """``GET /v2/health/live``."""

    live: bool = Field(description="always true while the process answers")


class ServerReady(BaseModel):
    """``GET /v2/health/ready`` (not ready: 503 with an error body)."""

    ready: bool = Field(description="every default model is loaded and warmed up")


class ModelReady(BaseModel):
    """``GET /v2/models/{name}/ready`` (a model not served: 404)."""

    name: str = Field(description="model name")
    ready: bool = Field(description="the model (at the version asked, if any) is served")


class V2Error(BaseModel):
    """Body of every error under ``/v2``."""

    error: str = Field(description="what went wrong")


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datatype: str
    dtype: str  # little-endian numpy dtype of the binary form
    per_class: bool  # shape [N, classes], else [N]


OUTPUTS = (
    OutputSpec("logits", "FP32", "<f4", per_class=True),
    OutputSpec("probabilities", "FP32", "<f4", per_class=True),
    OutputSpec("executed_gflops", "FP64", "<f8", per_class=False),
)
OUTPUT_SPECS = {spec.name: spec for spec in OUTPUTS}


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written out in place, for an OpenAPI request body given
    by hand (a ``$defs`` there would not be found by references)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def server_description() -> ServerMetadata:
    """What ``GET /v2`` and gRPC's ServerMetadata answer."""
    return ServerMetadata(name="clipwise", version=VERSION, extensions=["binary_tensor_data"])


def model_metadata(served: ServedModel, versions: list[int]) -> ModelMetadata:
    """The served version's tensors; the platform is its default backend."""
    classes = len(served.manifest.labels)
    return ModelMetadata(
        name=served.name,
        versions=[str(version) for version in versions],
        platform=served.backend_name(),
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, *served.clip_shape])],
        outputs=[
            TensorMetadata(name=spec.name, datatype=spec.datatype, shape=[-1, classes] if spec.per_class else [-1])
            for spec in OUTPUTS
        ],
    )


@dataclass(frozen=True)
class DecodedRequest:
    """What an inference request asks for: its id, the clips, and the outputs with their encoding."""

    id: str | None
    clips: torch.Tensor
    outputs: list[tuple[OutputSpec, bool]]  # (output, as binary)


def decode_request(body: bytearray, header_length: str | None, clip_shape: tuple[int, ...]) -> DecodedRequest:
    """Parse and check an inference request body (JSON, or the binary extension's JSON then data); 400 for
    anything the model cannot take."""
    json_size = _json_size(body, header_length)
    head = body[:json_size] if json_size < len(body) else body  # a copy of the JSON header only
    return decode_parts(head, memoryview(body)[json_size:], clip_shape)


def decode_parts(head: bytearray | dict[str, Any], binary: memoryview, clip_shape: tuple[int, ...]) -> DecodedRequest:
    """Check and decode a request given as its JSON part (as text, or parsed: gRPC's messages) and its binary
    data. The input's name, datatype and shape are checked before its values are read: only a request the model
    can take has its JSON values made into objects (about ten times their size in the body)."""
    check_head(head, clip_shape)
    request = _validated(InferRequest, head)
    return DecodedRequest(request.id, _input_clips(request, binary), _requested_outputs(request))


def check_head(head: bytearray | dict[str, Any], clip_shape: tuple[int, ...]) -> None:
    """400 unless the request has one input the model takes (``_check_input``); its values are not read."""
    _check_input(_validated(RequestHead, head).inputs[0], clip_shape)


def _json_size(body: bytearray, header_length: str | None) -> int:
    """The length of the JSON part of a request body: all of it, or what the binary extension's header says."""
    if header_length is None:
        return len(body)
    if not header_length.isdigit() or int(header_length) > len(body):
        raise bad_request(f"{HEADER_LENGTH} must be a byte count within the body; got {header_length!r}")
    return int(header_length)


def _validated(model: type[Model], data: bytearray | dict[str, Any]) -> Model:
    try:
        return model.model_validate(data) if isinstance(data, dict) else model.model_validate_json(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in error.errors())
        raise bad_request(f"invalid inference request: {problems}") from None


def _check_input(tensor: InputHead, clip_shape: tuple[int, ...]) -> None:
    """400 unless the input is ``clips``, FP32, of the model's clip shape and at most ``MAX_VIEWS`` clips."""
    if tensor.name != INPUT_NAME:
        raise bad_request(f"unexpected input {tensor.name!r}: the model takes one input, {INPUT_NAME!r}")
    if tensor.datatype != "FP32":
        raise bad_request(f"input {INPUT_NAME!r} must be FP32, not {tensor.datatype}")
    if len(tensor.shape) != len(clip_shape) + 1 or tuple(tensor.shape[1:]) != clip_shape or tensor.shape[0] < 1:
        expected = f"[N, {', '.join(map(str, clip_shape))}]"
        raise bad_request(f"input {INPUT_NAME!r} has shape {tensor.shape}; the model takes {expected}")
    if tensor.shape[0] > MAX_VIEWS:
        raise bad_request(f"input {INPUT_NAME!r} holds {tensor.shape[0]} clips; a request takes at most {MAX_VIEWS}")


def _input_clips(request: InferRequest, binary: memoryview) -> torch.Tensor:
    """The ``clips`` input (checked by ``_check_input``) as an (N, *clip_shape) float tensor."""
    (tensor,) = request.inputs
    values = _binary_values(tensor, binary) if BINARY_SIZE in tensor.parameters else _json_values(tensor, binary)
    count = math.prod(tensor.shape)
    if values.size != count:
        raise bad_request(f"input {INPUT_NAME!r} holds {values.size} values; shape {tensor.shape} needs {count}")
    if not np.isfinite(values).all():
        raise bad_request(f"input {INPUT_NAME!r} holds NaN or infinite values")
    return torch.from_numpy(values.reshape(tensor.shape))


def _binary_values(tensor: InferInput, binary: memoryview) -> np.ndarray:
    size = tensor.parameters[BINARY_SIZE]
    if tensor.data is not None or size != len(binary):
        raise bad_request(f"input {INPUT_NAME!r}: {BINARY_SIZE} must equal the binary data's length, {len(binary)}")
    if len(binary) % 4:
        raise bad_request(f"input {INPUT_NAME!r}: {len(binary)} bytes is not a whole number of FP32 values")
    return np.frombuffer(binary, dtype="<f4").astype(np.float32)


def _json_values(tensor: InferInput, binary: memoryview) -> np.ndarray:
    if tensor.data is None or binary:
        raise bad_request(f"input {INPUT_NAME!r}: send its values as 'data', or as binary data with {BINARY_SIZE}")
    not_numbers = bad_request(f"input {INPUT_NAME!r}: 'data' must hold numbers, as a flat or evenly nested list")
    try:
        values = np.asarray(tensor.data)
    except ValueError:  # ragged nesting
        raise not_numbers from None
    if values.dtype.kind not in "iuf":
        raise not_numbers
    return values.astype(np.float32).reshape(-1)


def _requested_outputs(request: InferRequest) -> list[tuple[OutputSpec, bool]]:
    wanted = request.outputs or [RequestedOutput(name=spec.name) for spec in OUTPUTS]
    binary_by_default = request.parameters.get("binary_data_output") is True
    outputs = []
    for output in wanted:
        spec = OUTPUT_SPECS.get(output.name)
        if spec is None:
            raise bad_request(f"unknown output {output.name!r}; outputs: {[spec.name for spec in OUTPUTS]}")
        if "classification" in output.parameters:
            raise bad_request("the classification extension is not supported; request 'probabilities'")
        outputs.append((spec, output.parameters.get("binary_data", binary_by_default) is True))
    return outputs


def encode_response(
    request: DecodedRequest, model_name: str, version: int, execution: Execution, parameters: dict[str, Parameter]
) -> tuple[bytes, dict[str, str]]:
    """The response body (JSON, then any binary outputs) and its headers."""
    arrays = output_arrays(execution)
    response = InferResponse(
        model_name=model_name, model_version=str(version), id=response_id(request), parameters=parameters, outputs=[]
    )
    chunks: list[bytes] = []
    for spec, binary in request.outputs:
        array = arrays[spec.name]
        tensor = InferOutput(name=spec.name, shape=list(array.shape), datatype=spec.datatype)
        if binary:
            chunks.append(array.astype(spec.dtype).tobytes())
            tensor.parameters[BINARY_SIZE] = len(chunks[-1])
        else:
            tensor.data = array.reshape(-1).tolist()
        response.outputs.append(tensor)
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def output_arrays(execution: Execution) -> dict[str, np.ndarray]:
    """Every output of an inference by name: logits, probabilities (their softmax), executed GFLOPs per clip."""
    logits = execution.logits.float()
    return {
        "logits": logits.numpy(),
        "probabilities": logits.softmax(dim=-1).numpy(),
        "executed_gflops": np.asarray(execution.executed_gflops, dtype=np.float64),
    }


def response_id(request: DecodedRequest) -> str:
    """The request's own id, or its request id when it has none."""
    return request.id or REQUEST_ID.get()


def response_parameters(execution: Execution, backend: str, batch_size: int) -> dict[str, Parameter]:
    """FLOPs over all clips, the backend, the batch size and the per-clip policy (JSON) of an inference."""
    flops = flops_report(execution)
    parameters: dict[str, Parameter] = {
        "backend": backend,
        "executed_gflops": flops.executed_gflops,
        "policy_gflops": flops.policy_gflops,
        "full_gflops": flops.full_gflops,
        "saving": flops.saving,
        "policy_saving": flops.policy_saving,
        "batch_size": batch_size,
    }
    if execution.policy is not None:
        parameters["policy"] = json.dumps([policy.model_dump(mode="json") for policy in execution.policy])
    return parameters


@dataclass(frozen=True)
class Inference:
    """A request's answer before its encoding: what it asked for, what ran, the response parameters."""

    request: DecodedRequest
    execution: Execution
    parameters: dict[str, Parameter]


Receive = Callable[[], Awaitable[Callable[[], DecodedRequest]]]


async def run_inference(
    state: ServiceState, served: ServedModel, backend: BackendRequest | None, receive: Receive
) -> Inference:
    """One inference request over either transport, counted by outcome and held by admission control:
    ``receive`` takes in the request (HTTP reads the body) and gives the parsing, which runs in a worker slot;
    the clips are then batched and run, and the stages, FLOPs and policy recorded."""
    with state.metrics.counting(served, served.backend_name(backend)), state.admission.admit():
        chosen = served.backend(backend)
        parse = await receive()
        deadline = deadline_in(state.settings.request_timeout_s)
        with state.batcher.expecting(served, chosen):
            (decoded, decode_s), slot_ms = await state.slots.run(lambda: _timed(parse), deadline)
            batch = await state.batcher.execute(served, chosen, decoded.clips, deadline)
    stages = {"decode": decode_s, "queue": (slot_ms + batch.queue_ms) / 1000, "inference": batch.inference_ms / 1000}
    state.metrics.observe_stages(served.name, stages)
    state.metrics.observe_execution(served.name, batch.execution, batch.batch_size)
    parameters = response_parameters(batch.execution, chosen.label, batch.batch_size)
    return Inference(decoded, batch.execution, parameters)


def _timed(parse: Callable[[], DecodedRequest]) -> tuple[DecodedRequest, float]:
    started = time.perf_counter()
    decoded = parse()
    return decoded, time.perf_counter() - started
