"""Training-free E3D search (ICLR 2023, Sec. 3.2–3.4 and Appendix E): entropy scores and evolution.

Scores, analytic, no forward pass (Eq. 6 and 8, as the authors' ``compute_stentr.py`` computes them):
every convolution on the main path (the stem's, the three of every block, the head's 1×1×1 conv) adds
0.5·log(C_in · kt·k·k · α), C_in being the input channels per group (1 for a depthwise conv), and the
score adds log(output channels of the last of them). HomoEntr-Score has α = 1; STEntr-Score has the
spatio-temporal refinement α = −log(1 − cos∠([T, H, W], [kt, k, k])), α = 1 for 1×1×1 kernels, where T is
the clip's frames (nothing strides in time) and H = W the conv's output size. BN, activations, SE,
shortcuts and the FCs after the pool are left out (Appendix C; the authors score the features before the
pool). The 0.5 is the authors' ``log(sqrt(...))``; Eq. 8 writes log(...), i.e. weighs the layers twice as
much against the final log(channels) term. Where this differs from the authors' code:

* a kt×1×1 kernel (X3D's depthwise 5×1×1 stem conv) gets α from the formula, 0.48 at 13×80², as every
  kernel but 1×1×1 does; their ``get_alpha_w`` returns 1 whenever k = 1. X3D-S scores 0.37 lower here.
* H is the conv's real output size; they floor input/stride (at 312²: 19 and 9 where the convs give 20, 10).
* a kernel proportional to its feature map (cos = 1) would get α = ∞; 1 − cos is floored at float epsilon.

FLOPs and depth come from the same analytic description of the network (``network_convs``), which mirrors
``clipwise.models.x3d``; tests check it against ``count_flops`` on every preset and on search results. The budget
is in MACs of the whole network, SE and FCs included (the authors' own count adds BN and ReLU operations
and leaves out the FCs after the pool; they budget 2.0e9 of it for E3D-S, 1.87 G MACs). Depth is the
number of main-path convs (the authors' layer count: 83 for E3D-S/M, 167 for E3D-L).

Evolution (Appendix E; the authors' ``E3D_X3D*_FLOPs.py`` configs, ``space_3d_k1dwk1`` and mutators): the
population starts from the initial structure (Table 8: stem 24, five one-block stages, head 512). Each
iteration picks a parent at random, mutates two randomly chosen parts (the stem or a stage; the head conv
stays 512), and keeps the child if it fits the FLOPs budget and the depth limit and is not already in the
population; past ``population`` members the lowest score leaves. A stage mutates one of: its kernel
({1×3×3, 1×5×5, 3×3×3}); its output channels (× {2.0, 1.5, 1.25, 0.8, 0.6, 0.5}, kept between the previous
and the next stage's, the bottleneck keeping its expansion ratio); its expansion ratio ({1.5 … 4.0}, the
bottleneck = ratio × output channels, as in their code; the paper's text says × input); its depth (±1,
±2, at least 1). Channels are multiples of 8 in [8, 640]. The stem only changes its width (at most 32).
From the authors' code, with no word in the paper: the first stage has at most 3 blocks and the others at
most ``max_layers // 3 // (stages − 1)`` (6 for 83, 13 for 167: E3D's depths); a depthwise kernel shrinks
by 2 while it exceeds 2/3 of its input size. The best member after the last iteration is the result.

Measured (STEntr): X3D-S / M / L 196.29 / 197.63 / 408.70, E3D-S / M / L 202.86 / 204.94 / 411.40, so the
score ranks E3D above X3D as the paper does; HomoEntr ranks X3D-L above E3D-L (370.62 vs 370.00), the
refinement reverses it. Searches of 60,000 iterations (population 512, seed 0, about 4,000 networks a second
on one core) under 1.9 / 4.7 / 18.4 G reach 202.86 / 204.83 / 413.31; the S result has E3D-S's kernels and
depths (1×5×5 ×3, then 3×3×3 ×6 in four stages).
"""

from __future__ import annotations

