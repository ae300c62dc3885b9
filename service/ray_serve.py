"""Clipwise on Ray Serve: the app of ``clipwise.service.app.create_app`` as the ingress of a Ray Serve deployment.

Each replica builds the app with the same ``Settings`` (``serve.ingress``, the app made on the replica), so
every route, error body and header is the uvicorn server's, and joins only once its default models are loaded
and warmed up, as ``/readyz`` would say. Replicas are sized by the settings: ``torch_threads`` CPUs,
``max_pending_requests`` requests at once, autoscaling (``RayServeSettings.max_replicas``) aiming at
``max_concurrent_inferences`` ongoing requests each. They read one model repository, at the same path on every
node, and never write it; with ``watch`` each loads new versions by itself, as the compose replicas do.
Deploying again (new code or settings) is Ray Serve's rolling update: replicas replaced one at a time, an old
one finishing its requests before it stops; a cluster needs room for the replica Ray starts first when the
count grows or ``RayServeSettings.surge_percent`` allows it.

Every response a replica gives carries ``X-Clipwise-Replica``: the replica's id, which is also its actor's
name in the ``serve`` namespace. ``clipwise.service.ray_proxy`` is Clipwise's part in Ray's HTTP proxy: one
``X-Request-ID`` per response, and a 503 with ``Retry-After`` for a request whose replica died.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipwise.service.app import create_app
from clipwise.service.config import RAY_FIELD_PREFIX, RayServeSettings, Settings
from clipwise.service.log import configure_logging
from clipwise.service.ray_proxy import REPLICA_HEADER
from clipwise.service.state import ServiceState

APP_NAME = "clipwise"
READY_POLL_S = 0.05
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the replica


@serve.deployment(name=APP_NAME)
@serve.ingress()
class ClipwiseDeployment:
    """One replica: the Clipwise app for ``settings``, ready once its default models are."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self) -> FastAPI:
        configure_logging(self.settings.log_level)
        app = create_app(self.settings.model_copy(update={"grpc_port": 0}))  # replicas share a node: HTTP only
        app.router.lifespan_context = _until_ready(app.router.lifespan_context)
        replica = serve.get_replica_context().replica_id.to_full_id_str()
        app.add_middleware(ReplicaHeaderMiddleware, replica=replica)
        return app


def _until_ready(
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """``lifespan`` whose startup also waits for the default models, so Ray routes nothing to a replica
    still loading; a replica whose models fail to load fails to start (Ray tries another)."""

    @asynccontextmanager
    async def until_ready(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(app):
            await _wait_for_models(app.state.service)
            yield

    return until_ready


async def _wait_for_models(state: ServiceState) -> None:
    while state.startup.status == "loading":
        await asyncio.sleep(READY_POLL_S)
    if state.startup.status == "failed":
        raise RuntimeError(state.startup.detail)


class ReplicaHeaderMiddleware:
    """Names the replica in every response (``X-Clipwise-Replica``)."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_naming_the_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REPLICA_HEADER] = self.replica
            await send(message)

        await self.app(scope, receive, send_naming_the_replica)


# ---------------------------------------------------------------- deploying


def deployment_options(settings: Settings, ray_settings: RayServeSettings) -> dict[str, Any]:
    """Ray Serve options of the deployment, sized by ``settings``."""
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.torch_threads or 1, "num_gpus": ray_settings.gpus},
        "max_ongoing_requests": settings.max_pending_requests,
        "max_queued_requests": settings.max_pending_requests,
        # a replica stopping (rolling update, scale-down) finishes its requests first: they take at most this
        "graceful_shutdown_timeout_s": settings.upload_timeout_s + settings.request_timeout_s,
        "max_surge_percent": ray_settings.surge_percent,
    }
    if ray_settings.max_replicas is None or ray_settings.max_replicas == ray_settings.replicas:
        options["num_replicas"] = ray_settings.replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": ray_settings.replicas,
            "initial_replicas": ray_settings.replicas,
            "max_replicas": ray_settings.max_replicas,
            "target_ongoing_requests": settings.max_concurrent_inferences,
        }
    return options


def application(settings: Settings, ray_settings: RayServeSettings) -> Application:
    """The Clipwise application for Ray Serve, ready for ``serve.run``."""
    return ClipwiseDeployment.options(**deployment_options(settings, ray_settings)).bind(settings)


def app_builder(args: dict[str, str]) -> Application:
    """The ``import_path`` of a Serve config file (``serve deploy``, KubeRay's RayService), or of ``serve run
    service.ray_serve:app_builder models=tsn_r18_tiny ray_replicas=2``; Ray's own HTTP options then apply, not
    ``host`` and ``port``. Settings come from the ``CLIPWISE_*`` environment; ``args`` override them by field
    name (``ray_`` + a ``RayServeSettings`` field)."""
    ray_args = {name: value for name, value in args.items() if name.startswith(RAY_FIELD_PREFIX)}
    app_args = {name: value for name, value in args.items() if name not in ray_args}
    ray_settings = RayServeSettings(**{name.removeprefix(RAY_FIELD_PREFIX): value for name, value in ray_args.items()})
    return application(Settings(**app_args), ray_settings)


def deploy(settings: Settings, ray_settings: RayServeSettings) -> None:
    """Run the application on the connected Ray cluster, its HTTP proxy on ``settings.host:port``; returns once
    every replica is ready. Deploying again over a running application is a rolling update."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings, ray_settings), name=APP_NAME, route_prefix="/")


def serve_on_ray(settings: Settings, ray_settings: RayServeSettings) -> int:
    """``clipwise serve --engine ray``: deploy to the cluster at ``ray_settings.address`` and return (the cluster
    serves on), or, without an address, start a Ray instance on this machine and serve until SIGINT or SIGTERM."""
    if ray_settings.address is not None:
        ray.init(address=ray_settings.address)
        deploy(settings, ray_settings)
        logger.info("Clipwise deployed on the Ray cluster at %s", ray_settings.address)
        ray.shutdown()
        return 0
    ray.init(include_dashboard=False)
    deploy(settings, ray_settings)
    address = ray.get_runtime_context().gcs_address
    url = f"http://{settings.host}:{settings.port}"
    logger.info("Clipwise on Ray Serve at %s; deploy again with --ray-address %s; Ctrl-C stops it", url, address)
    _wait_for_a_stop_signal()
    serve.shutdown()
    ray.shutdown()
    return 0


def _wait_for_a_stop_signal() -> None:
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    stop.wait()
