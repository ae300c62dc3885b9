"""Build the default model repository that ships with Clipwise (``model_repository/``) and the sample clips of
``examples/`` from the synthetic benchmark's trained models.

The recipe is the benchmark's (``benchmarks/synthetic.py``): this script runs it, or continues it, in its work
directory, then copies one trained version per family into the repository as version 1, manifests untouched
(trained, validation metrics, data fingerprint, git commit of the training run):

=========================  ============================  ==========================================
served name                benchmark model               what it is
=========================  ============================  ==========================================
tsn_r18_tiny               tsn                           TSN-R18 (frame averaging: blind to order)
tsm_r18_tiny               tsm                           TSM-R18
adafuse_tsn_r18_tiny       adafuse_tsn                   AdaFuse-TSN-R18, started from tsn
ada3d_i3d_r50_tiny         ada3d                         Ada3D on I3D-R50, started from i3d
e3d_s_tiny                 e3d                           E3D-S
ctnet_r50_tiny             ctnet                         CT-Net-R50
fusion_densenet121_tiny    fusion_best                   the best sampled fusion strategy, frozen
tsn_r18_small              tsn_small                     TSN-R18 at width 32, 8×112²
adafuse_tsn_r18_small      adafuse_small                 execution-aware AdaFuse-TSN-R18, started from
                                                         tsn_small; its manifest names it as counterpart
=========================  ============================  ==========================================

The sample clips are validation clips of the benchmark's dataset: for each class of ``SAMPLE_CLASSES``, the
first one that every bundled model able to tell that class classifies correctly (TSN cannot tell a direction
of motion, so it is not asked to on the moving clip).

    .venv/bin/python scripts/bundle_defaults.py [--work runs/synthetic-benchmark] [--jobs 2]
    .venv/bin/python scripts/bundle_defaults.py --work WORK --only tsn_r18_small adafuse_tsn_r18_small
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipwise.models.checkpoint import MANIFEST_FILE, LoadedVersion, load_version, read_manifest, validate_name  # noqa: E402
from clipwise.training.data import DatasetFiles, read_annotations, read_labels  # noqa: E402
from clipwise.training.synthetic import TEMPORAL_CLASSES  # noqa: E402
from clipwise.video import ClipSpec, load_clips  # noqa: E402

DEFAULT_REPOSITORY = ROOT / "model_repository"
DEFAULT_WORK = ROOT / "runs" / "synthetic-benchmark"
EXAMPLES = ROOT / "examples"
BUNDLED = {  # served name -> benchmark model
    "tsn_r18_tiny": "tsn",
    "tsm_r18_tiny": "tsm",
    "adafuse_tsn_r18_tiny": "adafuse_tsn",
    "ada3d_i3d_r50_tiny": "ada3d",
    "e3d_s_tiny": "e3d",
    "ctnet_r50_tiny": "ctnet",
    "fusion_densenet121_tiny": "fusion_best",
    "tsn_r18_small": "tsn_small",
    "adafuse_tsn_r18_small": "adafuse_small",
}
# adaptive model -> the dense one of the same size users would deploy (Ada3D: its own backbone, in benchmarks)
COUNTERPARTS = {"adafuse_tsn_r18_tiny": "tsn_r18_tiny", "adafuse_tsn_r18_small": "tsn_r18_small"}
ORDER_BLIND = {"tsn_r18_tiny", "tsn_r18_small", "adafuse_tsn_r18_small"}  # averaging frames (no reuse learned)
SAMPLE_CLASSES = ("moving_right", "static_circle")


def run_benchmark(work: Path, jobs: int) -> None:
    """Train and evaluate every benchmark model in ``work`` (continues a run; skips what is done)."""
    command = [sys.executable, str(ROOT / "benchmarks" / "synthetic.py"), "--work", str(work), "--jobs", str(jobs)]
    subprocess.run(command, check=True)


def copy_versions(work: Path, repository: Path, names: list[str]) -> None:
    """Each named bundled model's trained version from the benchmark, as version 1 of ``repository/NAME``; an
    adaptive model's manifest gains its dense counterpart (the weights, and so their sha256, are untouched)."""
    for name in names:
        target = repository / validate_name(name)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work / "repo" / BUNDLED[name] / "1", target / "1")
        if name in COUNTERPARTS:
            manifest = read_manifest(target / "1").model_copy(update={"counterpart": COUNTERPARTS[name]})
            (target / "1" / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        weights = target / "1" / "weights.safetensors"
        print(f"{target}: {weights.stat().st_size / 1e6:.2f} MB")


def predicted_label(loaded: LoadedVersion, video: Path) -> str:
    """The top class of a video, made into one clip as the service makes it."""
    spec = ClipSpec(**loaded.manifest.preprocessing.to_dict())
    logits = loaded.model.eval().execute(load_clips(video.read_bytes(), spec).clips).logits
    return loaded.manifest.labels[int(logits[0].argmax())]


def choose_samples(work: Path, repository: Path) -> None:
    """Copy, per sample class, the first validation clip every able bundled model gets right."""
    files = DatasetFiles.find(work / "data")
    labels = read_labels(files.classes)
    records = read_annotations(files.val, labels)
    models = {name: load_version(repository, name) for name in BUNDLED}
    EXAMPLES.mkdir(exist_ok=True)
    for label in SAMPLE_CLASSES:
        judges = [model for name, model in models.items() if not (label in TEMPORAL_CLASSES and name in ORDER_BLIND)]
        candidates = (record.path for record in records if labels[record.label] == label)
        chosen = next(video for video in candidates if all(predicted_label(m, video) == label for m in judges))
        shutil.copyfile(chosen, EXAMPLES / f"{label}.mp4")
        print(f"{EXAMPLES / f'{label}.mp4'}: {chosen.relative_to(work)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="repository to write")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="the benchmark's work directory")
    parser.add_argument("--jobs", type=int, default=1, help="benchmark chains run at once (default: 1)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(BUNDLED),
        help="copy just these models from a work directory whose recipes for them are done (no benchmark run, "
        "examples/ unchanged)",
    )
    args = parser.parse_args()
    if args.only:
        copy_versions(args.work, args.repository, args.only)
        return
    run_benchmark(args.work, args.jobs)
    copy_versions(args.work, args.repository, list(BUNDLED))
    choose_samples(args.work, args.repository)


if __name__ == "__main__":
    main()
