"""Probabilistic spatiotemporal fusion (CVPR 2020): the 3D DenseNet-121 template of S / ST / S+ST units, its
static strategies, and the v-DropPath template that learns which unit each layer prefers.

Architecture (the paper's Fig. 3 and Supplementary Fig. 1, as the authors' experimental code builds it:
``densenet_3d.py``, ``net_version="v1"``, Something-Something settings), DenseNet-121 in 3D:

* ``stem``: 5×7×7 conv to 64 channels, stride 2×2×2 (time too), BN, ReLU, 3×3×3 max pool, stride 2×2×2;
* four dense blocks of 6, 12, 24, 16 layers, growth 32. A layer's two *paths* read the layer input, each
  BN → ReLU → conv to 4·growth = 128 channels: ``pointwise`` 1×1×1 (DenseNet's bottleneck) and ``temporal``
  3×1×1. Their sum goes through BN → ReLU → a 1×3×3 conv to 32 channels, concatenated to the input. The
  unit of a layer is the set of paths it keeps: **S** = pointwise only (a 2D layer), **ST** = temporal only
  (a (2+1)D layer), **S+ST** = both;
* transitions halve the channels with the same two paths (fixed: the strategies of Fig. 4 index dense
  layers only), then average-pool 2×2×2 after block 1 and 1×2×2 after blocks 2 and 3;
* head: BN, ReLU, global average pool, dropout (0.5 in the static network, none in the template, as the
  authors' argument checker requires), linear. Convolutions start Kaiming-normal as in torchvision.

A *strategy* is one unit per dense layer (58 for DenseNet-121), written as a list or as a compact string of
comma-separated ``UNIT`` or ``UNIT*COUNT`` runs ("S+ST*29,ST*26,S+ST*3"; a bare "S+ST" fills every layer).
``fusion_densenet121`` uses the paper's observation-based pattern for Something-Something (Supplementary
Sec. 3, "Opt" for the other backbones): S+ST in the first half and the last three layers, ST elsewhere. The
best strategy the authors sampled for DenseNet (Fig. 4a) is only drawn, not listed.

v-DropPath (``FusionTemplate``, Sec. 3.2 and Supplementary Eq. S13): one learnable drop rate per (layer,
path), initial 0.1, shared over the input index i (the authors' ``split=1``); the transitions, the spatial
convs (the paper's D1, "residual" drop) and the classifier get none. Training multiplies each path's output,
per clip, by a relaxed Bernoulli keep mask 1 − RelaxedBernoulli(p, τ = 0.2), without rescaling by 1/(1 − p)
(neither does the authors' code), so a hard mask of ones reproduces the trained computation exactly.
``regularizer`` is Eq. 5's prior term for the loss; ``marginals`` are Eq. 7's 1 − sqrt(p).

Sampling a strategy (Eq. 6) drops each path with its rate p, as the authors' selection mode does
(``floor(u + p)``). A layer with both paths dropped is not a unit of U = {S, ST, S+ST}, so sampling draws
from the independent Bernoulli pair conditioned on keeping at least one path (rejection sampling, in closed
form). In eval mode the template runs the most probable strategy of that distribution: keep a path when
p ≤ 0.5; a layer that would keep neither keeps its lower-rate path. Only the kept paths' convs run, so the
FLOP counter sees what executes. ``freeze(template, strategy)`` builds the static network of a strategy with
the template's weights and without the dropped paths.

FLOPs (MACs, conv + linear), 16 frames, 174 classes. The paper's Table 1 gives 31 G and 21.4 M for its
3D DenseNet-121. They are the full template (S+ST everywhere) at the 256² test crop: 31.31 G (+1.0%) and
21.40 M parameters, BN included (the drop rates add 116); a strategy that drops any path has fewer. At 256²
``fusion_densenet121`` (the pattern above) costs 30.47 G with 18.86 M parameters. At the 224² training crop,
the presets' size: S+ST 23.97 G, ST 20.95 G, S 14.90 G, ``fusion_densenet121`` 23.33 G. With 16 frames the
stem and the first transition leave 4 time steps in block 1 and 2 in blocks 2-4.

Sampling is dense: 16 consecutive frames (the authors' loader samples with stride 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import RelaxedBernoulli

from clipwise.models.base import Capabilities, ClipModelConfig, VideoClassifier, forced_on, forcing
from clipwise.models.layers import FrameConv3d
from clipwise.models.policy import FusionPolicy
from clipwise.models.registry import register_preset

Unit = Literal["S", "ST", "S+ST"]
UNITS: tuple[Unit, ...] = ("S", "ST", "S+ST")
PATHS = ("pointwise", "temporal")  # column order of the template's drop rates
PATH_KERNELS = {"pointwise": (1, 1, 1), "temporal": (3, 1, 1)}
UNIT_PATHS: dict[str, tuple[str, ...]] = {"S": ("pointwise",), "ST": ("temporal",), "S+ST": PATHS}
_UNIT_OF_PATHS = {paths: unit for unit, paths in UNIT_PATHS.items()}
_RUN = re.compile(r"(S\+ST|ST|S)(?:\*(\d+))?")

PathWeights = Mapping[str, torch.Tensor | None]
"""The paths a layer runs, each with an optional per-clip multiplier of shape (N, 1, 1, 1, 1)."""


def unit_of(kept: Sequence[bool]) -> Unit:
    """The unit of a layer that keeps the paths flagged in ``kept`` (``PATHS`` order)."""
    return _UNIT_OF_PATHS[tuple(path for path, keep in zip(PATHS, kept, strict=True) if keep)]


def parse_strategy(strategy: str | Sequence[str], layers: int) -> list[Unit]:
    """Per-layer units of a strategy given as a list or a compact string ("S+ST*29,ST*26,S+ST*3", "ST")."""
    if isinstance(strategy, str):
        runs = [_RUN.fullmatch(entry.strip()) for entry in strategy.split(",")]
        if not all(runs):
            raise ValueError(f"bad strategy {strategy!r}: use comma-separated UNIT or UNIT*COUNT, UNIT in {UNITS}")
        if len(runs) == 1 and runs[0][2] is None:
            return [runs[0][1]] * layers
        units = [run[1] for run in runs for _ in range(int(run[2] or 1))]
    else:
        units = list(strategy)
    unknown = sorted(set(units) - set(UNITS))
    if unknown or len(units) != layers:
        raise ValueError(f"a strategy needs {layers} units from {UNITS}; got {len(units)}, unknown {unknown}")
    return units


def format_strategy(units: Sequence[str]) -> str:
    """The compact string of a strategy: runs of equal units, a bare unit when all layers agree."""
    runs = [(unit, len(list(group))) for unit, group in itertools.groupby(units)]
    if len(runs) == 1:
        return runs[0][0]
    return ",".join(unit if count == 1 else f"{unit}*{count}" for unit, count in runs)


def observed_strategy(layers: int) -> str:
    """The paper's hint for Something-Something (Observations I and II, Supplementary Sec. 3): S+ST in the
    first half and the last three layers, ST elsewhere."""
    first_half = layers // 2
    return format_strategy(["S+ST"] * first_half + ["ST"] * (layers - first_half - 3) + ["S+ST"] * 3)


@dataclass
class DenseNet3DConfig(ClipModelConfig):
    """The 3D DenseNet layout shared by the template and its static strategies (defaults: DenseNet-121)."""

    num_classes: int = 174
    frames: int = 16
    size: int = 224
    block_layers: tuple[int, ...] = (6, 12, 24, 16)
    growth: int = 32
    bottleneck_factor: int = 4  # paths output bottleneck_factor × growth channels
    stem_channels: int = 64
    stem_temporal_stride: int = 2  # of the stem conv and of its max pool
    transition_temporal_pools: tuple[int, ...] = (2, 1, 1)  # temporal average pool of each transition

    def __post_init__(self) -> None:
        self.block_layers = tuple(self.block_layers)  # a manifest's JSON list too
        self.transition_temporal_pools = tuple(self.transition_temporal_pools)
        if len(self.transition_temporal_pools) != len(self.block_layers) - 1:
            raise ValueError("one transition_temporal_pools entry per transition (between dense blocks)")

    @property
    def num_layers(self) -> int:
        return sum(self.block_layers)


@dataclass
class FusionDenseNetConfig(DenseNet3DConfig):
    """A static network: the layout and the unit of each dense layer."""

    strategy: str = "S+ST"  # compact strategy string (``parse_strategy``)
    dropout: float = 0.5


@dataclass
class FusionTemplateConfig(DenseNet3DConfig):
    """The v-DropPath template: every layer S+ST, each path with a learnable drop rate."""

    initial_drop_rate: float = 0.1
    temperature: float = 0.2  # of the relaxed Bernoulli masks in training


def _bn_relu_conv(in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    padding = tuple(k // 2 for k in kernel)
    conv = FrameConv3d(in_channels, out_channels, kernel, padding=padding, bias=False)
    return nn.Sequential(OrderedDict(norm=nn.BatchNorm3d(in_channels), relu=nn.ReLU(inplace=True), conv=conv))


class ParallelPaths(nn.Module):
    """Paths that read the same input, BN → ReLU → conv each (pointwise 1×1×1, temporal 3×1×1), summed."""

    def __init__(self, in_channels: int, out_channels: int, paths: Sequence[str]) -> None:
        super().__init__()
        self.paths = nn.ModuleDict(
            {name: _bn_relu_conv(in_channels, out_channels, PATH_KERNELS[name]) for name in paths}
        )

    def forward(self, x: torch.Tensor, weights: PathWeights | None = None) -> torch.Tensor:
        """The sum of the paths named in ``weights`` (default: all), each times its weight when it has one."""
        total = None
        for name, weight in (weights or dict.fromkeys(self.paths)).items():
            out = self.paths[name](x)
            out = out if weight is None else out * weight
            total = out if total is None else total + out
        return total


class FusionLayer(nn.Module):
    """A dense layer: the unit's paths to bottleneck channels, a 1×3×3 conv to ``growth``, concatenated."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int, unit: Unit) -> None:
        super().__init__()
        self.unit = unit
        self.mix = ParallelPaths(in_channels, bottleneck, UNIT_PATHS[unit])
        self.spatial = _bn_relu_conv(bottleneck, growth, (1, 3, 3))

    def forward(self, x: torch.Tensor, weights: PathWeights | None = None) -> torch.Tensor:
        return torch.cat([x, self.spatial(self.mix(x, weights))], dim=1)


