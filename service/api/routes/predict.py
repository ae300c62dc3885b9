"""``POST /v1/models/{name}/predict``: classify an uploaded video."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from clipwise.service.api.routes.models import ModelName
from clipwise.service.deps import StateDep
from clipwise.service.errors import ApiError, documented_errors
from clipwise.service.inference import decode_limits, flops_report, top_classes, video_report
from clipwise.service.log import REQUEST_ID
from clipwise.service.metrics import STAGES
from clipwise.service.schemas import PredictQuery, PredictResponse, TimingReport
from clipwise.service.slots import deadline_in
from clipwise.service.upload import FIELD, read_upload

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
    """Decode the upload, sample the model's views, run the model (batched with concurrent requests) and
    return the top-k classes with the FLOPs executed, the policy (adaptive models) and the time of each stage."""
    arrived = time.perf_counter()
    settings = state.settings
    served = state.store.get(name, query.version)
    with state.metrics.counting(served, served.backend_name(query.backend)), state.admission.admit():
        backend = served.backend(query.backend)
        classes = len(served.manifest.labels)
        if query.top_k > classes:
            raise ApiError(422, "validation_error", f"query.top_k: {name} has {classes} classes; top_k must be <= that")
        upload = await read_upload(request, settings.max_upload_bytes, settings.upload_timeout_s)
        deadline = deadline_in(settings.request_timeout_s)
        decode = partial(
            state.decoder.load_clips,
            upload.data,
            served.spec,
            clips=query.clips,
            crops=query.crops,
            limits=decode_limits(settings),
        )
        with state.batcher.expecting(served, backend):
            views, slot_ms = await state.slots.run(decode, deadline)
            batch = await state.batcher.execute(served, backend, views.clips, deadline)
    timing = TimingReport(
        read=upload.read_ms,
        queue=slot_ms + batch.queue_ms,
        decode=views.decode_ms,
        preprocess=views.preprocess_ms,
        inference=batch.inference_ms,
        total=(time.perf_counter() - arrived) * 1000,
    )
    state.metrics.observe_stages(name, {stage: getattr(timing, stage) / 1000 for stage in STAGES})
    state.metrics.observe_execution(name, batch.execution, batch.batch_size)
    response = PredictResponse(
        model=name,
        version=served.version,
        predictions=top_classes(batch.execution.logits, served.manifest.labels, query.top_k),
        flops=flops_report(batch.execution),
        policy=batch.execution.policy,
        video=video_report(views),
        timing_ms=timing,
        backend=backend.label,
        batch_size=batch.batch_size,
        full_compute_ms_per_view=served.full_compute_ms.get(backend.name),
        request_id=REQUEST_ID.get(),
    )
    log_prediction(response, views.clips.shape[0])
    return response


def log_prediction(response: PredictResponse, views: int) -> None:
    best = response.predictions[0]
    logger.info(
        "predict %s v%d on %s views=%d top1=%s (%.3f) gflops executed/policy/full=%.3f/%.3f/%.3f batch=%d "
        "total=%.1f ms",
        response.model,
        response.version,
        response.backend,
        views,
        best.label,
        best.score,
        response.flops.executed_gflops,
        response.flops.policy_gflops,
        response.flops.full_gflops,
        response.batch_size,
        response.timing_ms.total,
    )
