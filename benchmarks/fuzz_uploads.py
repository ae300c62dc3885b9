"""Fuzzing a real server with thousands of mutated uploads: every answer a 2xx or a JSON 4xx, the server never lost.

Serves ``tsn_r18_tiny`` (a fresh untrained version) on loopback from this process, with its decode workers,
under the decode limits of ``tests/edge_cases.py``; sends ``--count`` mutants (``tests/fuzzing.py``: 9 videos
of 5 containers and 5 codecs, each with one mutation — random bytes, metadata tags, codec identifiers,
truncation, header fields) made from ``--seed``, one client after another. Every ``--check-every`` uploads,
and at the end, the server must be ready and a good clip must get the answer its version gives in this
process.

Prints the count, the seed, the time taken, the answers by status and mutation, and every wrong answer (a
5xx, a 4xx without the JSON error body, a lost server, a wrong prediction), each with its mutant's number to
reproduce it. Exits 1 when there is one.

Run: ``.venv/bin/python benchmarks/fuzz_uploads.py --count 5000 --seed 26``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import httpx
import torch

from clipwise.models import create_model
from clipwise.models.checkpoint import load_version, save_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.service.local import serve_in_thread, wait_until_ready

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from answers import in_process_scores, wrong_answer  # noqa: E402 - test support, beside the tests
from edge_cases import LIMITS, coded_video  # noqa: E402
from fuzzing import corpus, mutants, unexpected_answer  # noqa: E402

MODEL = "tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(5)]
PREDICT = f"/v1/models/{MODEL}/predict"


def still_serving(client: httpx.Client, good: bytes, expected: dict[int, list[float]]) -> str | None:
    """Why the server is not serving right (not ready, or a wrong answer to a good clip), or None."""
    try:
        if client.get("/readyz").status_code != 200:
            return "the server is not ready"
        response = client.post(PREDICT, params={"top_k": len(LABELS)}, files={"file": ("clip.mp4", good)})
    except httpx.HTTPError as error:
        return f"the server is lost: {error!r}"
    if response.status_code != 200:
        return f"a good clip got {response.status_code}: {response.text[:200]}"
    return wrong_answer(response.json(), expected)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="mutated uploads to send")
    parser.add_argument("--seed", type=int, default=26, help="seed of the mutants")
    parser.add_argument("--check-every", type=int, default=500, help="uploads between two checks of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as repository:
        torch.manual_seed(0)
        save_version(create_model(MODEL, num_classes=len(LABELS)), LABELS, Path(repository), MODEL, trained=False)
        served, good = load_version(Path(repository), MODEL), coded_video()
        expected = {served.version: in_process_scores(served, good, limits=LIMITS)}
        settings = Settings(
            model_repository=Path(repository),
            max_upload_mb=1,
            max_pixels=LIMITS.max_pixels,
            decode_timeout_s=LIMITS.decode_timeout_s,
            log_level="error",
        )
        with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url, timeout=120) as client:
            wait_until_ready(url)
            wrong, statuses, started = [], Counter(), time.perf_counter()
            for number, mutant in enumerate(islice(mutants(corpus(), args.seed), args.count)):
                try:
                    response = client.post(PREDICT, files={"file": ("upload", mutant.data)})
                except httpx.HTTPError as error:
                    wrong.append(f"mutant {number} ({mutant.source}, {mutant.mutation}): no answer: {error!r}")
                    continue
                statuses[f"{response.status_code} {mutant.mutation}"] += 1
                if (problem := unexpected_answer(response)) is not None:
                    wrong.append(f"mutant {number} ({mutant.source}, {mutant.mutation}): {problem}")
                if (number + 1) % args.check_every == 0 or number + 1 == args.count:
                    if (problem := still_serving(client, good, expected)) is not None:
                        wrong.append(f"after mutant {number}: {problem}")
            elapsed = time.perf_counter() - started
    print(f"{args.count} mutated uploads, seed {args.seed}, {elapsed:.1f} s ({args.count / elapsed:.0f} a second)")
    for key, count in sorted(statuses.items()):
        print(f"  {key:28} {count}")
    print(f"wrong answers: {len(wrong)}")
    for line in wrong:
        print(f"  {line}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
