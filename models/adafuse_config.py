"""AdaFuse's configuration and its presets.

Choices where the paper is silent follow the authors' code (``ops/batenet.py``, ``ops/utils.py``):

* hidden width ``hidden_quota // block width`` (196608: 3072 … 384 for ResNet-50), FC weights N(0, 0.001);
* ``share_policy_fcs``: the blocks of a stage with equal (input, width) share the two FCs, each with its own
  BatchNorm1d (their ``--shared_policy_net``). AdaFuse-TSN-R50 then has 23.86 M + 13.82 M = 37.68 M
  parameters at 174 classes, the paper's 37.7 M; unshared policy nets would make it 54.9 M;
* TSM+Last gates only the last stage (``layer4``, their ``--enabled_stages 3``) with 1024 hidden units and
  unshared FCs (their training script and Table 7).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from clipwise.models.tsn import SMALL, TSNConfig


@dataclass
class AdaFuseConfig(TSNConfig):
    """A TSN / TSM ResNet whose blocks in ``gated_stages`` (1 = layer1 … 4 = layer4) carry a policy net."""

    gated_stages: tuple[int, ...] = (1, 2, 3, 4)
    hidden_quota: int = 196608  # policy hidden width = hidden_quota // block width ...
    hidden_width: int = 0  # ... unless this is set (TSM+Last: 1024)
    share_policy_fcs: bool = True  # blocks of a stage with equal dimensions share the policy FCs
    tau: float = 0.67  # Gumbel-softmax temperature in training
    decision_group: int = 1  # channels per decision: 1 is the paper's; groups make sets an executor can exploit
    # "channel": the paper's keep / reuse / skip per (frame, channel); "prefix": one level of an ordered channel
    # list per block per clip (models.prefix_gating), which executes as dense slices
    structure: Literal["channel", "prefix"] = "channel"
    prefix_hidden: int = 64  # "prefix": hidden width of each block's policy net

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gated_stages = tuple(self.gated_stages)
        if self.structure not in ("channel", "prefix"):
            raise ValueError(f"structure must be 'channel' or 'prefix', got {self.structure!r}")

    def policy_hidden(self, block_width: int) -> int:
        return self.hidden_width or max(1, self.hidden_quota // block_width)


def adafuse_presets() -> dict[str, AdaFuseConfig]:
    """AdaFuse on TSN-R18/R50, TSM-R50 and TSM-R50 gated in its last stage only (8×224², 174 classes), and
    ``_tiny`` twins: quarter width, two blocks a stage, 8×64², policy nets scaled down (quota 3072). The
    ``_small`` presets (TSN / TSM-R18 at ``clipwise.models.tsn.SMALL``) are execution-aware: ``structure="prefix"``."""
    paper = {
        "adafuse_tsn_r18": AdaFuseConfig(depth=18),
        "adafuse_tsn_r50": AdaFuseConfig(depth=50),
        "adafuse_tsm_r50": AdaFuseConfig(depth=50, temporal_shift=True),
        "adafuse_tsm_last_r50": AdaFuseConfig(
            depth=50, temporal_shift=True, gated_stages=(4,), hidden_width=1024, share_policy_fcs=False
        ),
    }
    presets = dict(paper)
    for name, config in paper.items():
        presets[f"{name}_tiny"] = replace(
            config, width=16, layers=(2, 2, 2, 2), size=64, hidden_quota=3072, hidden_width=config.hidden_width // 16
        )
    for name in ("adafuse_tsn_r18", "adafuse_tsm_r18"):
        small = AdaFuseConfig(depth=18, temporal_shift=name.startswith("adafuse_tsm"), structure="prefix", **SMALL)
        presets[f"{name}_small"] = small
    return presets
