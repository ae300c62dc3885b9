"""Service settings: ``CLIPWISE_*`` environment variables, overridden by ``clipwise serve`` flags.

Every field is an environment variable (``model_repository`` -> ``CLIPWISE_MODEL_REPOSITORY``) and a flag
of ``clipwise serve`` (``--model-repository``); its description is the flag's help. This module imports
nothing heavy: the command line reads it to build its flags.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

VERSION = version("clipwise")  # the one source is pyproject.toml
BUNDLED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
MIB = 1 << 20
MIN_TOKEN_LENGTH = 16
# The environment of a Ray node serving Clipwise, set where the node starts (``ray start``, or the process that
# starts a local instance): its HTTP proxy installs ``clipwise.service.ray_proxy.proxy_middlewares``.
RAY_PROXY_ENVIRONMENT = {
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "clipwise.service.ray_proxy:proxy_middlewares",
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray reports usage to its authors by default; Clipwise sends nothing
}
# A Ray instance on this machine alone also keeps Ray's own servers on loopback (Ray's single-machine mode);
# Ray reads this when it is imported, so it is set before.
RAY_LOCAL_ENVIRONMENT = RAY_PROXY_ENVIRONMENT | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class Settings(BaseSettings):
    """How one Clipwise server runs."""

    model_config = SettingsConfigDict(env_prefix="CLIPWISE_", frozen=True)

    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="TCP port of the Open Inference Protocol over gRPC, as Triton's (0: off)"
    )
    model_repository: Path = Field(BUNDLED_REPOSITORY, description="model repository directory (<model>/<version>/...)")
    models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="models to load at startup, comma-separated (default: every model in the repository)"
    )
    max_upload_mb: float = Field(200.0, gt=0, description="largest accepted upload (or binary v2 request body), MiB")
    max_json_mb: float = Field(
        16.0,
        gt=0,
        description="largest accepted v2 request body in JSON (its values take about ten times their size once "
        "parsed), MiB; at most --max-upload-mb",
    )
    max_duration_s: float = Field(600.0, gt=0, description="longest accepted video, seconds")
    max_pixels: int = Field(4096 * 2160, gt=0, description="largest accepted frame, width x height")
    decode_timeout_s: float = Field(
        30.0, gt=0, description="wall-time limit of decoding one upload, checked at every packet, seconds"
    )
    decode_workers: int | None = Field(
        None,
        ge=0,
        description="processes uploads are decoded in, started once, so a crash in the decoder costs one request "
        "(default: --max-concurrent-inferences; 0: decode in the server process, unisolated)",
    )
    decode_deadline_s: float = Field(
        45.0,
        gt=0,
        description="hard wall-time limit of one decode in its worker process: past it the worker is killed and "
        "replaced and the request answered 504, seconds (decoding stuck where --decode-timeout-s cannot reach)",
    )
    max_concurrent_inferences: int = Field(
        2, ge=1, description="jobs (decoding one upload, or running one batch) at the same time; the others wait"
    )
    decode_threads: int | None = Field(
        None,
        ge=1,
        description="threads decoding may use at once across requests (and decode workers); a request decodes on its "
        "own thread plus helpers while some are free, one per run of frames between seeks (default: the CPUs this "
        "process may use)",
    )
    max_pending_requests: int = Field(
        16,
        ge=1,
        description="inference requests held at once (receiving, waiting, decoding, running); "
        "more are refused at once with 503 and Retry-After",
    )
    upload_timeout_s: float = Field(
        60.0, gt=0, description="time a client has to send its whole upload (or v2 request body), seconds"
    )
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="time a prediction has once its upload is received: waiting for a slot, decoding, inference",
    )
    batching: bool = Field(True, description="run requests for the same model that arrive together as one batch")
    batch_window_ms: float = Field(
        5.0, ge=0, le=1000, description="how long the first request of a batch waits for others to join, ms"
    )
    max_batch_size: int = Field(
        32, ge=1, description="most clips (views) in one batch; a request is never split, a larger one runs alone"
    )
    admin_token: SecretStr | None = Field(
        None,
        description=f"bearer token of the model management routes (at least {MIN_TOKEN_LENGTH} characters; "
        "unset: the routes answer 403)",
    )
    watch: bool = Field(False, description="poll the repository and load new versions of served models")
    watch_interval_s: float = Field(5.0, gt=0, description="seconds between two polls of the repository (--watch)")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's own)")
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="device the models run on: cpu, cuda or cuda:N (startup fails at once where it does not exist)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="logging level")

    @field_validator("models", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()] or None
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # CLIPWISE_ADMIN_TOKEN= (e.g. from compose) means no token

    @field_validator("admin_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"the admin token must have at least {MIN_TOKEN_LENGTH} characters")
        return token

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_json_bytes(self) -> int:
        return min(int(self.max_json_mb * MIB), self.max_upload_bytes)


# RayServeSettings fields named among Settings' ones (flags --ray-*, Ray Serve application arguments ray_*)
RAY_FIELD_PREFIX = "ray_"


class RayServeSettings(BaseSettings):
    """How ``clipwise serve --engine ray`` deploys the app on Ray Serve (``clipwise.service.ray_serve``).

    Each replica is sized by ``Settings``: ``torch_threads`` CPUs (1 when unset), ``max_pending_requests``
    requests at once, autoscaling aiming at ``max_concurrent_inferences`` ongoing requests per replica.
    """

    model_config = SettingsConfigDict(env_prefix="CLIPWISE_RAY_", frozen=True)

    address: str | None = Field(
        None,
        description="Ray cluster to deploy to, host:port of its head (the app then keeps running there); "
        "unset: start a Ray instance on this machine and serve until interrupted",
    )
    replicas: int = Field(1, ge=1, description="replicas to start with (the fewest, when autoscaling)")
    max_replicas: int | None = Field(
        None, ge=1, description="most replicas: above --ray-replicas, Ray Serve autoscales on ongoing requests"
    )
    gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves")
    surge_percent: int = Field(
        0,
        ge=0,
        le=100,
        description="extra replicas a rolling update may start, in percent of the replicas (0: stop an old replica, "
        "then start its replacement; 100: old ones serve until every replacement is ready)",
    )

    @field_validator("max_replicas")
    @classmethod
    def _not_below_replicas(cls, max_replicas: int | None, info: ValidationInfo) -> int | None:
        if max_replicas is not None and max_replicas < info.data.get("replicas", 1):
            raise ValueError("max_replicas must be at least replicas")
        return max_replicas
