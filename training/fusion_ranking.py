"""Rank and freeze fusion strategies: ``clipwise export fusion --model-dir REPO/NAME/VERSION --data VAL
--samples N --out REPO/NAME_FROZEN``.

Ranking evaluates strategies on a labelled dataset, so it is training-time work and lives here; the command
stays under ``clipwise export`` because what it produces is a frozen, servable version.

The version must hold a v-DropPath template (``clipwise.models.fusion.FusionTemplate``). As in the paper's
network-level analysis (Sec. 3.3, Eq. 6), N strategies are sampled from the learned drop rates (seeded;
duplicates are evaluated once), the fixed S, ST and S+ST are added, and each runs on the validation clips
through the template with only its paths executed (``FusionTemplate.use_strategy``, evaluated by
``clipwise.training.evaluate.evaluate`` exactly as ``clipwise eval`` does). The ranking is by top-1, then top-5,
then fewer executed GFLOPs.

The best strategy (or the one ``--strategy`` names, evaluated as well) is frozen with
``clipwise.models.fusion.freeze`` — dropped paths left out, not zeroed — and saved as the next version of the
``--out`` model: a static ``FusionDenseNet`` the server loads as it is, its manifest carrying the
strategy's validation metrics. Next to its weights the version gets:

* ``fusion_ranking.json``: every strategy evaluated with its metrics, the per-layer marginals of Eq. 7
  (1 − sqrt(p) per path) and the per-layer probabilities of the units S, ST and S+ST;
* ``fusion_marginals.png``: those unit probabilities as bars per layer (blue S, green ST, yellow S+ST)
  under the frozen strategy as an orange dotted line, in the style of the paper's Fig. 4 (x-axis: dense
  block B and layer L).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy
import torch
from torch.utils.data import DataLoader

from clipwise.models.checkpoint import LoadedVersion, load_version_dir, save_version
from clipwise.models.fusion import UNITS, FusionTemplate, format_strategy, freeze, parse_strategy
from clipwise.training.data import DatasetFiles
from clipwise.training.evaluate import evaluate, version_loader

FIXED_STRATEGIES = ("S", "ST", "S+ST")
RANKING_FILE = "fusion_ranking.json"
CHART_FILE = "fusion_marginals.png"
UNIT_COLOURS = {"S": "tab:blue", "ST": "tab:green", "S+ST": "gold"}


@dataclass
class StrategyResult:
    """One evaluated strategy: its compact form, where it came from, its validation metrics."""

    strategy: str
    origin: str  # "sampled", "fixed" or "named"
    metrics: dict[str, float] = field(default_factory=dict)

    def rank_key(self) -> tuple[float, float, float]:
        return (-self.metrics["top1"], -self.metrics["top5"], self.metrics["mean_executed_gflops"])


def candidate_strategies(
    template: FusionTemplate, samples: int, seed: int, named: str | None = None
) -> list[StrategyResult]:
    """``samples`` strategies drawn from the learned rates (duplicates once), the fixed ones, and ``named``."""
    generator = torch.Generator().manual_seed(seed)
    layers = len(template.layers)
    candidates: dict[str, StrategyResult] = {}
    for _ in range(samples):
        strategy = format_strategy(template.sample_strategy(generator))
        candidates.setdefault(strategy, StrategyResult(strategy, "sampled"))
    for strategy in FIXED_STRATEGIES:
        candidates.setdefault(strategy, StrategyResult(strategy, "fixed"))
    if named is not None:
        strategy = format_strategy(parse_strategy(named, layers))
        candidates[strategy] = replace(candidates.get(strategy, StrategyResult(strategy, "named")), origin="named")
    return list(candidates.values())


def validation_loader(loaded: LoadedVersion, data: Path, batch_size: int, workers: int) -> DataLoader:
    """Batches of the validation list ``data`` (a list file beside ``classes.txt``, or a dataset directory)."""
    files = DatasetFiles.find(data) if data.is_dir() else None
    val_list, classes = (files.val, files.classes) if files else (data, data.parent / "classes.txt")
    return version_loader(loaded, val_list, classes, batch_size, workers)


def rank_strategies(
    template: FusionTemplate, candidates: Sequence[StrategyResult], loader: DataLoader, labels: Sequence[str]
) -> list[StrategyResult]:
    """Evaluate every candidate through the template (only its paths run) and sort them, best first."""
    for candidate in candidates:
        with template.use_strategy(candidate.strategy):
            candidate.metrics = evaluate(template, loader, labels, progress=candidate.strategy).metrics()
    return sorted(candidates, key=StrategyResult.rank_key)


def layer_names(template: FusionTemplate) -> list[str]:
    """``B{block}L{layer}`` for every dense layer, both from 1 (the paper's Fig. 4 axis)."""
    return [
        f"B{block_index + 1}L{layer_index + 1}"
        for block_index, block in enumerate(template.blocks)
        for layer_index in range(len(block))
    ]


def marginals_report(template: FusionTemplate) -> list[dict[str, Any]]:
    """Per dense layer: Eq. 7's marginal of each path and the probability of each unit."""
    paths = template.marginals().detach().cpu().tolist()
    units = template.unit_probabilities().cpu().tolist()
    return [
        {
            "layer": name,
            "path_marginals": {"pointwise": path[0], "temporal": path[1]},
            "unit_probabilities": dict(zip(UNITS, unit, strict=True)),
        }
        for name, path, unit in zip(layer_names(template), paths, units, strict=True)
    ]


def plot_marginals(template: FusionTemplate, strategy: str, path: Path) -> Path:
    """A Fig. 4-style chart: per-layer unit probabilities as bars, ``strategy`` as an orange dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = layer_names(template)
    probabilities = template.unit_probabilities().cpu().numpy()
    chosen = [UNITS.index(unit) for unit in parse_strategy(strategy, len(names))]
    positions = numpy.arange(len(names), dtype=float)
    width = 0.8 / len(UNITS)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(8.0, 0.28 * len(names)), 4.5), sharex=True, gridspec_kw={"height_ratios": [1, 2.5]}
    )
    top.plot(positions, chosen, linestyle=":", marker="o", markersize=3, color="tab:orange", label="frozen strategy")
    top.set_yticks(range(len(UNITS)), UNITS)
    top.set_ylim(-0.5, len(UNITS) - 0.5)
    top.legend(loc="upper right", fontsize="small")
    for index, unit in enumerate(UNITS):
        offsets = positions + (index - (len(UNITS) - 1) / 2) * width
        bottom.bar(offsets, probabilities[:, index], width, color=UNIT_COLOURS[unit], label=unit)
    bottom.set_ylabel("marginal probability")
    bottom.set_ylim(0, 1)
    bottom.set_xticks(positions, names, rotation=90, fontsize="x-small")
    bottom.legend(loc="upper right", ncols=len(UNITS), fontsize="small")
    figure.suptitle("Fusion units per layer: learned probabilities and the frozen strategy")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@dataclass
class FrozenFusion:
    """What ``export_fusion`` wrote."""

    version_dir: Path
    strategy: str
    ranking: list[StrategyResult]


def export_fusion(
    model_dir: Path,
    data: Path,
    out: Path,
    *,
    samples: int,
    strategy: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    workers: int = 0,
) -> FrozenFusion:
    """Rank sampled and fixed strategies of a template version on validation data and save the frozen best (or
    ``strategy``) as the next version of the model directory ``out``; see the module docstring."""
    loaded = load_version_dir(model_dir)
    template = loaded.model
    if not isinstance(template, FusionTemplate):
        raise TypeError(f"{model_dir} holds a {loaded.manifest.architecture}, not a fusion template")
    candidates = candidate_strategies(template, samples, seed, strategy)
    loader = validation_loader(loaded, data, batch_size, workers)
    ranking = rank_strategies(template, candidates, loader, loaded.manifest.labels)
    chosen = next(result for result in ranking if result.origin == "named") if strategy else ranking[0]
    frozen = freeze(template, chosen.strategy).eval()
    version_dir = save_version(
        frozen,
        loaded.manifest.labels,
        out.parent,
        out.name,
        trained=loaded.manifest.trained,
        metrics=chosen.metrics,
        data_fingerprint=loaded.manifest.data_fingerprint,
    )
    report = {
        "source": {"path": str(loaded.path), "architecture": loaded.manifest.architecture},
        "data": str(data),
        "frozen": asdict(chosen),
        "ranking": [asdict(result) for result in ranking],
        "layers": marginals_report(template),
    }
    (version_dir / RANKING_FILE).write_text(json.dumps(report, indent=2) + "\n")
    plot_marginals(template, chosen.strategy, version_dir / CHART_FILE)
    return FrozenFusion(version_dir, chosen.strategy, ranking)
