"""The synthetic motion benchmark: every family trained and evaluated on the same clips (issue 5, item 5).

Everything goes through the ``clipwise`` command line, as a user would run it:

1. ``clipwise data synth`` writes the dataset (``WORK/data``: ``--clips-per-class`` training clips and a
   quarter as many validation clips per class) and, from the next seed, a held-out list on which fusion
   strategies are chosen (``WORK/holdout/val.txt``), so that the strategy reported was not picked on the
   clips it is scored on.
2. ``clipwise train --config WORK/configs/NAME.json`` trains every recipe of ``RECIPES`` into
   ``WORK/repo/NAME`` (logs, metrics.csv and TensorBoard in ``WORK/runs/NAME``). AdaFuse starts from the
   trained TSN / TSM (the paper starts from ImageNet weights), Ada3D from the trained I3D (Alg. 1, line 1).
3. ``clipwise export fusion`` samples strategies from the trained v-DropPath template, ranks them on the
   held-out list and freezes the best; S, ST and S+ST are frozen from the same template.
4. ``clipwise eval`` scores every version on ``WORK/data``'s validation list.
5. The table (top-1 on the temporal-order classes, on the static classes and overall; mean executed GFLOPs;
   policy usage of the adaptive models) and the checks of the papers' claims are printed and written to
   ``WORK/results.md`` and ``WORK/results.json``.

Re-running continues where the last run stopped: a trained version, an interrupted run (resumed) and an
evaluation are reused as long as their recipe is unchanged; a changed recipe is refused until its outputs are
removed. ``rm -r WORK`` starts over.

Every command runs with one torch thread (``OMP_NUM_THREADS=1``): for these tiny models two threads on two
cores were 3–7× slower per step than one, measured on the development machine while other work shared it.
``--jobs 2`` runs two chains of recipes at once instead, one per core.

    .venv/bin/python benchmarks/synthetic.py                     # WORK = runs/synthetic-benchmark
    .venv/bin/python benchmarks/synthetic.py --jobs 2 --work /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipwise.training.synthetic import STATIC_CLASSES, TEMPORAL_CLASSES  # noqa: E402

# Shared by every recipe: one process per run, one DataLoader worker decoding ahead of it.
COMMON = {"batch_size": 16, "workers": 1, "seed": 0, "schedule": "cosine", "lr_warmup_epochs": 1}


@dataclass(frozen=True)
class Recipe:
    """A model trained by ``clipwise train``; ``init`` names the recipe whose trained version starts it."""

    name: str
    title: str
    options: dict[str, Any]
    init: str | None = None


EPOCHS = 20  # every model trained from scratch but the fusion family, which learns this task in far fewer
FUSION_EPOCHS = 12
ADAFUSE = {"epochs": 6, "lr": 0.02, "flops_weight": 9.0, "policy_lr_scale": 50.0}
# the execution-aware AdaFuse: Eq. 6's cost from its levels' time measured on the training machine
ADAFUSE_PREFIX = {
    "epochs": 3, "lr": 0.01, "lr_warmup_epochs": 0, "cost": "latency", "latency_weight": 1.0, "policy_lr_scale": 10.0
}  # fmt: skip
# I3D: as E3D (at lr 0.05 with 2 warm-up epochs it fitted less: docs/training.md)
I3D = {"epochs": EPOCHS, "lr": 0.1}
# Ada3D (Alg. 1 from the trained I3D): the selection net as a classifier first (at --lr), then the policy
# (self-critical REINFORCE with an entropy bonus), then both jointly (at --policy-lr)
ADA3D = {"selection_epochs": 3, "lr": 0.05, "policy_epochs": 5, "joint_epochs": 2, "policy_lr": 0.01, "gamma": 1.0}
DENSE_STRIDE_2 = {"sample_stride": 2}  # 8 frames two apart: 15 of the 16 frames of a synthetic clip
FUSION = {"epochs": FUSION_EPOCHS, "lr": 0.02}


def fixed_fusion(unit: str) -> Recipe:
    """The static network of one fixed strategy, trained alone (the network-level comparison)."""
    name = "fusion_" + unit.lower().replace("+", "_")
    return Recipe(
        name, f"Fusion {unit}", {"model": "fusion_densenet121_tiny", "model_args": {"strategy": unit}, **FUSION}
    )


RECIPES = (  # chains run in this order, the longest first (for --jobs)
    Recipe(
        "fusion_template",
        "Fusion template (v-DropPath)",
        {
            "model": "fusion_template_densenet121_tiny",
            "fusion_warmup_epochs": FUSION_EPOCHS // 2,
            "epochs": FUSION_EPOCHS // 2,
            "lr": FUSION["lr"],
            "length_scale": 6.0,
        },
    ),
    Recipe("i3d", "I3D-R50", {"model": "i3d_r50_tiny", "model_args": DENSE_STRIDE_2, **I3D}),
    Recipe(
        "ada3d", "Ada3D (I3D-R50)", {"model": "ada3d_i3d_r50_tiny", "model_args": DENSE_STRIDE_2, **ADA3D}, init="i3d"
    ),
    Recipe("ctnet", "CT-Net-R50", {"model": "ctnet_r50_tiny", "epochs": EPOCHS, "lr": 0.05}),
    Recipe("tsm", "TSM-R18", {"model": "tsm_r18_tiny", "epochs": EPOCHS, "lr": 0.05}),
    Recipe(
        "adafuse_tsm",
        "AdaFuse-TSM-R18",
        {"model": "adafuse_tsn_r18_tiny", "model_args": {"temporal_shift": True}, **ADAFUSE},
        init="tsm",
    ),
    Recipe("tsn", "TSN-R18", {"model": "tsn_r18_tiny", "epochs": EPOCHS, "lr": 0.05}),
    Recipe("adafuse_tsn", "AdaFuse-TSN-R18", {"model": "adafuse_tsn_r18_tiny", **ADAFUSE}, init="tsn"),
    Recipe("tsn_small", "TSN-R18 small", {"model": "tsn_r18_small", "epochs": 12, "lr": 0.05}),
    Recipe(
        "adafuse_small",
        "AdaFuse-TSN-R18 small, execution-aware",
        {"model": "adafuse_tsn_r18_small", **ADAFUSE_PREFIX},
        init="tsn_small",
    ),
    Recipe("e3d", "E3D-S", {"model": "e3d_s_tiny", "model_args": DENSE_STRIDE_2, "epochs": EPOCHS, "lr": 0.1}),
    *(fixed_fusion(unit) for unit in ("S", "ST", "S+ST")),
)
TEMPLATE, FUSION_BEST, FUSION_SAMPLES = "fusion_template", "fusion_best", 20
FIXED_FUSION = ("fusion_s", "fusion_st", "fusion_s_st")
# Claims: (adaptive model, its dense counterpart) pairs, and what "far ahead" means.
ADAFUSE_PAIRS = (("adafuse_tsn", "tsn"), ("adafuse_tsm", "tsm"), ("adafuse_small", "tsn_small"))
ADAFUSE_MAX_DROP, ADAFUSE_MAX_COST = 0.02, 0.75
ADA3D_MAX_DROP, ADA3D_MIN_GAP = 0.02, 0.20  # Ada3D against its I3D; static against motion clips, frames or stages
I3D_MAX_DROP = 0.05  # the 3D network against TSM
TEMPORAL_MODELS = ("tsm", "adafuse_tsn", "adafuse_tsm", "i3d", "ada3d", "e3d", "ctnet", FUSION_BEST)
FAR_AHEAD = 0.30


def version_dir(work: Path, name: str) -> Path:
    """The one version a benchmark run trains or freezes of model ``name``."""
    return work / "repo" / name / "1"


# --- running the command line ------------------------------------------------------------------------------


@dataclass
class Runner:
    """Runs ``clipwise`` commands one thread each, logs them, and keeps the wall time of every step."""

    work: Path
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def clipwise(self, step: str, *args: object) -> None:
        """``clipwise ARGS`` with output to ``WORK/logs/STEP.log``; an error names the log."""
        log = self.work / "logs" / f"{step}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        with log.open("w") as output:
            command = [sys.executable, "-m", "clipwise.cli", *map(str, args)]
            done = subprocess.run(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"{step} failed (exit status {done.returncode}); see {log}")
        self.record(step, time.perf_counter() - started)

    def record(self, step: str, seconds: float) -> None:
        with self._lock:
            self.seconds[step] = seconds
            self.load.append(os.getloadavg()[0])
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed / 60:5.1f} min] {step}: {seconds / 60:.1f} min", flush=True)


def write_once(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as JSON, or check that the file already holds it (a changed recipe is refused)."""
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    if path.is_file() and path.read_text() != text:
        raise SystemExit(f"{path} holds another recipe: remove it and the outputs made from it, or use another --work")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --- the steps ---------------------------------------------------------------------------------------------


