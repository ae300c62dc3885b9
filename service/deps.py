"""FastAPI dependencies: the app's settings, model store and worker pool, as annotated types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.model_store import ModelStore
from service.runner import InferenceRunner
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_store(state: StateDep) -> ModelStore:
    return state.store


def get_runner(state: StateDep) -> InferenceRunner:
    return state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[InferenceRunner, Depends(get_runner)]
