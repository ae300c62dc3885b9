"""Forcing the partitions a gated pair runs, for tests: the executor itself runs the cheapest predicted ones.

``executing_partitions`` replaces ``clipwise.models.gating.choose_partitions`` inside the block: each convolution
runs the named partition where it is a candidate, else the cheapest of the others by a flat cost model (never
``sets``), as a test of a named partition needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

from clipwise.models import gating
from clipwise.models.gating_partitions import PARTITIONS, Candidates, ConvCost, PairCosts

ANY_COST = ConvCost(dense=(1.0, 1.0), gathered=(1.0, 1.0, 1.0))


def forced_choice(candidates: Candidates, name: str, cost: ConvCost = ANY_COST) -> str:
    """``name`` where it is a candidate; else the partition of least predicted time under ``cost``, ``sets``
    left out."""
    if candidates.offers(name):
        return name
    predictions = {other: candidates.predicted(other, cost) for other in candidates.counts if other != "sets"}
    return min(predictions, key=predictions.__getitem__)


@contextlib.contextmanager
def executing_partitions(conv1_partition: str, conv2_partition: str) -> Iterator[None]:
    """Every gated pair run inside the block computes conv1 and conv2 with the named partitions (of
    ``PARTITIONS``) where they are candidates."""
    for name in (conv1_partition, conv2_partition):
        if name not in PARTITIONS:
            raise ValueError(f"unknown partition {name!r}; known: {', '.join(PARTITIONS)}")

    def choose(candidates1: Candidates, candidates2: Candidates, costs: PairCosts) -> tuple[str, str]:
        return forced_choice(candidates1, conv1_partition), forced_choice(candidates2, conv2_partition)

    with mock.patch.object(gating, "choose_partitions", choose):
        yield
