"""Request and response models of the HTTP API (pydantic v2); their descriptions are the OpenAPI docs."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_serializer

from clipwise.models.base import Preprocessing
from clipwise.models.policy import Policy
from clipwise.service.backends import BackendChoice, BackendLabel, BackendName, BackendRequest
from clipwise.video import CROP_COUNTS

MAX_CLIPS = 10
MAX_VIEWS = MAX_CLIPS * max(CROP_COUNTS)  # the most clips one request runs: /v1's views, /v2's N


def _digits_to_int(value: object) -> object:
    """Query strings arrive as text; an int Literal only matches ints."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


CropCount = Annotated[Literal[1, 3], BeforeValidator(_digits_to_int)]


class PredictQuery(BaseModel):
    """Query parameters of a prediction."""

    model_config = {"extra": "forbid"}

    version: int | None = Field(
        None, ge=1, description="model version to use; it must be the loaded one (default: the loaded one)"
    )
    top_k: int = Field(5, ge=1, description="number of classes to return, at most the model's class count")
    clips: int = Field(
        1, ge=1, le=MAX_CLIPS, description="temporal clips sampled across the video (views = clips x crops)"
    )
    crops: CropCount = Field(1, description="spatial crops per clip: 1 (centre) or 3 (left/centre/right)")
    backend: BackendRequest | None = Field(
        None,
        description="runtime to execute the model on: torch, onnxruntime or openvino (default, or auto: the one "
        "chosen when the version loaded)",
    )


class ClassScore(BaseModel):
    """One class of the top-k."""

    label: str = Field(description="class name, from the model's manifest")
    index: int = Field(ge=0, description="class index in the model's output")
    score: float = Field(ge=0, le=1, description="softmax probability, averaged over the views")


class FlopsReport(BaseModel):
    """Compute of this request, in GFLOPs as the papers count them (multiply-accumulates), summed over views."""

    executed_gflops: float = Field(
        ge=0,
        description="GMACs of the computations that actually ran, all views together: for adaptive models what "
        "the executor chose to run, padding channels and dense fallbacks included",
    )
    policy_gflops: float = Field(
        ge=0,
        description="GMACs the policy's decisions cost by the paper's count (AdaFuse: Eq. 5; Ada3D: the selection "
        "net and the backbone on the kept frames and stages), all views together; executed_gflops for static models",
    )
    full_gflops: float = Field(ge=0, description="GMACs with nothing skipped, all views together")
    saving: float = Field(le=1, description="1 - executed / full: the fraction of compute really skipped")
    policy_saving: float = Field(le=1, description="1 - policy / full: the fraction the policy asked to skip")


class VideoReport(BaseModel):
    """The uploaded video and what was decoded from it."""

    duration_s: float = Field(ge=0, description="duration of the video stream, seconds")
    fps: float = Field(ge=0, description="average frame rate")
    width: int = Field(ge=0, description="frame width, pixels")
    height: int = Field(ge=0, description="frame height, pixels")
    codec: str = Field(description="codec of the video stream (e.g. h264, vp9)")
    num_frames: int = Field(ge=0, description="frames in the video stream, counted from its packets")
    frames_decoded: int = Field(ge=0, description="frames the decoder produced to serve this request")
    frame_indices: list[list[int]] = Field(description="per temporal clip, the indices of the frames sampled")
    truncated: bool = Field(description="true when the stream broke mid-way and the frames before it were used")
    rotation: int = Field(
        description="degrees counterclockwise the frames were turned to show upright (the stream's display "
        "matrix: 0, 90, 180 or 270); width and height are as stored"
    )


class TimingReport(BaseModel):
    """Wall time of each stage of this request, milliseconds."""

    read: float = Field(ge=0, description="receiving the upload")
    queue: float = Field(ge=0, description="waiting for inference slots and for the batch to form")
    decode: float = Field(ge=0, description="demuxing and decoding the sampled frames")
    preprocess: float = Field(ge=0, description="resizing, cropping and normalising the views")
    inference: float = Field(ge=0, description="running the model on every view")
    total: float = Field(ge=0, description="from the request's arrival to the response")

    @field_serializer("*")
    def _microseconds(self, value: float) -> float:
        return round(value, 3)


class PredictResponse(BaseModel):
    """The classes of one video, what computing them cost, and what the model decided to skip."""

    model: str = Field(description="model name")
    version: int = Field(ge=1, description="model version that served the request")
    predictions: list[ClassScore] = Field(description="top-k classes, best first")
    flops: FlopsReport = Field(description="compute of this request, summed over its views")
    policy: list[Policy] | None = Field(
        description="adaptive models: the policy executed for each view, in view order (clip-major: view i is "
        "clip i // crops, crop i % crops); null for static models"
    )
    video: VideoReport = Field(description="the uploaded video and the frames sampled from it")
    timing_ms: TimingReport = Field(description="wall time of each stage, milliseconds")
    backend: BackendLabel = Field(
        description="runtime that executed the model: torch or onnxruntime on the CPU; torch-cuda, "
        "onnxruntime-cuda or onnxruntime-tensorrt (ONNX Runtime's provider) on a GPU"
    )
    batch_size: int = Field(ge=1, description="requests that ran in the same forward pass as this one (1: alone)")
    full_compute_ms_per_view: float | None = Field(
        description="time of one view through this model's full-compute path (nothing skipped) on this backend, "
        "measured on this server when the version loaded: compare it with timing_ms.inference / views to see "
        "what a FLOPs saving saves in time; null where the backend was not timed"
    )
    request_id: str = Field(description="id of this request, also in the X-Request-ID header and the logs")