import heapq
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from clipwise.models.x3d import (
    E3D,
    StageSpec,
    X3DConfig,
    architecture_of,
    conv_output_size,
    has_squeeze_excite,
    se_width,
)

KERNELS = ((1, 3), (1, 5), (3, 3))  # (kt, k) of the depthwise conv
EXPANSION_RATIOS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
CHANNEL_SCALES = (2.0, 1.5, 1.25, 0.8, 0.6, 0.5)
DEPTH_STEPS = (-2, -1, 1, 2)
MIN_CHANNELS, MAX_CHANNELS, CHANNEL_STEP = 8, 640, 8
MAX_STEM_CHANNELS = 32
MAX_FIRST_STAGE_LAYERS = 3

INITIAL_STAGES = (
    StageSpec(kernel=5, temporal_kernel=1, layers=1, bottleneck=48, out_channels=24, stride=2),
    StageSpec(kernel=3, temporal_kernel=3, layers=1, bottleneck=96, out_channels=48, stride=2),
    StageSpec(kernel=3, temporal_kernel=3, layers=1, bottleneck=192, out_channels=96, stride=2),
    StageSpec(kernel=3, temporal_kernel=3, layers=1, bottleneck=192, out_channels=96, stride=1),
    StageSpec(kernel=3, temporal_kernel=3, layers=1, bottleneck=384, out_channels=192, stride=2),
)


def initial_structure(frames: int = 13, size: int = 160, num_classes: int = 400) -> X3DConfig:
    """The search's starting point (Table 8; the authors' configs): stem 24, five one-block stages, head 512."""
    return replace(E3D, frames=frames, size=size, num_classes=num_classes, stages=INITIAL_STAGES)


@dataclass(frozen=True)
class Conv:
    """A convolution or FC of the network, ``copies`` times, as the scores and the MAC count see it."""

    fan_in: int  # input channels per group
    out_channels: int
    kernel: tuple[int, int, int]  # kt, k, k
    frames: int  # output size: frames x size x size
    size: int
    copies: int = 1
    main_path: bool = True  # False: SE, shortcut projection, FC after the pool

    @property
    def macs(self) -> int:
        return self.copies * self.out_channels * self.frames * self.size**2 * self.fan_in * math.prod(self.kernel)


def _block_convs(
    config: X3DConfig, spec: StageSpec, in_channels: int, in_size: int, out_size: int, blocks: range
) -> list[Conv]:
    """The convs of blocks ``blocks`` (indices within the stage ``spec``), identical but for their SEs."""
    width, frames, copies = spec.bottleneck, config.frames, len(blocks)
    convs = [
        Conv(in_channels, width, (1, 1, 1), frames, in_size, copies),
        Conv(1, width, (spec.temporal_kernel, spec.kernel, spec.kernel), frames, out_size, copies),
        Conv(width, spec.out_channels, (1, 1, 1), frames, out_size, copies),
    ]
    se_copies = sum(has_squeeze_excite(config, index) for index in blocks)
    if se_copies:
        hidden = se_width(width, config.se_ratio)
        convs += [
            Conv(width, hidden, (1, 1, 1), 1, 1, se_copies, main_path=False),
            Conv(hidden, width, (1, 1, 1), 1, 1, se_copies, main_path=False),
        ]
    return convs


def network_convs(config: X3DConfig) -> list[Conv]:
    """Every conv and FC of ``clipwise.models.x3d.X3D(config)`` with its output size, in order, repeated blocks
    merged."""
    config = config.resolved()
    frames, size, channels = config.frames, conv_output_size(config.size, 3, 2), config.stem_channels
    convs = [Conv(3, channels, (1, 3, 3), frames, size)]
    if config.stem_temporal_kernel is not None:
        convs.append(Conv(1, channels, (config.stem_temporal_kernel, 1, 1), frames, size))
    for spec in config.stages:
        out_size = conv_output_size(size, spec.kernel, spec.stride)
        convs += _block_convs(config, spec, channels, size, out_size, range(1))
        if config.projection_shortcuts and (channels != spec.out_channels or spec.stride != 1):
            convs.append(Conv(channels, spec.out_channels, (1, 1, 1), frames, out_size, main_path=False))
        if spec.layers > 1:
            convs += _block_convs(config, spec, spec.out_channels, out_size, out_size, range(1, spec.layers))
        channels, size = spec.out_channels, out_size
    return convs + [
        Conv(channels, config.head_channels, (1, 1, 1), frames, size),
        Conv(config.head_channels, config.hidden_channels, (1, 1, 1), 1, 1, main_path=False),
        Conv(config.hidden_channels, config.num_classes, (1, 1, 1), 1, 1, main_path=False),
    ]


