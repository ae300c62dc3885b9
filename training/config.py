"""The options of a training run: one typed config from which ``clipwise train`` makes its flags and help.

Each field is an ``option``: its default, the help line of its flag, a metavar, and its group (the options
every run reads, then one group per family that has options of its own). A JSON config file may set any
field; validation turns paths into ``Path``, checks choices and rejects unknown keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

GENERAL, DATA, ADAFUSE, ADA3D, FUSION = "general", "data and model", "AdaFuse", "Ada3D", "fusion"


class ConfigError(ValueError):
    """Options that do not make a run: missing or unknown, contradicting the data, or the run directory."""


def option(default: Any, help: str, metavar: str | None = None, group: str = GENERAL) -> Any:
    """A field of ``TrainConfig`` with what its command-line flag shows (``metavar`` None: a switch)."""
    return Field(default, description=help, json_schema_extra={"metavar": metavar, "group": group})


class TrainConfig(BaseModel):
    """Everything a training run reads. A JSON config file may set any field; command-line flags win."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = option("", "registry preset to train (see `clipwise flops --help`)", "NAME", DATA)
    data: Path | None = option(None, "dataset directory: classes.txt and train / val lists (.txt or .csv)", "DIR", DATA)
    out: Path | None = option(
        None, "model directory REPO/NAME; the trained model becomes its next version", "REPO/NAME", DATA
    )
    run_dir: Path | None = option(None, "logs, metrics.csv, TensorBoard and resume state (default: runs/NAME)", "DIR")
    data_root: Path | None = option(
        None, "directory the video paths are relative to (default: each list's directory)", "DIR", DATA
    )
    init: tuple[Path, ...] = option(
        (), "start from these version directories and / or files (--init-source), matched by role", "PATH", DATA
    )
    init_source: str = option(
        "", "layout of --init files: torchvision (ImageNet ResNet, MobileNetV2), pytorchvideo, ...", "SOURCE", DATA
    )
    frames: int | None = option(None, "frames per clip (default: the preset's)", "T", DATA)
    size: int | None = option(None, "crop size in pixels (default: the preset's)", "S", DATA)
    model_args: dict[str, Any] = option(
        {}, "other fields of the preset's config, as JSON, e.g. '{\"decision_group\": 8}'", "JSON", DATA
    )
    flip: bool = option(False, "random horizontal flips (refused for direction-sensitive labels)", None, DATA)
    workers: int = option(2, "DataLoader worker processes per training process", "N", DATA)
    epochs: int = option(10, "epochs; Ada3D: of backbone pre-training (none with --init); fusion: with v-DropPath", "N")
    batch_size: int = option(8, "clips per batch and process", "N")
    lr: float = option(0.01, "peak learning rate", "LR")
    momentum: float = option(0.9, "SGD momentum", "M")
    weight_decay: float = option(1e-4, "weight decay of conv and linear weights", "WD")
    schedule: Literal["cosine", "step"] = option("cosine", "learning-rate schedule", "{cosine,step}")
    milestones: tuple[int, ...] = option(
        (), "step schedule: epochs of a phase where the rate drops x0.1 (default: 40% and 80%)", "E"
    )
    lr_warmup_epochs: float = option(0.0, "linear learning-rate warm-up, in epochs", "E")
    clip_grad_norm: float = option(20.0, "clip the gradient norm to this (0: off)", "NORM")
    device: str = option(
        "", "cpu, cuda (under torchrun: each process its own GPU) or cuda:N (default: cuda where available)", "D"
    )
    seed: int = option(0, "random seed", "S")
    resume: bool = option(False, "continue the run in --run-dir from its last epoch", None)
    flops_weight: float = option(0.1, "lambda of Eq. 6, per GFLOP", "LAMBDA", ADAFUSE)
    cost: Literal["flops", "latency"] = option(
        "flops", "Eq. 6's cost term: flops, or latency (the executor's calibrated time)", "{flops,latency}", ADAFUSE
    )
    latency_weight: float = option(
        1.0, "with --cost latency: lambda per unit of the gated pairs' time", "LAMBDA", ADAFUSE
    )
    policy_lr_scale: float = option(1.0, "the policy nets' learning rate, as a multiple of --lr", "X", ADAFUSE)
    gamma: float = option(1.0, "reward of a wrong prediction is -gamma (Eq. 4)", "GAMMA", ADA3D)
    selection_epochs: int = option(
        5, "epochs of the selection net trained as a classifier, before the policy", "N", ADA3D
    )
    policy_epochs: int = option(10, "epochs of selection-net training by REINFORCE, backbone frozen", "N", ADA3D)
    entropy_weight: float = option(0.01, "weight of the policies' entropy bonus in the policy stages", "BETA", ADA3D)
    joint_epochs: int = option(10, "epochs of joint fine-tuning (Eq. 8)", "N", ADA3D)
    policy_lr: float = option(1e-4, "learning rate of the policy and joint stages (the paper's)", "LR", ADA3D)
    fusion_warmup_epochs: int = option(5, "template: epochs without v-DropPath first", "N", FUSION)
    length_scale: float = option(50.0, "template: prior length scale k of Eq. 5", "K", FUSION)

    @field_validator("init", mode="before")
    @classmethod
    def _one_or_more_paths(cls, value: Any) -> Any:
        """One path (a JSON config's string) or several."""
        return (value,) if isinstance(value, str | Path) else value

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from JSON-like values (paths as strings, lists for tuples); errors name the option."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in error.errors())
            raise ConfigError(f"invalid training options: {problems}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def resolved(self) -> TrainConfig:
        """Checked for the options every run needs, with the run directory defaulted."""
        missing = [name for name in ("model", "data", "out") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"missing training options: {', '.join(missing)}")
        return self.model_copy(update={"run_dir": self.run_dir or default_run_dir(self.out)})


def default_run_dir(out: Path) -> Path:
    """``runs/NAME`` for a model directory ``REPO/NAME``."""
    return Path("runs") / Path(out).name
