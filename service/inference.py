"""From a video upload to model input, and from an execution record to the report of a response.

Views are the ``clips`` temporal clips x ``crops`` spatial crops of the video, run as one batch. The
video-level scores are the softmax probabilities averaged over the views (TSN / PySlowFast multi-view
testing average scores, not logits). FLOPs are summed over the views: the request's cost.
"""

from __future__ import annotations

import torch

from clipwise.models.base import Execution
from clipwise.service.config import Settings
from clipwise.service.schemas import ClassScore, FlopsReport, VideoReport
from clipwise.video import DecodeLimits, LoadedClips


def decode_limits(settings: Settings) -> DecodeLimits:
    """The video package's limits for one upload."""
    return DecodeLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_duration_s=settings.max_duration_s,
        max_pixels=settings.max_pixels,
        decode_timeout_s=settings.decode_timeout_s,
    )


def top_classes(logits: torch.Tensor, labels: list[str], k: int) -> list[ClassScore]:
    """The ``k`` best classes of the view-averaged softmax scores of (views, classes) logits."""
    scores, indices = logits.float().softmax(dim=-1).mean(dim=0).topk(k)
    return [
        ClassScore(label=labels[index], index=index, score=score)
        for score, index in zip(scores.tolist(), indices.tolist(), strict=True)
    ]


def flops_report(execution: Execution) -> FlopsReport:
    executed, policy = sum(execution.executed_gflops), sum(execution.policy_gflops)
    full = execution.full_gflops * len(execution.executed_gflops)
    return FlopsReport(
        executed_gflops=executed,
        policy_gflops=policy,
        full_gflops=full,
        saving=1 - executed / full if full else 0.0,
        policy_saving=1 - policy / full if full else 0.0,
    )


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
        rotation=info.rotation,
    )