def make_data(runner: Runner, clips_per_class: int, seed: int, holdout_per_class: int) -> None:
    """The dataset and the held-out list for strategy selection (the val split of the next seed; the one
    training clip per class it also writes is not used)."""
    work = runner.work
    settings = work / "configs" / "data.json"
    if not settings.is_file() and work.is_dir() and any(work.iterdir()):
        raise SystemExit(f"{work} holds files this benchmark did not write: use another --work")
    write_once(settings, {"clips_per_class": clips_per_class, "seed": seed, "holdout_per_class": holdout_per_class})
    datasets = {
        "data": ["--clips-per-class", clips_per_class, "--seed", seed],
        "holdout": ["--clips-per-class", 1, "--val-fraction", holdout_per_class, "--seed", seed + 1],
    }
    for name, options in datasets.items():
        if not (work / name / "val.txt").is_file():
            runner.clipwise(name, "data", "synth", "--out", work / name, *options)


def train(runner: Runner, recipe: Recipe) -> None:
    """``clipwise train`` of one recipe, resumed if a run of it was interrupted, skipped if it is done."""
    work = runner.work
    config = {**COMMON, **recipe.options, "data": work / "data", "out": work / "repo" / recipe.name}
    config["run_dir"] = work / "runs" / recipe.name
    if recipe.init:
        config["init"] = version_dir(work, recipe.init)
    config_file = work / "configs" / f"{recipe.name}.json"
    write_once(config_file, {key: str(value) if isinstance(value, Path) else value for key, value in config.items()})
    if version_dir(work, recipe.name).is_dir():
        return
    resume = ["--resume"] if (config["run_dir"] / "resume" / "latest").is_file() else []
    runner.clipwise(f"train-{recipe.name}", "train", "--config", config_file, *resume)


