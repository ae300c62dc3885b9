"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``) beside the HTTP routes.

A ``grpc.aio`` server on the app's own event loop, started and stopped by the app's lifespan on
``CLIPWISE_GRPC_PORT``: the RPCs share the HTTP routes' model store, admission count, worker slots, batcher
and metrics with no thread of their own, and ``ModelInfer`` runs ``clipwise.service.protocol_v2``'s
inference path — the same checks and messages, the same batching, FLOPs and policy in the response parameters.
The clips come as ``raw_input_contents`` (what ``tritonclient.grpc`` sends) or as ``fp32_contents``; every
output is returned in ``raw_output_contents``.

Errors carry the HTTP route's message and a status code mapped from its HTTP status (``STATUS_CODES``); the
trailing metadata hold the request id (``x-request-id``, the client's when sane, as over HTTP) and the HTTP
route's error code (``clipwise-error-code``). Each RPC logs one access line. ``ServerReady`` and
``ModelReady`` answer ``ready: false`` where the HTTP routes answer 503 / 404: the protocol's message has the
field, and Triton's HTTP client reads those statuses as false.

The generated messages register the protocol's names (``inference.*``) in protobuf's default pool, as
``tritonclient.grpc``'s do: one process cannot import both, so clients run in a process of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from pydantic import TypeAdapter, ValidationError

from clipwise.service.backends import BackendRequest
from clipwise.service.errors import ApiError, as_api_error
from clipwise.service.grpc_api import open_inference_grpc_pb2 as pb
from clipwise.service.grpc_api import open_inference_grpc_pb2_grpc as pb_grpc
from clipwise.service.log import REQUEST_ID, REQUEST_ID_HEADER, request_id_from
from clipwise.service.middleware import access_log
from clipwise.service.model_store import ModelNotFound, ServedModel
from clipwise.service.protocol_v2 import (
    BINARY_SIZE,
    DecodedRequest,
    Inference,
    Parameter,
    check_head,
    decode_parts,
    model_metadata,
    output_arrays,
    response_id,
    run_inference,
    server_description,
)
from clipwise.service.state import ServiceState
from clipwise.service.upload import FRAMING_ALLOWANCE, too_large

logger = logging.getLogger(__name__)

# HTTP status of an error -> gRPC status code (the usual mapping, as grpc-gateway's)
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
REQUEST_ID_KEY = REQUEST_ID_HEADER.lower()  # gRPC metadata keys are lower case
ERROR_CODE_KEY = "clipwise-error-code"
PROBES = frozenset({"ServerLive", "ServerReady"})
BACKEND_PARAMETER = "backend"
BACKENDS = TypeAdapter(BackendRequest)

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)
Rpc = Callable[["InferenceServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]


def answered(method: Rpc) -> Rpc:
    """Run an RPC as the HTTP middleware runs a request: under its request id, with one access line, and its
    errors answered with the mapped status, the HTTP message and code (a server bug: INTERNAL, logged)."""

    @functools.wraps(method)
    async def rpc(servicer: InferenceServicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
        metadata = dict(context.invocation_metadata() or ())
        request_id = request_id_from(metadata.get(REQUEST_ID_KEY))
        token = REQUEST_ID.set(request_id)
        started, outcome = time.perf_counter(), grpc.StatusCode.OK
        try:
            response = await method(servicer, request, context)
        except asyncio.CancelledError:  # the client went away (counted 499 where the request was counted)
            outcome = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            answer = _error_answer(error, method.__name__, request_id)
            outcome = STATUS_CODES.get(answer.status, grpc.StatusCode.INTERNAL)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id), (ERROR_CODE_KEY, answer.code)))
            await context.abort(outcome, answer.message)  # raises
        else:
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            return response
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            level = logging.DEBUG if method.__name__ in PROBES else logging.INFO  # polled: as the HTTP probes
            access_log.log(level, "GRPC %s %s %.1f ms", method.__name__, outcome.name, elapsed_ms)
            REQUEST_ID.reset(token)

    return rpc


