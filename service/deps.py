"""FastAPI dependencies: the app's state, settings and model store as annotated types, and the bearer-token
check of the management routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clipwise.service.config import Settings
from clipwise.service.errors import ApiError
from clipwise.service.model_store import ModelStore
from clipwise.service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_store(state: StateDep) -> ModelStore:
    return state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]

bearer = HTTPBearer(auto_error=False, description="the server's CLIPWISE_ADMIN_TOKEN")


def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Let the request through only with ``Authorization: Bearer <admin token>`` (compared in constant time);
    403 while the server has no token."""
    token = settings.admin_token
    if token is None:
        message = "model management is disabled: start the server with CLIPWISE_ADMIN_TOKEN set"
        raise ApiError(403, "management_disabled", message)
    given = credentials.credentials.encode() if credentials else b""
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        message = "send the admin token as 'Authorization: Bearer <token>'"
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