def freeze_best(runner: Runner) -> None:
    """``clipwise export fusion``: rank sampled and fixed strategies of the template on the held-out list,
    freeze the best."""
    work = runner.work
    if version_dir(work, FUSION_BEST).is_dir():
        return
    runner.clipwise(
        f"freeze-{FUSION_BEST}",
        "export", "fusion", "--model-dir", version_dir(work, TEMPLATE), "--data", work / "holdout",
        "--samples", FUSION_SAMPLES, "--out", work / "repo" / FUSION_BEST, "--workers", 1, "--batch-size", 16,
    )  # fmt: skip


def evaluate(runner: Runner, name: str) -> None:
    """``clipwise eval`` of a version on the validation list (redone when the version is newer)."""
    work = runner.work
    report, version = work / "eval" / f"{name}.json", version_dir(work, name)
    if report.is_file() and report.stat().st_mtime > (version / "manifest.json").stat().st_mtime:
        return
    runner.clipwise(
        f"eval-{name}",
        "eval", "--model-dir", version, "--data", work / "data", "--json", report, "--workers", 1, "--batch-size", 16,
    )  # fmt: skip


def with_inits(names: Iterable[str]) -> set[str]:
    """The recipes named and every recipe they start from (``init``), transitively."""
    by_name = {recipe.name: recipe for recipe in RECIPES}
    wanted: set[str] = set()
    for name in names:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = by_name[name].init
    return wanted


