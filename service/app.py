"""The FastAPI application: ``create_app(settings)`` builds one, ready for uvicorn.

Startup checks the configuration at once (the repository exists, the default models are in it) and
refuses to start otherwise, then starts the decode workers; the models are then loaded and warmed up in the
background, so ``/healthz`` answers during loading and ``/readyz`` turns 200 when every default model is
served. With ``watch`` on, the repository is then polled for new versions (``clipwise.service.lifecycle``). The
Open Inference Protocol over gRPC (``clipwise.service.grpc_api``) is served on the same event loop from startup
to shutdown, unless its port is 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import torch
from fastapi import FastAPI

from clipwise.models.device import DeviceUnavailable, resolve_device
from clipwise.service.api.main import api_router
from clipwise.service.config import VERSION, Settings
from clipwise.service.errors import install_error_handlers
from clipwise.service.lifecycle import load_model, watch_repository
from clipwise.service.middleware import RequestContextMiddleware
from clipwise.service.model_store import InvalidVersion, ModelNotFound
from clipwise.service.state import ServiceState
from clipwise.service.upload import FRAMING_ALLOWANCE

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Video action recognition with efficient and adaptive models. Every prediction reports the FLOPs "
    "(multiply-accumulates) the model executed and, for adaptive models, the policy it followed."
)


GRPC_STOP_GRACE_S = 5.0  # at shutdown, RPCs in progress get this long to finish


class ConfigurationError(RuntimeError):
    """The settings name a repository, models or a device that do not exist."""


def default_models(state: ServiceState) -> list[str]:
    """The models to load at startup: those the settings name, or every model in the repository."""
    repository = state.settings.model_repository
    if not repository.is_dir():
        raise ConfigurationError(f"model repository {repository} is not a directory")
    on_disk = state.store.names_on_disk()
    names = state.settings.models or on_disk
    missing = sorted(set(names) - set(on_disk))
    if missing:
        raise ConfigurationError(f"models {missing} have no version in {repository}; present: {on_disk}")
    return names


async def load_models(state: ServiceState, names: list[str]) -> None:
    """Load and warm up ``names`` one after the other, then declare the service ready (and watch, if asked)."""
    for name in names:
        state.startup.loading(name)
        try:
            await load_model(state, name)
        except Exception as error:
            state.startup.failed(f"loading {name} failed: {error}")
            unexpected = not isinstance(error, InvalidVersion | ModelNotFound)  # those are the repository's state
            logger.error("loading %s failed; the service stays not ready", name, exc_info=unexpected)
            return
    state.startup.ready()
    logger.info("ready: %s", ", ".join(names) or "no models")
    if state.settings.watch:
        await watch_repository(state)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    if state.settings.torch_threads:
        torch.set_num_threads(state.settings.torch_threads)
    names = default_models(state)
    await asyncio.to_thread(state.decoder.start)
    grpc_server = await serve_grpc(state)
    background = asyncio.create_task(load_models(state, names))
    try:
        yield
    finally:
        background.cancel()
        if grpc_server is not None:
            await grpc_server.stop(GRPC_STOP_GRACE_S)
        state.slots.shutdown()
        state.decoder.close()


async def serve_grpc(state: ServiceState) -> grpc.aio.Server | None:
    """The Open Inference Protocol over gRPC on the settings' port, on this event loop; None when it is 0. Its
    module is imported only then: its messages and a gRPC client's may not share a process (see there)."""
    settings = state.settings
    if not settings.grpc_port:
        return None
    from clipwise.service.grpc_api.server import start_grpc_server

    try:
        return await start_grpc_server(state)
    except RuntimeError as error:
        state.decoder.close()
        raise ConfigurationError(f"CLIPWISE_GRPC_PORT / --grpc-port {settings.grpc_port}: {error}") from None


def create_app(settings: Settings | None = None) -> FastAPI:
    """A Clipwise app for ``settings`` (default: from the environment). Raises ``ConfigurationError`` at once if
    their device does not exist here."""
    app = FastAPI(title="Clipwise", version=VERSION, description=DESCRIPTION, lifespan=lifespan)
    settings = settings or Settings()
    try:
        device = resolve_device(settings.device)
    except DeviceUnavailable as error:
        raise ConfigurationError(f"CLIPWISE_DEVICE / --device: {error}") from None
    app.state.service = ServiceState.from_settings(settings, device)
    app.add_middleware(RequestContextMiddleware, drain_bytes=settings.max_upload_bytes + FRAMING_ALLOWANCE)
    install_error_handlers(app)
    app.include_router(api_router)
    return app