class ModelSummary(BaseModel):
    """A model being served."""

    name: str = Field(description="model name: the directory in the repository")
    version: int = Field(ge=1, description="the loaded version, the one predictions use by default")
    family: str = Field(description="model family (tsn, tsm, i3d, adafuse, ...)")
    architecture: str = Field(description="registry preset the weights belong to")
    full_gflops: float = Field(ge=0, description="GMACs of one view with nothing skipped")
    trained: bool = Field(description="false for placeholder weights (random initialisation)")


class ModelList(BaseModel):
    """The models being served."""

    models: list[ModelSummary] = Field(description="every loaded model, by name")


class BackendChoiceReport(BaseModel):
    """Which backend serves a version by default, and why."""

    asked: BackendRequest = Field(description="the manifest's backend: auto (the fastest, timed at load) or one")
    chosen: BackendName = Field(description="the backend serving requests that name none (or ask for auto)")
    timings_ms: dict[BackendName, float] = Field(
        description="with auto, per backend available, the median time of one clip measured when the version "
        "loaded (interleaved rounds); empty when nothing was timed"
    )
    rounds: int = Field(ge=0, description="interleaved timing rounds run (0: none)")
    reason: str = Field(description="why this backend serves")

    @classmethod
    def of(cls, choice: BackendChoice) -> BackendChoiceReport:
        """The report of ``choice`` (its failure, if any, is in the reason)."""
        return cls(**asdict(choice), reason=choice.reason)


class ModelDetail(ModelSummary):
    """A served model with its manifest."""

    versions: list[int] = Field(description="versions present in the repository, ascending")
    labels: list[str] = Field(description="class names, by output index")
    preprocessing: Preprocessing = Field(description="how input views are sampled and transformed")
    input_shape: list[int] = Field(description="shape of one view: [channels, frames, height, width]")
    params_m: float = Field(ge=0, description="parameters, millions")
    kwargs: dict[str, Any] = Field(description="config fields the architecture was built with")
    metrics: dict[str, float] = Field(description="evaluation metrics recorded at training time")
    backend: BackendName = Field(description="runtime the version runs on by default (see backend_choice)")
    backends: list[BackendName] = Field(description="runtimes the version can run on (query parameter 'backend')")
    backend_choice: BackendChoiceReport = Field(description="how the default backend was chosen")
    created_at: datetime = Field(description="when the version was written")
    weights_sha256: str = Field(description="sha256 of weights.safetensors, checked at load time")
    full_compute_ms: dict[str, float] = Field(
        description="per backend, the time of one view through the full-compute path, measured on this server "
        "when the version loaded (after calibrating the adaptive executor)"
    )
    counterpart: CounterpartReport | None = Field(
        default=None,
        description="adaptive models whose manifest names one: the dense model of the same size a user would "
        "deploy instead, with its time per view on its default backend as measured when it loaded (null when "
        "the manifest names none; ms_per_view null while that model is not served)",
    )


class CounterpartReport(BaseModel):
    """The dense model an adaptive one is compared with."""

    name: str = Field(description="model name of the dense counterpart, in the same repository")
    backend: BackendName | None = Field(description="its default backend, whose time is given")
    ms_per_view: float | None = Field(description="its time of one view on that backend, measured at its load")


class LoadResponse(BaseModel):
    """The version now serving a model."""

    model: str = Field(description="model name")
    version: int = Field(ge=1, description="the version loaded, checked and warmed up, now serving")
    previous_version: int | None = Field(description="the version it replaced (null: the model was not served)")
    backends: list[BackendName] = Field(description="runtimes the version can run on")
    backend_choice: BackendChoiceReport = Field(description="the backend now serving by default, and why")
    load_ms: float = Field(ge=0, description="reading, checking and warming up the version, milliseconds")


class UnloadResponse(BaseModel):
    """The version no longer served."""

    model: str = Field(description="model name")
    version: int = Field(ge=1, description="the version unloaded; requests already running on it finish")


class VersionInfo(BaseModel):
    """One version directory of the repository."""

    version: int = Field(ge=1, description="version number")
    valid_manifest: bool = Field(description="the manifest exists and matches its schema (weights not checked)")
    problem: str | None = Field(description="why the manifest is not valid (null when it is)")
    architecture: str | None = Field(description="registry preset, from the manifest")
    trained: bool | None = Field(description="false for placeholder weights, from the manifest")
    metrics: dict[str, float] = Field(description="evaluation metrics recorded at training time")
    created_at: datetime | None = Field(description="when the version was written")
    backends: list[BackendName] = Field(
        description="runtimes it may run on: torch, and with model.onnx onnxruntime and openvino (where installed; "
        "not AdaFuse on openvino)"
    )
    default_backend: BackendRequest | None = Field(description="the backend its manifest names (auto: timed at load)")


class VersionList(BaseModel):
    """A model's versions in the repository."""

    model: str = Field(description="model name")
    served_version: int | None = Field(description="the version serving (null: not served)")
    versions: list[VersionInfo] = Field(description="every version directory, ascending")


class Liveness(BaseModel):
    """The process answers."""

    status: Literal["alive"] = Field(description="always 'alive'")


class Readiness(BaseModel):
    """Every default model is loaded and warmed up."""

    status: Literal["ready"] = Field(description="always 'ready' (not ready: 503 with an error body)")
    models: list[str] = Field(description="models being served")


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str = Field(description="stable machine-readable error code (see the error table of docs/serving.md)")
    message: str = Field(description="human-readable explanation")
    request_id: str = Field(description="id of the request, to find it in the logs")


class ErrorResponse(BaseModel):
    """Body of every error response."""

    error: ErrorDetail = Field(description="what went wrong")
