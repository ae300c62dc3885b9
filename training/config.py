"""The options of a training run, light to import (the command line reads their defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

PATH_FIELDS = ("data", "out", "run_dir", "data_root", "init")


class ConfigError(ValueError):
    """Options that do not make a run: missing or unknown, contradicting the data, or the run directory."""


@dataclass
class TrainConfig:
    """Everything a training run reads. A JSON config file may set any field; command-line flags win."""

    model: str = ""  # registry preset
    data: Path | None = None  # dataset directory: classes.txt, train and val lists
    out: Path | None = None  # REPO/NAME: the trained model becomes the next version there
    run_dir: Path | None = None  # logs, metrics and resume state (default: runs/NAME)
    data_root: Path | None = None  # video paths are relative to it (default: each list's directory)
    init: tuple[Path, ...] = ()  # version directories and files whose weights start the model, matched by role
    init_source: str = ""  # layout of the --init files (torchvision, pytorchvideo, ...); version directories need none
    epochs: int = 10  # static families, AdaFuse, fusion (with v-DropPath); Ada3D: backbone pre-training
    batch_size: int = 8  # per process
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: tuple[int, ...] = ()  # step schedule: epochs of each phase where the rate drops ×0.1
    lr_warmup_epochs: float = 0.0
    clip_grad_norm: float = 20.0  # 0: off
    frames: int | None = None  # override the preset's clip length
    size: int | None = None  # override the preset's crop size
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # other preset config fields to replace
    workers: int = 2  # DataLoader worker processes per training process
    device: str = ""  # cpu, cuda (under torchrun: cuda:LOCAL_RANK) or cuda:N; "": cuda where available, else cpu
    seed: int = 0
    flip: bool = False  # horizontal flip; refused for direction-sensitive labels
    resume: bool = False  # continue the run in run_dir from its latest epoch
    flops_weight: float = 0.1  # AdaFuse: λ of Eq. 6, per GFLOP
    cost: Literal["flops", "latency"] = "flops"  # AdaFuse: Eq. 6's cost term, GFLOPs or predicted time
    latency_weight: float = 1.0  # AdaFuse with cost "latency": λ per unit of gated time (1: full compute)
    policy_lr_scale: float = 1.0  # AdaFuse: the policy nets' learning rate, as a multiple of lr
    gamma: float = 1.0  # Ada3D: penalty of a wrong prediction in the reward (Eq. 4)
    selection_epochs: int = 5  # Ada3D: the selection net trained as a classifier first (Alg. 1's pre-training)
    policy_epochs: int = 10  # Ada3D stage 1: selection net alone, backbone frozen
    entropy_weight: float = 0.01  # Ada3D: weight of the policies' entropy bonus (exploration)
    joint_epochs: int = 10  # Ada3D stage 2: joint fine-tuning (Eq. 8)
    policy_lr: float = 1e-4  # Ada3D: learning rate of both policy stages (the paper's)
    fusion_warmup_epochs: int = 5  # fusion: epochs without v-DropPath before the v-DropPath epochs
    length_scale: float = 50.0  # fusion: prior length scale k of Eq. 5

    def __post_init__(self) -> None:
        if isinstance(self.init, str | Path):  # one path: a JSON config's string, an older config.json
            self.init = (self.init,)
        self.init = tuple(Path(path) for path in self.init)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from JSON-like values (paths as strings, lists for tuples); unknown keys are an error."""
        unknown = sorted(set(values) - {item.name for item in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown training options {unknown}")
        converted = dict(values)
        for name in PATH_FIELDS:
            if converted.get(name) and name != "init":  # init: __post_init__
                converted[name] = Path(converted[name])
        if "milestones" in converted:
            converted["milestones"] = tuple(converted["milestones"])
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        values = {key: str(value) if isinstance(value, Path) else value for key, value in vars(self).items()}
        return {**values, "init": [str(path) for path in self.init]}

    def resolved(self) -> TrainConfig:
        """Checked, with the run directory defaulted."""
        missing = [name for name in ("model", "data", "out") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"missing training options: {', '.join(missing)}")
        if self.schedule not in ("cosine", "step"):
            raise ConfigError(f"schedule must be cosine or step, not {self.schedule!r}")
        if self.cost not in ("flops", "latency"):
            raise ConfigError(f"cost must be flops or latency, not {self.cost!r}")
        return dataclasses.replace(self, run_dir=self.run_dir or default_run_dir(self.out))


def default_run_dir(out: Path) -> Path:
    """``runs/NAME`` for a model directory ``REPO/NAME``."""
    return Path("runs") / Path(out).name