def chains(wanted: set[str]) -> list[list[Callable[[Runner], None]]]:
    """Steps in chains that may run side by side: a recipe, then what starts from it; the template, then the
    strategy frozen from it. Every model is evaluated right after it is made (the template through its strategy).
    Only the ``wanted`` recipes run."""

    def trained(recipe: Recipe) -> list[Callable[[Runner], None]]:
        steps: list[Callable[[Runner], None]] = [lambda runner: train(runner, recipe)]
        if recipe.name == TEMPLATE:
            steps += [freeze_best, lambda runner: evaluate(runner, FUSION_BEST)]
        else:
            steps.append(lambda runner: evaluate(runner, recipe.name))
        for follower in RECIPES:
            if follower.init == recipe.name and follower.name in wanted:
                steps += trained(follower)
        return steps

    return [trained(recipe) for recipe in RECIPES if recipe.init is None and recipe.name in wanted]


# --- results --------------------------------------------------------------------------------------------------


def group_figures(report: dict[str, Any], labels: Iterable[str]) -> dict[str, Any]:
    """Top-1, executed GFLOPs and policy means over the validation clips of some classes."""
    rows = [report["per_class"][label] for label in labels if label in report["per_class"]]
    clips = sum(row["clips"] for row in rows)

    def mean(values: Iterable[float]) -> float:
        return sum(value * row["clips"] for value, row in zip(values, rows, strict=True)) / clips

    figures = {
        "clips": clips,
        "top1": mean(row["top1"] for row in rows),
        "gflops": mean(row["mean_executed_gflops"] for row in rows),
    }
    if "policy" in rows[0]:
        figures["policy"] = {key: mean(row["policy"][key] for row in rows) for key in rows[0]["policy"]}
    return figures


def model_row(work: Path, name: str, title: str) -> dict[str, Any]:
    """The figures of one model: per group of classes, overall, full GFLOPs, training time."""
    report = json.loads((work / "eval" / f"{name}.json").read_text())
    groups = {"temporal": TEMPORAL_CLASSES, "static": STATIC_CLASSES, "overall": TEMPORAL_CLASSES + STATIC_CLASSES}
    row = {"name": name, "title": title, "architecture": report["model"]["architecture"]}
    row.update({group: group_figures(report, labels) for group, labels in groups.items()})
    row["full_gflops"] = report["full_gflops"]
    ranking = version_dir(work, name) / "fusion_ranking.json"
    if ranking.is_file():
        row["strategy"] = json.loads(ranking.read_text())["frozen"]["strategy"]
    return row


def policy_text(row: dict[str, Any]) -> str:
    policy = row["overall"].get("policy")
    if not policy:
        return row.get("strategy", "")
    if "keep" in policy:
        return f"keep {policy['keep']:.0%} · reuse {policy['reuse']:.0%} · skip {policy['skip']:.0%}"
    if "frame_fraction" in policy:
        return f"frames {policy['frame_fraction']:.0%} · 3D stages {policy['stage_fraction']:.0%}"
    return " · ".join(f"{unit} {share:.0%}" for unit, share in policy.items())


@dataclass
class Claim:
    text: str
    holds: bool
    evidence: str


def temporal_claim(rows: dict[str, dict[str, Any]]) -> Claim:
    tsn = rows["tsn"]["temporal"]["top1"]
    margins = {name: rows[name]["temporal"]["top1"] - tsn for name in TEMPORAL_MODELS}
    return Claim(
        f"temporal models are far ahead of TSN on the temporal-order classes (≥ {FAR_AHEAD:.0%} points)",
        min(margins.values()) >= FAR_AHEAD,
        f"TSN {tsn:.1%}; " + ", ".join(f"{rows[n]['title']} {m:+.1%}" for n, m in margins.items()),
    )


