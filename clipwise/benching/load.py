"""The load of ``clipwise bench``: closed-loop clients sending predictions to a server, and each level's figures.

``C`` clients send requests in a closed loop (each sends its next request when the last one is answered),
cycling through the videos, after unmeasured warm-up requests; latency is the client's (upload sent to
response read).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from clipwise.service.schemas import PredictResponse

PERCENTILES = (50, 90, 99)


class BenchError(RuntimeError):
    """The benchmark cannot run as asked."""


class RequestFailed(RuntimeError):
    """A request got no usable answer; the message says why (status, error code, server message)."""


@dataclass(frozen=True)
class Video:
    name: str
    data: bytes


@dataclass(frozen=True)
class Plan:
    """What to send, how many and how fast."""

    models: list[str] | None
    backends: list[str | None]
    videos: list[Video]
    requests: int
    concurrency: list[int]
    clips: int
    crops: int
    warmup: int
    timeout_s: float
    time_limit_s: float


@dataclass
class LevelReport:
    """One model and backend at one concurrency level: counts, client latency (ms), and means over the answered
    requests of their GFLOPs, batch size, policy numbers and server stage times (ms)."""

    model: str
    backend: str
    concurrency: int
    sent: int
    answered: int
    errors: dict[str, int]
    wall_s: float
    throughput_rps: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    version: int | None = None
    executed_gflops: float | None = None
    policy_gflops: float | None = None
    full_gflops: float | None = None
    batch_size: float | None = None
    policy: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    decode_share: float | None = None


async def bench(url: str, plan: Plan) -> list[LevelReport]:
    """Every model x backend x concurrency level of ``plan`` against the server at ``url``, in that order."""
    import httpx

    limits = httpx.Limits(max_connections=max(plan.concurrency), max_keepalive_connections=max(plan.concurrency))
    async with httpx.AsyncClient(base_url=url, timeout=plan.timeout_s, limits=limits) as client:
        models = plan.models or await served_models(client)
        reports = []
        for model, backend, concurrency in itertools.product(models, plan.backends, plan.concurrency):
            print(f"{model} backend={backend or 'default'} concurrency={concurrency} ...", file=sys.stderr, flush=True)
            reports.append(await measure_level(client, plan, model, backend, concurrency))
    return reports


async def served_models(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/models")
    if response.status_code != 200:
        raise BenchError(f"cannot list the served models: {describe_failure(response)}")
    names = [model["name"] for model in response.json()["models"]]
    if not names:
        raise BenchError("the server serves no model")
    return names


async def measure_level(
    client: httpx.AsyncClient, plan: Plan, model: str, backend: str | None, concurrency: int
) -> LevelReport:
    """Warm up, then ``plan.requests`` predictions from ``concurrency`` closed-loop clients."""
    videos = itertools.cycle(plan.videos)
    for _ in range(plan.warmup):
        try:
            await predict(client, plan, model, backend, next(videos))
        except RequestFailed as error:  # every request would fail the same way: report it once, move on
            return summarize(model, backend, concurrency, [], Counter([str(error)]), wall_s=0.0)
    answers: list[tuple[float, PredictResponse]] = []
    errors: Counter[str] = Counter()
    tickets = iter(range(plan.requests))
    deadline = time.perf_counter() + plan.time_limit_s

    async def client_loop() -> None:
        while time.perf_counter() < deadline and next(tickets, None) is not None:
            try:
                answers.append(await predict(client, plan, model, backend, next(videos)))
            except RequestFailed as error:
                errors[str(error)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return summarize(model, backend, concurrency, answers, errors, wall_s)


async def predict(
    client: httpx.AsyncClient, plan: Plan, model: str, backend: str | None, video: Video
) -> tuple[float, PredictResponse]:
    """One prediction: client-side latency in milliseconds and the parsed response."""
    import httpx

    from clipwise.service.schemas import PredictResponse

    params: dict[str, Any] = {"clips": plan.clips, "crops": plan.crops}
    if backend is not None:
        params["backend"] = backend
    started = time.perf_counter()
    try:
        response = await client.post(
            f"/v1/models/{model}/predict", params=params, files={"file": (video.name, video.data)}
        )
    except httpx.TimeoutException:
        raise RequestFailed(f"no answer within {plan.timeout_s:g} s") from None
    except httpx.HTTPError as error:
        raise RequestFailed(f"{type(error).__name__}: {error}") from None
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RequestFailed(describe_failure(response))
    answer = PredictResponse.model_validate_json(response.content)
    if backend is not None and answer.backend != backend:
        raise RequestFailed(f"asked for backend {backend}, answered by {answer.backend}")
    return latency_ms, answer


def describe_failure(response: httpx.Response) -> str:
    """``STATUS code: message`` from a Clipwise error body, or the status and the start of the body."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"


def summarize(
    model: str,
    backend: str | None,
    concurrency: int,
    answers: list[tuple[float, PredictResponse]],
    errors: Counter[str],
    wall_s: float,
) -> LevelReport:
    """The figures of one level from its answers (client latency, parsed response)."""
    import numpy as np

    from clipwise.models.policy import policy_fractions

    report = LevelReport(
        model=model,
        backend=answers[0][1].backend if answers else backend or "default",
        concurrency=concurrency,
        sent=len(answers) + errors.total(),
        answered=len(answers),
        errors=dict(errors),
        wall_s=wall_s,
        throughput_rps=len(answers) / wall_s if wall_s else 0.0,
    )
    if not answers:
        return report
    latencies = np.array([latency for latency, _ in answers])
    responses = [response for _, response in answers]
    report.latency_ms = {f"p{q}": float(np.percentile(latencies, q)) for q in PERCENTILES}
    report.latency_ms |= {"mean": float(latencies.mean()), "max": float(latencies.max())}
    report.version = responses[-1].version
    report.executed_gflops = mean(response.flops.executed_gflops for response in responses)
    report.policy_gflops = mean(response.flops.policy_gflops for response in responses)
    report.full_gflops = mean(response.flops.full_gflops for response in responses)
    report.batch_size = mean(response.batch_size for response in responses)
    views = [policy_fractions(policy) for response in responses for policy in response.policy or []]
    report.policy = {key: mean(numbers[key] for numbers in views) for key in views[0]} if views else {}
    timings = [response.timing_ms.model_dump() for response in responses]
    report.stages_ms = {stage: mean(timing[stage] for timing in timings) for stage in timings[0]}
    total = report.stages_ms["total"]
    report.decode_share = report.stages_ms["decode"] / total if total else 0.0
    return report


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
