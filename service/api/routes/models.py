"""What is being served: the model list and each model's manifest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from clipwise.service.deps import StoreDep
from clipwise.service.errors import documented_errors
from clipwise.service.model_store import ModelStore, ServedModel
from clipwise.service.schemas import BackendChoiceReport, CounterpartReport, ModelDetail, ModelList, ModelSummary

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


def counterpart_report(served: ServedModel, store: ModelStore) -> CounterpartReport | None:
    """The manifest's dense counterpart and its time per view, when that model is served here."""
    name = served.manifest.counterpart
    if name is None:
        return None
    dense = store.find(name)
    if dense is None:
        return CounterpartReport(name=name, backend=None, ms_per_view=None)
    backend = dense.backend_name()
    return CounterpartReport(name=name, backend=backend, ms_per_view=dense.full_compute_ms.get(backend))


def model_detail(served: ServedModel, versions: list[int], counterpart: CounterpartReport | None) -> ModelDetail:
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
        backend=served.backend_name(),
        backends=sorted(served.backends.available),
        backend_choice=BackendChoiceReport.of(served.choice),
        created_at=manifest.created_at,
        weights_sha256=manifest.weights_sha256,
        full_compute_ms=served.full_compute_ms,
        counterpart=counterpart,
    )


@router.get("", summary="Models being served")
async def list_models(store: StoreDep) -> ModelList:
    return ModelList(models=[model_summary(served) for served in store.served()])


@router.get(
    "/{name}", summary="A served model: versions, labels, input spec, cost", responses=documented_errors(404, 422)
)
async def get_model(name: ModelName, store: StoreDep) -> ModelDetail:
    served = store.get(name)
    return model_detail(served, store.versions_on_disk(name), counterpart_report(served, store))
