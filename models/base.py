"""The contract every Clipwise model follows, static and adaptive alike.

Input: clips as float tensors of shape (N, 3, T, H, W), normalised. Output of ``forward``: logits (N, K).
``execute`` runs one inference pass and returns the logits with an execution record: the MACs that pass
really executed per clip, the full-compute figure, and the policy the model chose (None for static
models).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field, TypeAdapter, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from torch import nn

from clipwise.models.flops import count_flops, track_macs
from clipwise.models.policy import Policy

_forced: ContextVar[Mapping[nn.Module, Any]] = ContextVar("clipwise_forced", default=MappingProxyType({}))


@contextlib.contextmanager
def forcing(forced: Mapping[nn.Module, Any]) -> Iterator[None]:
    """Inside the block, ``forced_on(module)`` is what ``forced`` maps ``module`` to: how adaptive models force a
    policy (full compute, a fixed plan, a strategy). Per context, like a context variable: other threads and
    asyncio tasks running the same model meanwhile see none of it, so concurrent requests stay correct."""
    token = _forced.set(MappingProxyType({**_forced.get(), **forced}))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_on(module: nn.Module) -> Any | None:
    """What the innermost ``forcing`` of this context maps ``module`` to, or None."""
    return _forced.get().get(module)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClipModelConfig:
    """Fields every family's config has; families subclass it and add their own."""

    num_classes: int = 400
    frames: int = 8
    size: int = 224
    sample_stride: int = 1  # dense sampling: frames between two samples (segment sampling ignores it)


@dataclass
class Execution:
    """What one inference pass computed and what it cost."""

    logits: torch.Tensor
    executed_gflops: list[float]  # per clip: the MACs of what ran (padding and dense fallbacks included)
    full_gflops: float  # one clip with nothing skipped
    policy: list[Policy] | None = None
    policy_gflops: list[float] | None = None  # per clip: what the policy's decisions cost by the paper's count

    def __post_init__(self) -> None:
        if self.policy_gflops is None:
            costs = [getattr(entry, "gflops", None) for entry in self.policy or []]
            known = self.policy is not None and all(cost is not None for cost in costs)
            self.policy_gflops = costs if known else list(self.executed_gflops)


@dataclass(frozen=True)
class Capabilities:
    """What code outside ``models`` needs to know of a family, declared by its class (as timm's
    ``pretrained_cfg``), so that export, the backends, batching and training never name a family.

    ``policy``: how the model's policy runs — ``"none"`` (a static network, or a fixed policy), ``"gated_pairs"``
    (per-channel gated conv pairs: exported as gated nodes to calibrate, run by the Triton kernels on CUDA, beyond
    OpenVINO), ``"clip_plans"`` (each clip its own frames and stages: exported for one clip, looped over a
    batch). ``batchable``: whether requests may share a forward pass. ``objective``: the training objective,
    the module ``clipwise.training.train_<objective>``.
    """

    policy: Literal["none", "gated_pairs", "clip_plans"] = "none"
    batchable: bool = True
    objective: str = "classifier"


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Preprocessing:
    """How a model's training clips were made; the service makes its inputs the same way. The one type of the
    models and the manifest (validated however it is made, ``dataclasses.replace`` included); ``video``'s
    ``ClipSpec``, which may not import ``models``, is made from ``to_dict()``."""

    sampling: Literal["segments", "dense"] = Field(
        description="segments: TSN, the centre frame of each of T equal segments; dense: T frames at a stride"
    )
    frames: int = Field(ge=1, le=256, description="frames per clip (T)")
    stride: int = Field(ge=1, le=64, description="dense sampling: frames between two samples")
    short_side: int = Field(ge=8, le=2048, description="frames are resized so their short side has this length")
    crop_size: int = Field(ge=8, le=2048, description="side of the square crop(s) taken after resizing")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="per-channel RGB mean subtracted (0..1 scale)")
    std: tuple[float, float, float] = Field(IMAGENET_STD, description="per-channel RGB standard deviation divided by")

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.crop_size > self.short_side:
            raise ValueError("crop_size must not exceed short_side")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types (``video.ClipSpec(**to_dict())``, the manifest's ``preprocessing``)."""
        return _PREPROCESSING.dump_python(self, mode="json")


_PREPROCESSING = TypeAdapter(Preprocessing)


class VideoClassifier(nn.Module):
    """Base class of every model in the zoo."""

    family: ClassVar[str] = ""
    sampling: ClassVar[str] = "segments"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: ClipModelConfig, preset: str = "") -> None:
        super().__init__()
        self.config = config
        self.preset = preset  # the registry name it was built as (create_model), which manifests record
        self._full_gflops: dict[tuple[int, int], float] = {}

    def forward_with_policy(self, clips: torch.Tensor) -> tuple[torch.Tensor, list[Policy] | None]:
        """Logits and the per-clip policy (models.policy) of an inference pass; static models have none."""
        return self(clips), None

    def full_compute(self) -> contextlib.AbstractContextManager:
        """Context in which an adaptive model keeps everything; static models need nothing."""
        return contextlib.nullcontext()

    def calibrate(self, frames: int | None = None, size: int | None = None) -> None:
        """Time, on this machine, the computations an adaptive model chooses between at run time, at this input
        size (default: the configured one); call it when a version loads. Static models have none."""

    def force_saving(self, fraction: float) -> contextlib.AbstractContextManager:
        """Context in which an adaptive model follows a fixed policy that skips about ``fraction`` of its
        full-compute MACs, the same for every clip (benchmarks and tests). Static models have no policy."""
        raise NotImplementedError(f"{type(self).__name__} has no policy to force")

    def full_gflops(self, frames: int | None = None, size: int | None = None) -> float:
        """GMACs of one clip with nothing skipped, at the given (default: configured) input size."""
        key = (frames or self.config.frames, size or self.config.size)
        if key not in self._full_gflops:
            self._full_gflops[key] = count_flops(self, *key).gflops
        return self._full_gflops[key]

    @torch.inference_mode()
    def execute(self, clips: torch.Tensor) -> Execution:
        """One inference pass over (N, 3, T, H, W) clips with its measured cost."""
        with track_macs(clips.shape[0]) as tracker:
            logits, policy = self.forward_with_policy(clips)
        full = self.full_gflops(clips.shape[2], clips.shape[-1])
        return Execution(logits=logits, executed_gflops=tracker.gflops, full_gflops=full, policy=policy)

    def preprocessing(self) -> Preprocessing:
        """The sampling and transforms this model is trained and served with."""
        size = self.config.size
        return Preprocessing(
            sampling=self.sampling,
            frames=self.config.frames,
            stride=self.config.sample_stride,
            short_side=round(size * 256 / 224),
            crop_size=size,
        )
