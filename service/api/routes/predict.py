"""``POST /v1/models/{name}/predict``: classify an uploaded video."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from service.api.routes.models import ModelName
from service.deps import StateDep
from service.errors import ApiError, documented_errors
from service.inference import BACKEND, classify, decode_limits
from service.log import REQUEST_ID
from service.schemas import PredictQuery, PredictResponse, TimingReport
from service.upload import FIELD, read_upload

router = APIRouter(prefix="/v1/models", tags=["predict"])
logger = logging.getLogger(__name__)

# The body is streamed by service.upload rather than declared as a parameter; this documents it.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "contentMediaType": "application/octet-stream",
                            "description": "the video file (any container and codec FFmpeg decodes)",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/{name}/predict",
    summary="Classify a video",
    openapi_extra=UPLOAD_BODY,
    responses=documented_errors(400, 404, 408, 413, 415, 422, 503, 504),
)
async def predict(
    name: ModelName, query: Annotated[PredictQuery, Query()], request: Request, state: StateDep
) -> PredictResponse:
    """Decode the upload, sample the model's views, run the model and return the top-k classes with the
    FLOPs executed, the policy (adaptive models) and the time of each stage."""
    arrived = time.perf_counter()
    settings = state.settings
    served = state.store.get(name, query.version)
    classes = len(served.manifest.labels)
    if query.top_k > classes:
        raise ApiError(422, "validation_error", f"query.top_k: {name} has {classes} classes; top_k must be <= that")
    upload = await read_upload(request, settings.max_upload_bytes)
    work = partial(
        classify,
        served,
        upload.data,
        clips=query.clips,
        crops=query.crops,
        top_k=query.top_k,
        limits=decode_limits(settings),
    )
    result, queue_ms = await state.runner.run(work, settings.request_timeout_s)
    timing = TimingReport(
        read=upload.read_ms,
        queue=queue_ms,
        decode=result.decode_ms,
        preprocess=result.preprocess_ms,
        inference=result.inference_ms,
        total=(time.perf_counter() - arrived) * 1000,
    )
    best = result.predictions[0]
    logger.info(
        "predict %s v%d views=%d top1=%s (%.3f) gflops=%.3f/%.3f total=%.1f ms",
        name,
        served.version,
        query.clips * query.crops,
        best.label,
        best.score,
        result.flops.executed_gflops,
        result.flops.full_gflops,
        timing.total,
    )
    return PredictResponse(
        model=name,
        version=served.version,
        predictions=result.predictions,
        flops=result.flops,
        policy=result.policy,
        video=result.video,
        timing_ms=timing,
        backend=BACKEND,
        request_id=REQUEST_ID.get(),
    )