def _error_answer(error: Exception, rpc: str, request_id: str) -> ApiError:
    known = as_api_error(error)
    if known is not None:
        logger.info("%d %s", known.status, known.code)
        return known
    logger.exception("unhandled error in gRPC %s", rpc)
    return ApiError(500, "internal_error", f"internal server error; quote request id {request_id} when reporting it")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs on one app's state."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    @answered
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Message:
        return pb.ServerLiveResponse(live=True)

    @answered
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        return pb.ServerReadyResponse(ready=self.state.startup.status == "ready")

    @answered
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        try:
            self._served(request.name, request.version)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @answered
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        return pb.ServerMetadataResponse(**server_description().model_dump())

    @answered
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        served = self._served(request.name, request.version)
        metadata = model_metadata(served, self.state.store.versions_on_disk(served.name))
        return pb.ModelMetadataResponse(**metadata.model_dump())

    @answered
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Message:
        served = self._served(request.model_name, request.model_version)
        backend = _backend(request.parameters)
        limit = self.state.settings.max_upload_bytes

        async def receive() -> Callable[[], DecodedRequest]:
            if request.ByteSize() > limit:  # gRPC itself refuses messages past the limit and an allowance
                raise too_large(limit)
            return functools.partial(decode_infer_request, request, served.clip_shape)

        return infer_response(await run_inference(self.state, served, backend, receive), served)

    def _served(self, name: str, version: str) -> ServedModel:
        """The model serving ``name``, at ``version`` when one is given ("" : any)."""
        if version and not (version.isdigit() and int(version) >= 1):
            raise ApiError(422, "validation_error", f"version must be a positive integer; got {version!r}")
        return self.state.store.get(name, int(version) if version else None)


def _backend(parameters: Mapping[str, pb.InferParameter]) -> BackendRequest | None:
    """The request's ``backend`` parameter (the HTTP routes' query parameter), checked."""
    if BACKEND_PARAMETER not in parameters:
        return None
    try:
        return BACKENDS.validate_python(_value(parameters[BACKEND_PARAMETER]))
    except ValidationError as error:
        raise ApiError(422, "validation_error", f"parameters.backend: {error.errors()[0]['msg']}") from None


def _value(parameter: pb.InferParameter) -> Parameter:
    choice = parameter.WhichOneof("parameter_choice")
    return "" if choice is None else getattr(parameter, choice)


def _values(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Parameter]:
    return {name: _value(parameter) for name, parameter in parameters.items()}


def decode_infer_request(request: pb.ModelInferRequest, clip_shape: tuple[int, ...]) -> DecodedRequest:
    """A ``ModelInferRequest`` checked and decoded as the HTTP body it stands for: its input's name, datatype
    and shape before its values, which come as raw bytes (the binary extension) or as FP32 contents."""
    head = {
        "id": request.id or None,
        "parameters": _values(request.parameters),
        "inputs": [
            {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
            | {"parameters": _values(tensor.parameters)}
            for tensor in request.inputs
        ],
        "outputs": [{"name": output.name, "parameters": _values(output.parameters)} for output in request.outputs]
        or None,
    }
    check_head(head, clip_shape)
    raw = request.raw_input_contents
    if len(raw) > 1 or (raw and request.inputs[0].HasField("contents")):
        raise ApiError(400, "bad_request", "send the input's values as one raw_input_contents or as its contents")
    if raw:
        payload = raw[0]  # protobuf (upb) copies a bytes field out of the message at every access: once here
        head["inputs"][0]["parameters"][BINARY_SIZE] = len(payload)
        return decode_parts(head, memoryview(payload), clip_shape)
    head["inputs"][0]["data"] = list(request.inputs[0].contents.fp32_contents)
    return decode_parts(head, memoryview(b""), clip_shape)


def infer_response(inference: Inference, served: ServedModel) -> pb.ModelInferResponse:
    """The outputs asked for as raw little-endian contents, the parameters of the HTTP answer."""
    response = pb.ModelInferResponse(
        model_name=served.name, model_version=str(served.version), id=response_id(inference.request)
    )
    for name, value in inference.parameters.items():
        response.parameters[name].CopyFrom(_parameter(value))
    arrays = output_arrays(inference.execution)
    for spec, _ in inference.request.outputs:
        array = arrays[spec.name]
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=array.shape)
        response.raw_output_contents.append(array.astype(spec.dtype).tobytes())
    return response


def _parameter(value: Parameter) -> pb.InferParameter:
    match value:
        case bool():
            return pb.InferParameter(bool_param=value)
        case int():
            return pb.InferParameter(int64_param=value)
        case float():
            return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


async def start_grpc_server(state: ServiceState) -> grpc.aio.Server:
    """The protocol served on ``host:grpc_port`` on the running event loop. Messages are limited to the
    binary upload limit plus an allowance for the protobuf framing (past it gRPC refuses them unread, with
    RESOURCE_EXHAUSTED). Raises ``RuntimeError`` when the port cannot be bound (it is never shared)."""
    settings = state.settings
    options = [
        ("grpc.max_receive_message_length", settings.max_upload_bytes + FRAMING_ALLOWANCE),
        ("grpc.so_reuseport", 0),  # a second server on a port in use fails instead of sharing it
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), server)
    server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    await server.start()
    logger.info("gRPC (Open Inference Protocol) on %s:%d", settings.host, settings.grpc_port)
    return server
