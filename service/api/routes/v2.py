"""The Open Inference Protocol v2 (KServe / Triton HTTP) for clients that send tensors
(``clipwise.service.protocol_v2``).

Every model route also exists under ``/v2/models/{name}/versions/{version}``, where the version must be the
one served. Errors are the protocol's ``{"error": "..."}``; ``backend`` is a query parameter as on ``/v1``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from clipwise.service.api.routes.models import ModelName
from clipwise.service.backends import BackendRequest
from clipwise.service.deps import StateDep
from clipwise.service.errors import ApiError
from clipwise.service.model_store import ServedModel
from clipwise.service.protocol_v2 import (
    HEADER_LENGTH,
    DecodedRequest,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    V2Error,
    decode_request,
    encode_response,
    inlined_schema,
    model_metadata,
    run_inference,
    server_description,
)
from clipwise.service.state import ServiceState
from clipwise.service.upload import read_body

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
VERSIONED = "/models/{name}/versions/{version}"
Version = Annotated[int, Path(ge=1, description="model version; it must be the served one")]
BackendQuery = Annotated[
    BackendRequest | None, Query(description="runtime (default, or auto: the one chosen when the version loaded)")
]
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": description}
    for status, description in {
        400: "a request the model cannot take (input name, datatype, shape, values)",
        404: "unknown model, or a version not served",
        413: "request body over its limit (JSON bodies have a lower one than binary ones)",
        415: "compressed request body",
        422: "invalid parameter, or a backend the version cannot run on",
        503: "not ready, or no inference slot freed before the request deadline",
        504: "the request deadline passed during inference",
    }.items()
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inlined_schema(InferRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"binary tensor extension: the JSON request ({HEADER_LENGTH} bytes), then the data",
            },
        },
    }
}

INFER_ANSWER: dict[str, Any] = {
    "model": InferResponse,
    "description": "outputs, FLOPs and policy; with binary outputs, the JSON then the data",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}


@router.get("", summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return server_description()


@router.get("/health/live", summary="The process is alive")
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", summary="Every default model is loaded and warmed up", responses=ERRORS)
async def server_ready(state: StateDep) -> ServerReady:
    if state.startup.status != "ready":
        raise ApiError(503, "not_ready", state.startup.detail, headers={"Retry-After": "1"})
    return ServerReady(ready=True)


@router.get("/models/{name}", summary="Model metadata: its input and outputs", responses=ERRORS)
async def metadata(name: ModelName, state: StateDep) -> ModelMetadata:
    return model_metadata(state.store.get(name), state.store.versions_on_disk(name))


@router.get(VERSIONED, summary="Model metadata at a version", responses=ERRORS)
async def metadata_at_version(name: ModelName, version: Version, state: StateDep) -> ModelMetadata:
    return model_metadata(state.store.get(name, version), state.store.versions_on_disk(name))


@router.get("/models/{name}/ready", summary="The model is served", responses=ERRORS)
async def model_ready(name: ModelName, state: StateDep) -> ModelReady:
    state.store.get(name)
    return ModelReady(name=name, ready=True)


@router.get(VERSIONED + "/ready", summary="The model is served at a version", responses=ERRORS)
async def model_ready_at_version(name: ModelName, version: Version, state: StateDep) -> ModelReady:
    state.store.get(name, version)
    return ModelReady(name=name, ready=True)


@router.post(
    "/models/{name}/infer",
    summary="Run the model on clips",
    openapi_extra=INFER_BODY,
    responses={200: INFER_ANSWER, **ERRORS},
    response_class=Response,
)
async def infer(name: ModelName, request: Request, state: StateDep, backend: BackendQuery = None) -> Response:
    """FP32 clips [N, 3, T, crop, crop] in; logits, probabilities and executed GFLOPs per clip out, batched with
    concurrent requests. The response ``parameters`` hold the backend, the FLOPs and the policy."""
    return await infer_http(state, request, state.store.get(name), backend)


@router.post(
    VERSIONED + "/infer",
    summary="Run the model at a version on clips",
    openapi_extra=INFER_BODY,
    responses={200: INFER_ANSWER, **ERRORS},
    response_class=Response,
)
async def infer_at_version(
    name: ModelName, version: Version, request: Request, state: StateDep, backend: BackendQuery = None
) -> Response:
    """As ``POST /v2/models/{name}/infer``, on the served version, which must be ``version``."""
    return await infer_http(state, request, state.store.get(name, version), backend)


async def infer_http(
    state: ServiceState, request: Request, served: ServedModel, backend: BackendRequest | None
) -> Response:
    """Read the request's body (as the binary extension or JSON, each within its limit), run it through the
    protocol's inference path and encode the outputs."""
    settings = state.settings

    async def receive() -> Callable[[], DecodedRequest]:
        if request.headers.get("content-encoding", "identity") != "identity":
            raise ApiError(415, "unsupported_encoding", "send the request body uncompressed")
        header_length = request.headers.get(HEADER_LENGTH)
        limit = settings.max_json_bytes if header_length is None else settings.max_upload_bytes
        body = await read_body(request, limit, settings.upload_timeout_s)
        return partial(decode_request, body, header_length, served.clip_shape)

    inference = await run_inference(state, served, backend, receive)
    content, headers = encode_response(
        inference.request, served.name, served.version, inference.execution, inference.parameters
    )
    return Response(content, headers=headers)
