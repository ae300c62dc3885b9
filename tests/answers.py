"""What a prediction must say: the version that answered, and that version's top-1 and scores when it runs in this
process on the same video with the service's preprocessing (``clipwise.video.load_clips`` with the version's
``ClipSpec``,
then ``model.execute``, softmax averaged over the views). Shared by the HTTP tests and ``benchmarks/load.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clipwise.models.checkpoint import LoadedVersion
from clipwise.video import ClipSpec, DecodeLimits, load_clips

SCORE_TOLERANCE = 1e-4
DEFAULT_LIMITS = DecodeLimits()


def in_process_scores(
    version: LoadedVersion, video: bytes, *, clips: int = 1, limits: DecodeLimits = DEFAULT_LIMITS
) -> list[float]:
    """The class scores ``version`` gives ``video`` (``clips`` temporal clips, one crop), by class index."""
    spec = ClipSpec(**version.manifest.preprocessing.to_dict())
    views = load_clips(video, spec, clips=clips, limits=limits)
    return version.model.execute(views.clips).logits.softmax(dim=-1).mean(dim=0).tolist()


def wrong_answer(
    body: Mapping[str, Any], expected: Mapping[int, Sequence[float]], tolerance: float = SCORE_TOLERANCE
) -> str | None:
    """Why the JSON body of a prediction is not what its version gives in-process, or None when it is.
    ``expected``: the in-process scores of every version that may answer; the request asked for every class
    (``top_k`` = the number of classes). A top-1 other than the in-process one is wrong unless the two scores
    are within ``tolerance`` of each other (a tie)."""
    version = body["version"]
    if version not in expected:
        return f"version {version}, not one of {sorted(expected)}"
    scores = expected[version]
    got = {prediction["index"]: prediction["score"] for prediction in body["predictions"]}
    if sorted(got) != list(range(len(scores))):
        return f"version {version}: scores of classes {sorted(got)}, not of all {len(scores)}"
    off = max(abs(got[index] - score) for index, score in enumerate(scores))
    if off > tolerance:
        return f"version {version}: scores off by {off:.1e}"
    top, best = body["predictions"][0]["index"], max(range(len(scores)), key=scores.__getitem__)
    if scores[best] - scores[top] > tolerance:
        return f"version {version}: top-1 class {top}, in-process {best}"
    return None