def analytic_gflops(config: X3DConfig) -> float:
    """GMACs of one clip, as ``clipwise.models.flops.count_flops`` counts the built model."""
    return sum(conv.macs for conv in network_convs(config)) / 1e9


def depth(config: X3DConfig) -> int:
    """Convolutions on the main path (the depth limit's unit)."""
    return sum(conv.copies for conv in network_convs(config) if conv.main_path)


def refinement(frames: int, size: int, kernel: tuple[int, int, int]) -> float:
    """α = −log(1 − cos∠([T, H, W], [kt, k, k])); 1 for a 1×1×1 kernel."""
    if kernel == (1, 1, 1):
        return 1.0
    feature = (frames, size, size)
    cosine = sum(f * k for f, k in zip(feature, kernel, strict=True)) / (math.hypot(*feature) * math.hypot(*kernel))
    return -math.log(max(1.0 - cosine, sys.float_info.epsilon))


def entropy_score(config: X3DConfig, spatio_temporal: bool = True) -> float:
    """STEntr-Score (``spatio_temporal``) or HomoEntr-Score of the network ``config`` describes."""
    main = [conv for conv in network_convs(config) if conv.main_path]
    total = 0.0
    for conv in main:
        alpha = refinement(conv.frames, conv.size, conv.kernel) if spatio_temporal else 1.0
        total += conv.copies * 0.5 * math.log(conv.fan_in * math.prod(conv.kernel) * alpha)
    return total + math.log(main[-1].out_channels)


def stentr_score(config: X3DConfig) -> float:
    return entropy_score(config, spatio_temporal=True)


def homoentr_score(config: X3DConfig) -> float:
    return entropy_score(config, spatio_temporal=False)


SCORES: dict[str, Callable[[X3DConfig], float]] = {"stentr": stentr_score, "homoentr": homoentr_score}


def round_channels(channels: float) -> int:
    """The nearest multiple of 8 within [8, 640]."""
    return min(MAX_CHANNELS, max(MIN_CHANNELS, round(channels / CHANNEL_STEP) * CHANNEL_STEP))


def _expansion_ratio(spec: StageSpec) -> float:
    """The ratio of the search space nearest to bottleneck / output channels."""
    return min(EXPANSION_RATIOS, key=lambda ratio: abs(ratio - spec.bottleneck / spec.out_channels))