class Transition(nn.Module):
    """Both paths to ``out_channels``, summed, then an average pool halving H and W (and T by ``temporal_pool``)."""

    def __init__(self, in_channels: int, out_channels: int, temporal_pool: int) -> None:
        super().__init__()
        self.mix = ParallelPaths(in_channels, out_channels, PATHS)
        self.pool = nn.AvgPool3d((temporal_pool, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.mix(x))


class DenseNet3D(VideoClassifier):
    """The 3D DenseNet with a unit per dense layer; subclasses say which paths run in a forward pass."""

    family = "fusion"
    sampling = "dense"

    def __init__(self, config: DenseNet3DConfig, units: Sequence[Unit], dropout: float, preset: str) -> None:
        super().__init__(config, preset)
        temporal_stride = (config.stem_temporal_stride, 2, 2)
        stem_conv = nn.Conv3d(3, config.stem_channels, (5, 7, 7), stride=temporal_stride, padding=(2, 3, 3), bias=False)
        self.stem = nn.Sequential(
            OrderedDict(
                conv=stem_conv,
                norm=nn.BatchNorm3d(config.stem_channels),
                relu=nn.ReLU(inplace=True),
                pool=nn.MaxPool3d(3, stride=temporal_stride, padding=1),
            )
        )
        self.blocks, self.transitions = nn.ModuleList(), nn.ModuleList()
        channels, bottleneck, units_left = config.stem_channels, config.bottleneck_factor * config.growth, iter(units)
        for index, layers in enumerate(config.block_layers):
            block = nn.ModuleList()
            for _ in range(layers):
                block.append(FusionLayer(channels, config.growth, bottleneck, next(units_left)))
                channels += config.growth
            self.blocks.append(block)
            if index < len(config.transition_temporal_pools):
                self.transitions.append(Transition(channels, channels // 2, config.transition_temporal_pools[index]))
                channels //= 2
        self.head_norm = nn.BatchNorm3d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight)
        nn.init.zeros_(self.fc.bias)

    @property
    def layers(self) -> list[FusionLayer]:
        """The dense layers, input to output: the positions a strategy indexes."""
        return [layer for block in self.blocks for layer in block]

    def active_strategy(self) -> list[Unit]:
        """The unit each dense layer runs in the next forward pass."""
        return [layer.unit for layer in self.layers]

    def path_weights(self, clips: int) -> list[PathWeights]:
        """Per dense layer, the paths the next forward pass runs and their per-clip multipliers (None: none)."""
        return [dict.fromkeys(UNIT_PATHS[unit]) for unit in self.active_strategy()]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        weights = iter(self.path_weights(clips.shape[0]))
        x = self.stem(clips)
        for index, block in enumerate(self.blocks):
            for layer in block:
                x = layer(x, next(weights))
            if index < len(self.transitions):
                x = self.transitions[index](x)
        features = F.relu(self.head_norm(x)).mean(dim=(2, 3, 4))
        return self.fc(self.dropout(features))

    def forward_with_policy(self, clips: torch.Tensor) -> tuple[torch.Tensor, list[FusionPolicy]]:
        """Logits and, per clip, the strategy that ran."""
        strategy = self.active_strategy()
        return self(clips), [FusionPolicy(strategy=strategy) for _ in range(clips.shape[0])]


class FusionDenseNet(DenseNet3D):
    """A static fusion strategy: each dense layer holds only its unit's paths."""

    def __init__(self, config: FusionDenseNetConfig, preset: str = "") -> None:
        super().__init__(config, parse_strategy(config.strategy, config.num_layers), config.dropout, preset)


class FusionTemplate(DenseNet3D):
    """The v-DropPath template: all layers S+ST, a learnable drop rate per (layer, path) in ``drop_logits``."""

    capabilities = Capabilities(objective="fusion")

    def __init__(self, config: FusionTemplateConfig, preset: str = "") -> None:
        super().__init__(config, ["S+ST"] * config.num_layers, 0.0, preset)
        p = config.initial_drop_rate
        self.drop_logits = nn.Parameter(torch.full((config.num_layers, len(PATHS)), math.log(p / (1 - p))))

    def drop_rates(self) -> torch.Tensor:
        """p per (layer, path), shape (layers, 2), columns in ``PATHS`` order."""
        return torch.sigmoid(self.drop_logits)

    def marginals(self) -> torch.Tensor:
        """Eq. 7: the posterior probability that a layer uses a path, 1 − sqrt(p) (layers, 2)."""
        return 1 - self.drop_rates().sqrt()

    def unit_probabilities(self) -> torch.Tensor:
        """Per layer, the probability of S, ST, S+ST (``UNITS`` order) under independent drops with rates p,
        given that at least one path is kept: shape (layers, 3), rows sum to 1."""
        p = self.drop_rates().detach()[:, None, :]
        kept = torch.tensor([[path in UNIT_PATHS[unit] for path in PATHS] for unit in UNITS], device=p.device)
        joint = torch.where(kept, 1 - p, p).prod(dim=-1)
        return joint / joint.sum(dim=1, keepdim=True)

    def sample_strategy(self, generator: torch.Generator | None = None) -> list[Unit]:
        """A strategy drawn from the learned rates (Eq. 6); deterministic for a seeded ``generator``."""
        draws = torch.multinomial(self.unit_probabilities().cpu(), 1, generator=generator).squeeze(1)
        return [UNITS[index] for index in draws.tolist()]

    def most_probable_strategy(self) -> list[Unit]:
        """Keep a path when p ≤ 0.5; a layer that would keep neither keeps its lower-rate path."""
        p = self.drop_rates().detach().cpu()
        keep = p <= 0.5
        neither = ~keep.any(dim=1)
        keep[neither] = F.one_hot(p[neither].argmin(dim=1), len(PATHS)).bool()
        return [unit_of(row) for row in keep.tolist()]

    def sample_keep_masks(self, clips: int) -> torch.Tensor:
        """Relaxed Bernoulli keep masks, one per clip, layer and path: (clips, layers, 2), differentiable in p."""
        drops = RelaxedBernoulli(self.config.temperature, logits=self.drop_logits).rsample((clips,))
        return 1 - drops

    def regularizer(self, dataset_size: int, length_scale: float) -> torch.Tensor:
        """Eq. 5's prior terms, added to the mean cross-entropy of a batch:

            Σ_{l,u} [k²(1 − p)/(2N)·‖w‖² + (p log p + (1 − p) log(1 − p))/N],

        with w the conv weights of path u of layer l, k the length scale (the paper: 250 for Something V1,
        10 for Kinetics, 50 otherwise) and N the number of training clips. The entropy term is the full
        Bernoulli one (the mixture KL of Supplementary Eq. S10; Eq. 5 prints only p log p). The authors' code
        uses ``weight_reg/N · ‖w‖²(1 − p)``: their ``weight_reg`` c is ``length_scale = sqrt(2c)`` here. Other
        weights (stem, spatial convs, transitions, classifier) take ordinary weight decay.
        """
        p, logits = self.drop_rates(), self.drop_logits
        squared_norms = torch.stack(
            [torch.stack([layer.mix.paths[path].conv.weight.square().sum() for path in PATHS]) for layer in self.layers]
        )
        weight_term = length_scale**2 / 2 * (1 - p) * squared_norms
        entropy_term = p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)
        return (weight_term + entropy_term).sum() / dataset_size

    def use_strategy(self, strategy: str | Sequence[str]) -> contextlib.AbstractContextManager:
        """Inside the block (in this context only), every forward pass runs ``strategy``'s paths only, unscaled."""
        return forcing({self: tuple(parse_strategy(strategy, len(self.layers)))})

    def full_compute(self) -> contextlib.AbstractContextManager:
        return self.use_strategy("S+ST")

    def active_strategy(self) -> list[Unit]:
        """A forced strategy; else every path in training (relaxed masks); else the most probable strategy."""
        forced = forced_on(self)
        if forced is not None:
            return list(forced)
        return super().active_strategy() if self.training else self.most_probable_strategy()

    def path_weights(self, clips: int) -> list[PathWeights]:
        if not self.training or forced_on(self) is not None:
            return super().path_weights(clips)
        masks = self.sample_keep_masks(clips).view(clips, -1, len(PATHS), 1, 1, 1, 1)
        return [{path: masks[:, layer, column] for column, path in enumerate(PATHS)} for layer in range(masks.shape[1])]


def freeze(template: FusionTemplate, strategy: str | Sequence[str]) -> FusionDenseNet:
    """The static network of ``strategy`` with the template's weights; dropped paths are left out, not zeroed.

    It computes what the template computes under that strategy's hard mask. Its preset is the template's
    static twin (``fusion_template_densenet121`` → ``fusion_densenet121``) with the strategy as an override.
    """
    layout = {field.name: getattr(template.config, field.name) for field in dataclasses.fields(DenseNet3DConfig)}
    units = parse_strategy(strategy, len(template.layers))
    preset = template.preset.replace("fusion_template_", "fusion_", 1)
    with torch.device(template.drop_logits.device):
        model = FusionDenseNet(FusionDenseNetConfig(**layout, strategy=format_strategy(units)), preset)
    weights = template.state_dict()
    model.load_state_dict({key: weights[key] for key in model.state_dict()})
    return model.train(template.training)


def _register_presets() -> None:
    """Paper layout at 16×224², 174 classes, and ``_tiny`` twins: growth 12, stem 24, blocks 2-3-4-3, 16×64²."""
    tiny = {"block_layers": (2, 3, 4, 3), "growth": 12, "stem_channels": 24, "size": 64}
    for suffix, layout in (("", {}), ("_tiny", tiny)):
        template = FusionTemplateConfig(**layout)
        static = FusionDenseNetConfig(**layout, strategy=observed_strategy(template.num_layers))
        register_preset(f"fusion_densenet121{suffix}", FusionDenseNet, static)
        register_preset(f"fusion_template_densenet121{suffix}", FusionTemplate, template)


_register_presets()
