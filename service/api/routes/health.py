"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from clipwise.service.deps import StateDep
from clipwise.service.errors import ApiError, documented_errors
from clipwise.service.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Liveness:
    return Liveness(status="alive")


@router.get("/readyz", summary="Every default model is loaded and warmed up", responses=documented_errors(503))
async def readyz(state: StateDep) -> Readiness:
    if state.startup.status != "ready":
        raise ApiError(503, "not_ready", state.startup.detail, headers={"Retry-After": "1"})
    return Readiness(status="ready", models=state.store.names())