def _mutate_stage(config: X3DConfig, index: int, rng: random.Random, max_layers: int) -> StageSpec:
    spec, stages = config.stages[index], config.stages
    choice = rng.choice(("kernel", "channels", "expansion", "layers"))
    if choice == "kernel":
        kt, k = rng.choice([kernel for kernel in KERNELS if kernel != (spec.temporal_kernel, spec.kernel)])
        return replace(spec, temporal_kernel=kt, kernel=k)
    if choice == "channels":
        lower = stages[index - 1].out_channels if index else config.stem_channels
        upper = stages[index + 1].out_channels if index + 1 < len(stages) else config.head_channels
        out = min(max(round_channels(spec.out_channels * rng.choice(CHANNEL_SCALES)), lower), upper)
        return replace(spec, out_channels=out, bottleneck=round_channels(out * _expansion_ratio(spec)))
    if choice == "expansion":
        ratio = rng.choice([ratio for ratio in EXPANSION_RATIOS if ratio != _expansion_ratio(spec)])
        return replace(spec, bottleneck=round_channels(spec.out_channels * ratio))
    cap = MAX_FIRST_STAGE_LAYERS if index == 0 else max(1, max_layers // 3 // max(1, len(stages) - 1))
    layers = rng.choice(sorted({max(1, spec.layers + step) for step in DEPTH_STEPS} - {spec.layers}))
    return replace(spec, layers=min(layers, cap))


def _fit_kernels(config: X3DConfig) -> X3DConfig:
    """Shrink every depthwise kernel by 2 while it is larger than 2/3 of its input size."""
    size, stages = conv_output_size(config.size, 3, 2), []
    for spec in config.stages:
        kernel = spec.kernel
        while kernel > 1 and 1.5 * kernel > size:
            kernel -= 2
        stages.append(replace(spec, kernel=kernel))
        size = conv_output_size(size, kernel, spec.stride)
    return replace(config, stages=tuple(stages))


def mutate(config: X3DConfig, rng: random.Random, max_layers: int) -> X3DConfig:
    """A child of ``config``: two randomly chosen parts (the stem or a stage) mutated."""
    for _ in range(2):
        part = rng.randrange(len(config.stages) + 1)
        if part == 0:
            scaled = round_channels(config.stem_channels * rng.choice(CHANNEL_SCALES))
            config = replace(config, stem_channels=min(scaled, MAX_STEM_CHANNELS, config.stages[0].out_channels))
        else:
            stages = list(config.stages)
            stages[part - 1] = _mutate_stage(config, part - 1, rng, max_layers)
            config = replace(config, stages=tuple(stages))
    return _fit_kernels(config)


@dataclass(order=True, frozen=True)
class Candidate:
    """A scored network of the population; ordered by score, then by age (older first)."""

    score: float
    order: int
    config: X3DConfig = field(compare=False)
    gflops: float = field(compare=False)
    depth: int = field(compare=False)


@dataclass(frozen=True)
class SearchResult:
    best: Candidate
    initial: Candidate
    evaluated: int  # children within budget that were scored


def _key(config: X3DConfig) -> tuple:
    return config.stem_channels, config.stages


def search(
    initial: X3DConfig,
    budget_gflops: float,
    max_layers: int,
    iterations: int,
    population: int,
    seed: int = 0,
    score: Callable[[X3DConfig], float] = stentr_score,
    progress: bool = False,
) -> SearchResult:
    """Evolve ``initial`` for ``iterations`` mutations; the best network within the budgets. Deterministic
    for a seed."""
    rng = random.Random(seed)
    start = Candidate(score(initial), 0, initial, analytic_gflops(initial), depth(initial))
    if start.gflops > budget_gflops or start.depth > max_layers:
        raise ValueError(f"the initial structure ({start.gflops:.3f} GFLOPs, {start.depth} layers) exceeds the budget")
    members, keys, best, evaluated = [start], {_key(initial)}, start, 0
    bar = tqdm(range(1, iterations + 1), desc="E3D search", unit="net", disable=not progress)
    for order in bar:
        child = mutate(rng.choice(members).config, rng, max_layers)
        if _key(child) in keys:
            continue
        gflops, layers = analytic_gflops(child), depth(child)
        if gflops > budget_gflops or layers > max_layers:
            continue
        candidate, evaluated = Candidate(score(child), order, child, gflops, layers), evaluated + 1
        heapq.heappush(members, candidate)
        keys.add(_key(child))
        if len(members) > population:
            keys.discard(_key(heapq.heappop(members).config))
        if candidate.score > best.score:
            best = candidate
            bar.set_postfix(score=f"{best.score:.2f}", gflops=f"{best.gflops:.3f}", layers=best.depth, refresh=False)
    return SearchResult(best=best, initial=start, evaluated=evaluated)


def write_arch(path: str | Path, result: SearchResult, **settings: object) -> None:
    """Write the best network as the arch file ``create_model("e3d", arch=path)`` builds, with the search's
    settings and figures."""
    best = result.best
    document = {
        "family": "e3d",
        "architecture": architecture_of(best.config),
        "search": {
            "frames": best.config.frames,
            "size": best.config.size,
            "num_classes": best.config.num_classes,
            **settings,
            "score": best.score,
            "gflops": best.gflops,
            "layers": best.depth,
        },
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
