"""A policy forced in one thread never leaks into a request running on the same model in another thread.

Every adaptive family forces policies through ``clipwise.models.base.forcing`` (a context variable). Each case runs
two threads on one model: A forces a policy and holds it while B runs unforced; both then record what they
ran. B must get the policy the model chooses alone, A the forced one (both computed serially first).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import pytest
import torch

from clipwise.models import VideoClassifier, create_model

FORCED: dict[str, Callable[[VideoClassifier], contextlib.AbstractContextManager]] = {
    "adafuse_tsn_r18_tiny": lambda model: model.full_compute(),
    "ada3d_i3d_r50_tiny": lambda model: model.force_saving(0.6),
    "fusion_template_densenet121_tiny": lambda model: model.use_strategy("S"),
}


def policy_of(model: VideoClassifier, clip: torch.Tensor) -> list[dict]:
    with torch.inference_mode():
        _, policy = model.forward_with_policy(clip)
    return [entry.model_dump() for entry in policy]


@pytest.mark.parametrize("name", sorted(FORCED))
def test_a_forced_policy_stays_in_its_thread(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    clip = torch.randn(1, 3, model.config.frames, model.config.size, model.config.size)
    alone = policy_of(model, clip)
    with FORCED[name](model):
        forced = policy_of(model, clip)
    assert forced != alone  # the case can tell the two apart

    entered, b_done = threading.Event(), threading.Event()
    seen: dict[str, list[dict]] = {}

    def forcing_thread() -> None:
        with FORCED[name](model):
            entered.set()
            b_done.wait(timeout=60)
            seen["A"] = policy_of(model, clip)

    def plain_thread() -> None:
        entered.wait(timeout=60)
        seen["B"] = policy_of(model, clip)
        b_done.set()

    threads = [threading.Thread(target=forcing_thread), threading.Thread(target=plain_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert seen == {"A": forced, "B": alone}
