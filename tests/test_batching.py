"""Dynamic batching: concurrent requests share a forward pass and each gets exactly its own answer.

The expected values come from each request's clips run alone, in-process, on the same model version: logits,
executed GFLOPs per clip and policies. The batcher itself is driven on a real model (``Batcher.execute`` in an
event loop), and through the real server over HTTP.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from live_server import serving
from randomised import decisive_policies, randomise_batch_norms

from clipwise.models import create_model
from clipwise.models.base import Execution
from clipwise.models.checkpoint import load_version, save_version
from clipwise.service.app import create_app
from clipwise.service.backends import open_backends, untimed_choice
from clipwise.service.batching import Batcher, BatchResult, split_execution
from clipwise.service.config import Settings
from clipwise.service.model_store import ServedModel
from clipwise.service.slots import SlotPool, deadline_in

LABELS = [f"class_{i}" for i in range(5)]
STATIC, ADAPTIVE, PER_CLIP = "tsn_r18_tiny", "adafuse_tsn_r18_tiny", "ada3d_i3d_r50_tiny"
PREFIX = "adafuse_prefix"  # the execution-aware AdaFuse, decisive policies: one level per block per clip
WINDOW_MS = 300.0  # long enough that requests sent together always meet in one window
LONG_WINDOW_MS = 1000.0  # the largest allowed: a batch leaving well before it did not wait for it


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for seed, name in enumerate((STATIC, ADAPTIVE, PER_CLIP)):
        torch.manual_seed(seed)
        save_version(create_model(name, num_classes=len(LABELS)), LABELS, root, name, trained=False)
    torch.manual_seed(3)  # its own seed: the clips' levels must not depend on what the models above drew
    prefix = decisive_policies(randomise_batch_norms(create_model(ADAPTIVE, num_classes=5, structure="prefix")))
    save_version(prefix, LABELS, root, PREFIX, trained=False)
    return root


def served_model(repository: Path, name: str) -> ServedModel:
    loaded = load_version(repository, name)
    return ServedModel(loaded, open_backends(loaded), untimed_choice(loaded.manifest.backend))


def random_clips(served: ServedModel, count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, *served.clip_shape, generator=torch.Generator().manual_seed(seed))


def run_concurrently(jobs: list[tuple[ServedModel, torch.Tensor]], **settings: object) -> list[BatchResult]:
    """Submit every job at once to a batcher with these settings (and a long window); wait for all."""
    pool = SlotPool(slots=2)
    batcher = Batcher(pool, Settings(batch_window_ms=WINDOW_MS, **settings))

    async def submit(served: ServedModel, clips: torch.Tensor) -> BatchResult:
        with batcher.expecting(served, served.backend()):
            return await batcher.execute(served, served.backend(), clips, deadline_in(60))

    async def scenario() -> list[BatchResult]:
        return list(await asyncio.gather(*(submit(served, clips) for served, clips in jobs)))

    try:
        return asyncio.run(scenario())
    finally:
        pool.shutdown()


def assert_alone_equivalent(served: ServedModel, clips: torch.Tensor, share: Execution) -> None:
    """``share`` is what ``clips`` give when run alone: logits, executed GFLOPs per clip, policy."""
    alone = served.loaded.model.execute(clips)
    torch.testing.assert_close(share.logits, alone.logits, rtol=1e-4, atol=1e-5)
    assert share.executed_gflops == alone.executed_gflops  # exactly: counted per clip
    assert share.full_gflops == alone.full_gflops
    assert share.policy == alone.policy


# ---------------------------------------------------------------- the batcher on real models


@pytest.mark.parametrize("name", [STATIC, ADAPTIVE])
def test_requests_sent_together_share_one_pass_and_each_gets_its_own_answer(repository: Path, name: str) -> None:
    served = served_model(repository, name)
    jobs = [(served, random_clips(served, count, seed)) for seed, count in enumerate((1, 3, 2))]
    results = run_concurrently(jobs)
    assert [result.batch_size for result in results] == [3, 3, 3]
    assert len({result.inference_ms for result in results}) == 1  # one forward pass
    for (_, clips), result in zip(jobs, results, strict=True):
        assert_alone_equivalent(served, clips, result.execution)
    if name == ADAPTIVE:  # the clips took different decisions, so a mix-up would show (in what ran, the
        # executor may compute them alike: a union or dense)
        decided = [gflops for result in results for gflops in result.execution.policy_gflops]
        assert len(set(decided)) > 1


def test_each_request_gets_its_own_executed_flops_under_clip_specific_levels(repository: Path) -> None:
    """The execution-aware AdaFuse runs each clip's levels as that clip's own calls: a request's executed GFLOPs
    and policy are exactly what its clips cost alone, whatever its batch mates chose."""
    served = served_model(repository, PREFIX)
    jobs = [(served, random_clips(served, count, seed) * scale) for seed, (count, scale) in enumerate(((1, 1), (2, 4)))]
    results = run_concurrently(jobs)
    assert [result.batch_size for result in results] == [2, 2]  # two requests in one pass
    for (_, clips), result in zip(jobs, results, strict=True):
        assert_alone_equivalent(served, clips, result.execution)
    executed = [gflops for result in results for gflops in result.execution.executed_gflops]
    assert len(set(executed)) > 1  # the clips ran different levels, so a shared or swapped figure would show
    assert all(entry == "prefix/prefix" for result in results for entry in result.execution.policy[0].executed)


def test_a_per_clip_family_runs_its_requests_alone(repository: Path) -> None:
    served = served_model(repository, PER_CLIP)
    assert not served.batchable
    jobs = [(served, random_clips(served, 1, seed)) for seed in range(3)]
    results = run_concurrently(jobs)
    assert [result.batch_size for result in results] == [1, 1, 1]
    for (_, clips), result in zip(jobs, results, strict=True):
        assert_alone_equivalent(served, clips, result.execution)


def test_batches_never_mix_shapes_or_versions_and_respect_the_size_limit(repository: Path) -> None:
    first, second = served_model(repository, STATIC), served_model(repository, STATIC)  # two loads: two versions
    short = torch.randn(1, 3, 4, 64, 64)  # TSN takes any frame count: another clip shape for the same version
    jobs = [(first, random_clips(first, 1, seed)) for seed in range(5)] + [(second, random_clips(second, 1, 9))]
    jobs.append((first, short))
    results = run_concurrently(jobs, max_batch_size=2)
    assert [result.batch_size for result in results] == [2, 2, 2, 2, 1, 1, 1]
    for (served, clips), result in zip(jobs, results, strict=True):
        assert_alone_equivalent(served, clips, result.execution)


def test_a_request_larger_than_the_limit_runs_whole_and_alone(repository: Path) -> None:
    served = served_model(repository, STATIC)
    jobs = [(served, random_clips(served, 3, 0)), (served, random_clips(served, 1, 1))]
    results = run_concurrently(jobs, max_batch_size=2)
    assert [(result.batch_size, result.execution.logits.shape[0]) for result in results] == [(1, 3), (1, 1)]


def test_with_batching_off_every_request_runs_alone(repository: Path) -> None:
    served = served_model(repository, STATIC)
    jobs = [(served, random_clips(served, 1, seed)) for seed in range(3)]
    results = run_concurrently(jobs, batching=False)
    assert [result.batch_size for result in results] == [1, 1, 1]


def test_a_batch_waits_for_announced_requests_and_for_no_one_else(repository: Path) -> None:
    """A lone request leaves at once; a batch waits for a request still decoding, and stops waiting when that
    request gives up (its video was bad): each well before the window closes."""
    served = served_model(repository, STATIC)
    pool = SlotPool(slots=2)
    batcher = Batcher(pool, Settings(batch_window_ms=LONG_WINDOW_MS))
    decoding_s = 0.2

    async def request(seed: int, decode_s: float = 0.0, submits: bool = True) -> BatchResult | None:
        with batcher.expecting(served, served.backend()):
            await asyncio.sleep(decode_s)
            if not submits:
                return None
            return await batcher.execute(served, served.backend(), random_clips(served, 1, seed), deadline_in(60))

    async def scenario() -> tuple[BatchResult | None, ...]:
        alone = await request(0)
        joined, late = await asyncio.gather(request(1), request(2, decoding_s))
        waited, _ = await asyncio.gather(request(3), request(4, decoding_s, submits=False))
        return alone, joined, late, waited

    try:
        alone, joined, late, waited = asyncio.run(scenario())
    finally:
        pool.shutdown()
    assert alone and joined and late and waited
    short_of_window = LONG_WINDOW_MS / 2
    assert alone.batch_size == 1 and alone.queue_ms < short_of_window
    assert joined.batch_size == late.batch_size == 2
    assert decoding_s * 1000 * 0.75 < joined.queue_ms < short_of_window
    assert waited.batch_size == 1 and decoding_s * 1000 * 0.75 < waited.queue_ms < short_of_window


def test_split_execution_hands_out_consecutive_clips(repository: Path) -> None:
    served = served_model(repository, ADAPTIVE)
    execution = served.loaded.model.execute(random_clips(served, 6, 0))
    parts = split_execution(execution, [1, 3, 2])
    assert torch.equal(torch.cat([part.logits for part in parts]), execution.logits)
    assert [gflops for part in parts for gflops in part.executed_gflops] == execution.executed_gflops
    assert [policy for part in parts for policy in part.policy or []] == execution.policy
    assert {part.full_gflops for part in parts} == {execution.full_gflops}


# ---------------------------------------------------------------- through the server


def test_concurrent_predictions_over_http_match_unbatched_ones(repository: Path, h264_video: Path) -> None:
    video = h264_video.read_bytes()

    def predict(client: httpx.Client) -> dict:
        response = client.post(f"/v1/models/{ADAPTIVE}/predict", files={"file": ("clip.mp4", video)})
        assert response.status_code == 200, response.text
        return response.json()

    unbatched = Settings(model_repository=repository, models=[ADAPTIVE], batching=False)
    with serving(create_app(unbatched)) as client:
        alone = predict(client)
    assert alone["batch_size"] == 1
    batched = Settings(model_repository=repository, models=[ADAPTIVE], batch_window_ms=WINDOW_MS)
    with serving(create_app(batched)) as client, ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda _: predict(client), range(4)))
    assert max(body["batch_size"] for body in together) > 1
    for body in together:
        # The same decisions and what they cost by the paper's count; what ran may differ, since the executor
        # computes the channels of the whole batch together when its cost model says that is faster.
        flops, alone_flops = body["flops"], alone["flops"]
        for key in ("policy_gflops", "full_gflops", "policy_saving"):
            assert flops[key] == alone_flops[key]
        assert flops["policy_gflops"] <= flops["executed_gflops"] * (1 + 1e-9)
        assert flops["executed_gflops"] <= flops["full_gflops"] * (1 + 1e-9)
        assert [{**p, "executed": []} for p in body["policy"]] == [{**p, "executed": []} for p in alone["policy"]]
        assert [p["index"] for p in body["predictions"]] == [p["index"] for p in alone["predictions"]]
        scores = [p["score"] for p in body["predictions"]]
        assert scores == pytest.approx([p["score"] for p in alone["predictions"]], abs=1e-5)
