"""What is being served: the model list and each model's manifest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.deps import StoreDep
from service.errors import documented_errors
from service.model_store import ServedModel
from service.schemas import ModelDetail, ModelList, ModelSummary

router = APIRouter(prefix="/v1/models", tags=["models"])
# a repository's model names have at most 64 characters (models.checkpoint.NAME_PATTERN): longer is a 422
ModelName = Annotated[str, Path(max_length=64, description="model name, as listed by GET /v1/models")]


def model_summary(served: ServedModel) -> ModelSummary:
    manifest = served.manifest
    return ModelSummary(
        name=served.name,
        version=served.version,
        family=served.family,
        architecture=manifest.architecture,
        full_gflops=manifest.full_gflops,
        trained=manifest.trained,
    )


def model_detail(served: ServedModel, versions: list[int]) -> ModelDetail:
    manifest = served.manifest
    return ModelDetail(
        **model_summary(served).model_dump(),
        versions=versions,
        labels=manifest.labels,
        preprocessing=manifest.preprocessing,
        input_shape=list(served.clip_shape),
        params_m=manifest.params_m,
        kwargs=manifest.kwargs,
        metrics=manifest.metrics,
        backend=manifest.backend,
        backends=sorted(served.backends.available),
        created_at=manifest.created_at,
        weights_sha256=manifest.weights_sha256,
        full_compute_ms=served.full_compute_ms,
    )


@router.get("", summary="Models being served")
async def list_models(store: StoreDep) -> ModelList:
    return ModelList(models=[model_summary(served) for served in store.served()])


@router.get(
    "/{name}", summary="A served model: versions, labels, input spec, cost", responses=documented_errors(404, 422)
)
async def get_model(name: ModelName, store: StoreDep) -> ModelDetail:
    return model_detail(store.get(name), store.versions_on_disk(name))
