"""Prometheus metrics of one app, served at ``/metrics``; each app has its own registry.

* ``clipwise_requests_total{model, version, backend, status}``: inference requests (v1 and v2) by outcome;
* ``clipwise_requests_in_progress``: inference requests held now (``clipwise.service.slots.Admission``);
* ``clipwise_stage_seconds{model, stage}``: histogram of each stage (decode, preprocess, queue, inference);
* ``clipwise_executed_gflops_total{model}``, ``clipwise_policy_gflops_total{model}`` and
  ``clipwise_full_gflops_total{model}``: GMACs of what really ran, what the policies' decisions cost by the
  paper's count, and what the same clips cost with nothing skipped;
* ``clipwise_full_compute_seconds{model, backend}``: one view through the full-compute path, timed when the
  version loaded (the time a FLOPs saving is compared with);
* ``clipwise_policy_fraction{model, measure}``: histogram per clip of ``clipwise.models.policy.policy_fractions``:
  AdaFuse's keep / reuse / skip, Ada3D's frame_fraction / stage_fraction, the fusion units' S / ST / S+ST;
* ``clipwise_batch_requests{model}``: histogram, per request, of the requests in its forward pass;
* ``clipwise_model_loads_total{model, outcome}``: loads (startup, API, watcher), loaded or refused;
* ``clipwise_model_loaded{model, version, backend}``: 1 per served model, its version and default backend
  (with ``auto``, the one chosen);
* ``clipwise_backend_timing_seconds{model, backend}``: with ``auto``, one clip on each available backend,
  timed when the version loaded (the medians the choice was made on).

Only requests for a served model are counted, so label values come from the repository, never from what a
client makes up. ``1 - rate(executed) / rate(full)`` is the compute really saved, ``1 - rate(policy) /
rate(full)`` what the policies asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clipwise.models.base import Execution
from clipwise.models.policy import policy_fractions
from clipwise.service.errors import status_of
from clipwise.service.model_store import ModelStore, ServedModel
from clipwise.service.slots import Admission

STAGES = ("decode", "preprocess", "queue", "inference")
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FRACTION_BUCKETS = tuple(step / 10 for step in range(11))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServedModelsCollector(Collector):
    """``clipwise_model_loaded``, ``clipwise_full_compute_seconds`` and ``clipwise_backend_timing_seconds``, read
    from the store at every scrape."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "clipwise_model_loaded",
            "1 per served model: its version and default backend",
            labels=["model", "version", "backend"],
        )
        full_compute = GaugeMetricFamily(
            "clipwise_full_compute_seconds",
            "one view through the full-compute path, timed when the version loaded",
            labels=["model", "backend"],
        )
        timing = GaugeMetricFamily(
            "clipwise_backend_timing_seconds",
            "one clip on each backend, median of the interleaved rounds run when the version loaded (backend auto)",
            labels=["model", "backend"],
        )
        for served in self.store.served():
            gauge.add_metric([served.name, str(served.version), served.backend_name()], 1)
            for backend, milliseconds in served.full_compute_ms.items():
                full_compute.add_metric([served.name, backend], milliseconds / 1000)
            for backend, milliseconds in served.choice.timings_ms.items():
                timing.add_metric([served.name, backend], milliseconds / 1000)
        yield gauge
        yield full_compute
        yield timing


class ServiceMetrics:
    """The app's metrics and its registry."""

    def __init__(self, store: ModelStore, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        in_progress = Gauge("clipwise_requests_in_progress", "inference requests held now", registry=registry)
        in_progress.set_function(lambda: admission.active)
        self.requests = Counter(
            "clipwise_requests",
            "inference requests by outcome",
            ["model", "version", "backend", "status"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "clipwise_stage_seconds",
            "time per stage of a request",
            ["model", "stage"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.executed_gflops = Counter("clipwise_executed_gflops", "GMACs executed", ["model"], registry=registry)
        self.policy_gflops = Counter(
            "clipwise_policy_gflops",
            "GMACs the policies' decisions cost by the paper's count",
            ["model"],
            registry=registry,
        )
        self.full_gflops = Counter("clipwise_full_gflops", "GMACs with nothing skipped", ["model"], registry=registry)
        self.policy_fraction = Histogram(
            "clipwise_policy_fraction",
            "per clip: fraction of channels kept / reused / skipped (AdaFuse), of frames kept and 3D stages on "
            "(Ada3D), of layers per unit (fusion)",
            ["model", "measure"],
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "clipwise_batch_requests",
            "per request: the requests in its forward pass",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.model_loads = Counter(
            "clipwise_model_loads", "model loads by outcome", ["model", "outcome"], registry=registry
        )
        registry.register(ServedModelsCollector(store))

    @contextlib.contextmanager
    def counting(self, served: ServedModel, backend: str) -> Iterator[None]:
        """Count the request run inside the block under the status its outcome maps to."""
        status = 499  # left as is only when the request is cancelled: the client went away (nginx's code)
        try:
            yield
            status = 200
        except Exception as error:
            status = status_of(error)
            raise
        finally:
            self.requests.labels(served.name, str(served.version), backend, str(status)).inc()

    def observe_stages(self, model: str, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.stage_seconds.labels(model, stage).observe(value)

    def observe_execution(self, model: str, execution: Execution, batch_requests: int) -> None:
        """FLOPs, policy usage and batch size of one request's share of a forward pass."""
        self.executed_gflops.labels(model).inc(sum(execution.executed_gflops))
        self.policy_gflops.labels(model).inc(sum(execution.policy_gflops))
        self.full_gflops.labels(model).inc(execution.full_gflops * len(execution.executed_gflops))
        self.batch_requests.labels(model).observe(batch_requests)
        for policy in execution.policy or []:
            for measure, fraction in policy_fractions(policy).items():
                self.policy_fraction.labels(model, measure).observe(fraction)
