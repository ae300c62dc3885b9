"""Fuzzing through a real server: mutated uploads of several containers and codecs (``fuzzing``) each get a 2xx
or a JSON 4xx, the server stays ready, and a good clip still gets the answer its version gives in-process.

The mutants are seeded (``SEED``), so a failure names the mutant that reproduces it; ``benchmarks/fuzz_uploads.py``
runs thousands the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import httpx
import pytest
from answers import in_process_scores, wrong_answer
from edge_cases import LIMITS, coded_video
from fuzzing import corpus, mutants, unexpected_answer
from live_server import one_model_repository, serving

from clipwise.models.checkpoint import load_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(5)]
PREDICT = f"/v1/models/{MODEL}/predict"
SEED, COUNT = 26, 300

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_model_repository(tmp_path_factory.mktemp("fuzz") / "repository", MODEL, LABELS)


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[httpx.Client]:
    settings = Settings(
        model_repository=repository,
        max_upload_mb=1,
        max_pixels=LIMITS.max_pixels,
        decode_timeout_s=LIMITS.decode_timeout_s,
    )
    with serving(create_app(settings)) as client:
        yield client


def test_mutated_uploads_get_a_2xx_or_a_json_4xx_and_the_server_keeps_serving(
    client: httpx.Client, repository: Path
) -> None:
    wrong = []
    for number, mutant in enumerate(islice(mutants(corpus(), SEED), COUNT)):
        response = client.post(PREDICT, files={"file": ("upload", mutant.data)})
        problem = unexpected_answer(response)
        if problem is not None:
            wrong.append(f"mutant {number} (seed {SEED}, {mutant.source}, {mutant.mutation}): {problem}")
    assert not wrong, "\n".join(wrong)
    assert client.get("/readyz").status_code == 200
    good = coded_video()
    response = client.post(PREDICT, params={"top_k": len(LABELS)}, files={"file": ("clip.mp4", good)})
    assert response.status_code == 200, response.text
    served = load_version(repository, MODEL)
    assert wrong_answer(response.json(), {served.version: in_process_scores(served, good, limits=LIMITS)}) is None