def within(rows: dict[str, dict[str, Any]], model: str, reference: str, points: float) -> Claim:
    """``model``'s top-1 at most ``points`` below ``reference``'s."""
    ours, theirs = rows[model]["overall"]["top1"], rows[reference]["overall"]["top1"]
    return Claim(
        f"{rows[model]['title']} within {points:.0%} points of {rows[reference]['title']}",
        theirs - ours <= points,
        f"top-1 {ours:.1%} vs {theirs:.1%}",
    )


def adafuse_claim(rows: dict[str, dict[str, Any]], adaptive: str, dense: str) -> Claim:
    drop = rows[dense]["overall"]["top1"] - rows[adaptive]["overall"]["top1"]
    cost = rows[adaptive]["overall"]["gflops"] / rows[dense]["overall"]["gflops"]
    return Claim(
        f"{rows[adaptive]['title']} within {ADAFUSE_MAX_DROP:.0%} points of {rows[dense]['title']} "
        f"at ≤ {ADAFUSE_MAX_COST:.0%} of its GFLOPs",
        drop <= ADAFUSE_MAX_DROP and cost <= ADAFUSE_MAX_COST,
        f"top-1 {rows[adaptive]['overall']['top1']:.1%} vs {rows[dense]['overall']['top1']:.1%}, "
        f"GFLOPs {cost:.0%} of the dense model's",
    )


def ada3d_spending_claim(rows: dict[str, dict[str, Any]]) -> Claim:
    static, temporal = (rows["ada3d"][group]["policy"] for group in ("static", "temporal"))
    frames = temporal["frame_fraction"] - static["frame_fraction"]
    stages = temporal["stage_fraction"] - static["stage_fraction"]
    return Claim(
        f"Ada3D keeps ≥ {ADA3D_MIN_GAP:.0%} points fewer frames or 3D stages on static clips than on motion clips",
        max(frames, stages) >= ADA3D_MIN_GAP,
        f"frames kept {static['frame_fraction']:.0%} vs {temporal['frame_fraction']:.0%}, "
        f"3D stages on {static['stage_fraction']:.0%} vs {temporal['stage_fraction']:.0%} (static vs motion)",
    )


def fusion_claim(rows: dict[str, dict[str, Any]]) -> Claim:
    fixed = max((rows[name] for name in FIXED_FUSION), key=lambda row: row["overall"]["top1"])
    best = rows[FUSION_BEST]
    return Claim(
        "the best sampled fusion strategy is at least as good as the best fixed one (trained alone)",
        best["overall"]["top1"] >= fixed["overall"]["top1"],
        f"{best['overall']['top1']:.1%} vs {fixed['title']} {fixed['overall']['top1']:.1%}",
    )


def check_claims(rows: dict[str, dict[str, Any]]) -> list[Claim]:
    """The papers' claims, checked on the validation figures; a claim whose models were not run is left out."""
    checks: list[tuple[tuple[str, ...], Callable[[], Claim]]] = [
        (("tsn", *TEMPORAL_MODELS), lambda: temporal_claim(rows)),
        *(((a, d), lambda a=a, d=d: adafuse_claim(rows, a, d)) for a, d in ADAFUSE_PAIRS),
        (("ada3d", "i3d"), lambda: within(rows, "ada3d", "i3d", ADA3D_MAX_DROP)),
        (("ada3d",), lambda: ada3d_spending_claim(rows)),
        (("i3d", "tsm"), lambda: within(rows, "i3d", "tsm", I3D_MAX_DROP)),
        ((FUSION_BEST, *FIXED_FUSION), lambda: fusion_claim(rows)),
    ]
    return [claim() for needed, claim in checks if all(name in rows for name in needed)]


