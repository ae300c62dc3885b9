"""Loading versions — at startup, on a management request, or when the repository watcher sees a new one.

Every load goes through ``load_model``: the store checks and warms the version up in a worker thread (the event
loop keeps serving), then swaps it in; the outcome is logged and counted. ``watch_repository`` polls the
repository every ``watch_interval_s`` and loads a version of a served model newer than any it has seen; a
version it refuses is logged and not tried again (fix it by writing a new version, or load it by hand), and
an explicit rollback to an older version stays in place until a newer one appears.
"""

from __future__ import annotations

import asyncio
import logging

from clipwise.service.model_store import InvalidVersion, ModelNotFound, ServedModel
from clipwise.service.state import ServiceState

logger = logging.getLogger(__name__)


async def load_model(
    state: ServiceState, name: str, version: int | None = None
) -> tuple[ServedModel, ServedModel | None]:
    """Load ``name`` at ``version`` (default: the newest) in place of the version serving it; returns the new
    and the replaced version. Raises what ``ModelStore.load`` raises; the version serving is then unchanged."""
    try:
        served, previous = await asyncio.to_thread(state.store.load, name, version)
    except InvalidVersion as error:
        state.metrics.model_loads.labels(name, "refused").inc()
        logger.error("refused: %s; %s", error, _still_serving(state, name))
        raise
    state.metrics.model_loads.labels(name, "loaded").inc()
    replaced = f", replacing version {previous.version}" if previous else ""
    backends = "/".join(served.backends.available)
    logger.info("serving %s version %d from %s on %s%s", name, served.version, served.loaded.path, backends, replaced)
    return served, previous


def _still_serving(state: ServiceState, name: str) -> str:
    served = {model.name: model.version for model in state.store.served()}
    return f"still serving version {served[name]}" if name in served else "the model is not served"


async def watch_repository(state: ServiceState) -> None:
    """Poll the repository forever, loading versions of served models newer than any seen before; each poll
    finished, failed or not, is counted in ``state.watch_polls``."""
    seen: dict[str, int] = {}
    while True:
        await asyncio.sleep(state.settings.watch_interval_s)
        try:
            await _poll(state, seen)
        except Exception:  # the watcher outlives any one bad poll (an unreadable directory, ...)
            logger.exception("polling the repository failed; trying again in %g s", state.settings.watch_interval_s)
        state.watch_polls += 1


async def _poll(state: ServiceState, seen: dict[str, int]) -> None:
    for served in state.store.served():
        newest = max(state.store.versions_on_disk(served.name), default=0)
        if newest <= seen.setdefault(served.name, served.version):
            continue
        seen[served.name] = newest
        logger.info("watch: %s version %d appeared", served.name, newest)
        try:
            await load_model(state, served.name, newest)
        except InvalidVersion:
            pass  # logged and counted by load_model; the version serving stays
        except ModelNotFound as error:
            logger.warning("watch: %s", error)  # removed between the listing and the load
