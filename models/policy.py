"""What an adaptive model chose for one clip: the ``policy`` of an execution record.

The same pydantic models are the service's response schema, so OpenAPI documents every field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field


class ChannelUsage(BaseModel):
    """Fractions of gated channels kept (computed), reused (copied from the previous frame), skipped."""

    keep: float = Field(ge=0, le=1, description="fraction computed at this frame")
    reuse: float = Field(ge=0, le=1, description="fraction copied from the previous frame, not computed")
    skip: float = Field(ge=0, le=1, description="fraction set to zero, not computed")


class AdaFusePolicy(BaseModel):
    """AdaFuse: per-channel keep / reuse / skip decisions of every gated bottleneck."""

    family: Literal["adafuse"] = "adafuse"
    overall: ChannelUsage = Field(description="over all gated channels, blocks and frames")
    blocks: list[ChannelUsage] = Field(description="one entry per gated block, input to output")
    frames: list[ChannelUsage] = Field(description="one entry per input frame")
    gflops: float = Field(ge=0, description="GMACs of this clip's decisions by the paper's count (Eq. 5)")
    executed: list[str] = Field(
        default_factory=list,
        description="per gated block, how the executor ran conv1 / conv2 for this clip's batch: 'dense' (every "
        "channel, the policy applied to the result), 'union' (the channels any frame needs), 'clips' (per clip), "
        "'sets' (frames with equal channel sets together), 'triton' (the CUDA kernels: every frame its own "
        "channels); from an exported graph, 'union' or 'dense' as its nodes chose",
    )


class Ada3DPolicy(BaseModel):
    """Ada3D: which frames the selection net kept and which 3D stages stayed 3D."""

    family: Literal["ada3d"] = "ada3d"
    frames_kept: list[int] = Field(description="indices (into the sampled clip) of the frames kept")
    stages_3d: list[bool] = Field(description="per switchable stage: true = 3D kernels, false = centre slice")
    frame_fraction: float = Field(ge=0, le=1, description="kept frames / sampled frames")
    stage_fraction: float = Field(ge=0, le=1, description="3D stages on / switchable stages")
    gflops: float = Field(
        ge=0,
        description="GMACs of this plan by the paper's count: the selection net, the backbone on the kept "
        "frames with the chosen stages 3D",
    )


class FusionPolicy(BaseModel):
    """Probabilistic fusion: the unit (S, ST or S+ST) each template layer runs."""

    family: Literal["fusion"] = "fusion"
    strategy: list[Literal["S", "ST", "S+ST"]] = Field(description="one unit per template layer")


Policy = Annotated[AdaFusePolicy | Ada3DPolicy | FusionPolicy, Field(discriminator="family")]


def policy_fractions(policy: AdaFusePolicy | Ada3DPolicy | FusionPolicy) -> dict[str, float]:
    """The fractions that sum up one clip's policy, by name, to average or histogram over clips.

    AdaFuse: keep / reuse / skip over all gated channels; Ada3D: frame_fraction and stage_fraction;
    fusion: the share of template layers running each unit (S, ST, S+ST).
    """
    if isinstance(policy, AdaFusePolicy):
        return policy.overall.model_dump()
    if isinstance(policy, Ada3DPolicy):
        return {"frame_fraction": policy.frame_fraction, "stage_fraction": policy.stage_fraction}
    return {unit: policy.strategy.count(unit) / len(policy.strategy) for unit in ("S", "ST", "S+ST")}