def markdown(rows: Sequence[dict[str, Any]], claims: Sequence[Claim], seconds: dict[str, float]) -> str:
    """The results table and the claims, in markdown."""
    lines = [
        "| Model | Preset | Top-1 temporal | Top-1 static | Top-1 overall | GFLOPs executed (full) | Policy "
        "| Train min |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for row in rows:
        minutes = seconds.get(f"train-{row['name']}", seconds.get(f"freeze-{row['name']}"))
        lines.append(
            f"| {row['title']} | `{row['architecture']}` | {row['temporal']['top1']:.1%} | {row['static']['top1']:.1%} "
            f"| {row['overall']['top1']:.1%} | {row['overall']['gflops']:.4f} ({row['full_gflops']:.4f}) "
            f"| {policy_text(row)} | {'' if minutes is None else f'{minutes / 60:.1f}'} |"
        )
    if claims:
        lines += ["", "| Claim | Holds | Numbers |", "| --- | --- | --- |"]
    lines += [f"| {claim.text} | {'yes' if claim.holds else '**no**'} | {claim.evidence} |" for claim in claims]
    return "\n".join(lines) + "\n"


def report(runner: Runner, wall_seconds: float) -> tuple[str, list[Claim]]:
    """Collect every model's evaluation, check the claims, write results.md / results.json."""
    work = runner.work
    timings_file = work / "timings.json"
    seconds = {**(json.loads(timings_file.read_text()) if timings_file.is_file() else {}), **runner.seconds}
    timings_file.write_text(json.dumps(seconds, indent=2) + "\n")
    titles = [(recipe.name, recipe.title) for recipe in RECIPES if recipe.name != TEMPLATE]
    titles.append((FUSION_BEST, f"Fusion, best of {FUSION_SAMPLES} sampled"))
    rows = [model_row(work, name, title) for name, title in titles]
    claims = check_claims({row["name"]: row for row in rows})
    text = markdown(rows, claims, seconds)
    load = runner.load or [os.getloadavg()[0]]
    results = {
        "rows": rows,
        "claims": [vars(claim) for claim in claims],
        "step_seconds": seconds,
        "wall_seconds_this_run": wall_seconds,
        "load_average_1min": {"min": min(load), "mean": sum(load) / len(load), "max": max(load)},
        "cpus": os.cpu_count(),
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (work / "results.md").write_text(text)
    return text, claims


def main() -> int:
    """Run (or continue) the benchmark, print the table; exit status 1 when a claim checked does not hold."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "synthetic-benchmark", help="work directory")
    parser.add_argument("--clips-per-class", type=int, default=200, help="training clips per class (default: 200)")
    parser.add_argument("--holdout-per-class", type=int, default=50, help="held-out clips per class (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--jobs", type=int, default=1, help="chains of steps run at once (default: 1)")
    names = [recipe.name for recipe in RECIPES]
    parser.add_argument(
        "--only", nargs="+", choices=names, help="these recipes (and those they start from) only, and their claims"
    )
    args = parser.parse_args()
    runner = Runner(args.work)
    make_data(runner, args.clips_per_class, args.seed, args.holdout_per_class)
    wanted = with_inits(args.only or names)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(lambda steps=steps: [step(runner) for step in steps]) for steps in chains(wanted)]
        failures = [str(future.exception()) for future in futures if future.exception() is not None]
    if failures:  # a chain stops at its first failure; the others run on
        raise SystemExit("\n".join(failures))
    if args.only:
        titles = {recipe.name: recipe.title for recipe in RECIPES}
        rows = [model_row(runner.work, name, titles[name]) for name in sorted(wanted - {TEMPLATE}, key=names.index)]
        claims = check_claims({row["name"]: row for row in rows})
        text = markdown(rows, claims, runner.seconds)
    else:
        text, claims = report(runner, time.perf_counter() - runner.started)
    print(text)
    return 0 if all(claim.holds for claim in claims) else 1


if __name__ == "__main__":
    raise SystemExit(main())
