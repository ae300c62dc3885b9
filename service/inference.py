"""One prediction, start to end, in a worker thread: decode and sample the views, run the model, report.

Views are the ``clips`` temporal clips x ``crops`` spatial crops of the video, run as one batch. The
video-level scores are the softmax probabilities averaged over the views (TSN / PySlowFast multi-view
testing average scores, not logits). FLOPs are summed over the views: the request's cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from models.base import Execution
from models.checkpoint import LoadedVersion
from models.policy import Policy
from service.config import Settings
from service.schemas import ClassScore, FlopsReport, VideoReport
from video import ClipSpec, DecodeLimits, LoadedClips, load_clips

BACKEND: Literal["torch"] = "torch"  # the only runtime until export/ adds ONNX Runtime


@dataclass
class Classification:
    """What a worker thread hands back to the request."""

    predictions: list[ClassScore]
    flops: FlopsReport
    policy: list[Policy] | None
    video: VideoReport
    decode_ms: float
    preprocess_ms: float
    inference_ms: float


def decode_limits(settings: Settings) -> DecodeLimits:
    """The video package's limits for one upload."""
    return DecodeLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_duration_s=settings.max_duration_s,
        max_pixels=settings.max_pixels,
        decode_timeout_s=settings.decode_timeout_s,
    )


def classify(
    served: LoadedVersion, data: bytes, *, clips: int, crops: int, top_k: int, limits: DecodeLimits
) -> Classification:
    """Top-k classes of an uploaded video; raises ``video.VideoError`` for a video that cannot be used."""
    spec = ClipSpec(**served.manifest.preprocessing.model_dump())
    views = load_clips(data, spec, clips=clips, crops=crops, limits=limits)
    started = time.perf_counter()
    execution = served.model.execute(views.clips)
    inference_ms = (time.perf_counter() - started) * 1000
    return Classification(
        predictions=top_classes(execution.logits, served.manifest.labels, top_k),
        flops=flops_report(execution),
        policy=execution.policy,
        video=video_report(views),
        decode_ms=views.decode_ms,
        preprocess_ms=views.preprocess_ms,
        inference_ms=inference_ms,
    )


def top_classes(logits: torch.Tensor, labels: list[str], k: int) -> list[ClassScore]:
    """The ``k`` best classes of the view-averaged softmax scores of (views, classes) logits."""
    scores, indices = logits.float().softmax(dim=-1).mean(dim=0).topk(k)
    return [
        ClassScore(label=labels[index], index=index, score=score)
        for score, index in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


def flops_report(execution: Execution) -> FlopsReport:
    executed = sum(execution.executed_gflops)
    full = execution.full_gflops * len(execution.executed_gflops)
    return FlopsReport(executed_gflops=executed, full_gflops=full, saving=1 - executed / full if full else 0.0)


def video_report(views: LoadedClips) -> VideoReport:
    info = views.info
    return VideoReport(
        duration_s=info.duration_s,
        fps=info.fps,
        width=info.width,
        height=info.height,
        codec=info.codec,
        num_frames=info.num_frames,
        frames_decoded=views.frames_decoded,
        frame_indices=views.frame_indices,
        truncated=views.truncated,
    )


def warm_up(served: LoadedVersion) -> None:
    """One inference on a blank view, so the first request does not pay for lazy initialisation.

    It also caches the model's full-compute GFLOPs at the served input size: counting them runs the model
    with its parameters swapped for meta tensors, which must not happen while requests run on it.
    """
    spec = served.manifest.preprocessing
    served.model.execute(torch.zeros(1, 3, spec.frames, spec.crop_size, spec.crop_size))
