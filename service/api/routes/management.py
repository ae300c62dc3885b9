"""Model lifecycle: load a version, unload a model, list a model's versions. Bearer token required.

A load reads the version from the repository, checks it and warms it up while the current version keeps
serving, then swaps it in; requests in flight finish on the version they started on. A version that fails
any check answers 502 (``invalid_version``: the repository holds something the server cannot serve) and
changes nothing.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from clipwise.export.runtime import BACKENDS
from clipwise.service.api.routes.models import ModelName
from clipwise.service.deps import StateDep, StoreDep, require_admin
from clipwise.service.errors import documented_errors
from clipwise.service.lifecycle import load_model
from clipwise.service.model_store import VersionEntry
from clipwise.service.schemas import BackendChoiceReport, LoadResponse, UnloadResponse, VersionInfo, VersionList

router = APIRouter(prefix="/v1/models", tags=["management"], dependencies=[Depends(require_admin)])
AUTH_ERRORS = (401, 403)


@router.post(
    "/{name}/load",
    summary="Load a version from the repository and serve it in place of the current one",
    responses=documented_errors(*AUTH_ERRORS, 404, 422, 502),
)
async def load(
    name: ModelName,
    state: StateDep,
    version: Annotated[int | None, Query(ge=1, description="version to load (default: the newest)")] = None,
) -> LoadResponse:
    started = time.perf_counter()
    served, previous = await load_model(state, name, version)
    return LoadResponse(
        model=name,
        version=served.version,
        previous_version=previous and previous.version,
        backends=sorted(served.backends.available),
        backend_choice=BackendChoiceReport.of(served.choice),
        load_ms=(time.perf_counter() - started) * 1000,
    )


@router.post("/{name}/unload", summary="Stop serving a model", responses=documented_errors(*AUTH_ERRORS, 404, 422))
async def unload(name: ModelName, store: StoreDep) -> UnloadResponse:
    return UnloadResponse(model=name, version=store.unload(name).version)


@router.get(
    "/{name}/versions",
    summary="The model's versions in the repository",
    responses=documented_errors(*AUTH_ERRORS, 404, 422),
)
async def versions(name: ModelName, store: StoreDep) -> VersionList:
    served = {model.name: model.version for model in store.served()}
    return VersionList(
        model=name,
        served_version=served.get(name),
        versions=[version_info(entry) for entry in store.describe_versions(name)],
    )


def version_info(entry: VersionEntry) -> VersionInfo:
    manifest = entry.manifest
    return VersionInfo(
        version=entry.version,
        valid_manifest=manifest is not None,
        problem=entry.problem,
        architecture=manifest and manifest.architecture,
        trained=manifest and manifest.trained,
        metrics=manifest.metrics if manifest else {},
        created_at=manifest and manifest.created_at,
        backends=list(BACKENDS) if entry.has_onnx else ["torch"],
        default_backend=manifest and manifest.backend,
    )
