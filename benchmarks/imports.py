"""What ``clipwise import`` gives for each supported source × preset (issue 15): logit agreement with the source,
FLOPs against the source's published figure, and the import time.

* PyTorchVideo rows use PyTorchVideo's own hub models (``tests/pytorchvideo_hub.py``), random weights, BN
  statistics and biases, saved in the hub format; agreement is the maximum absolute logit difference over the
  largest absolute logit of PyTorchVideo's forward, on one random clip of the builder's shape, after the version
  is loaded as the server loads it.
* mmaction2, PySlowFast and torchvision rows use files written in their layouts (``tests/source_layouts.py``):
  their code does not install here, so there is no forward to agree with (the tests check that every tensor
  lands where it left).
* GFLOPs: the version's own count at its clip (the manifest's ``full_gflops``: what ``clipwise flops`` reports
  for the imported network) and the count at the input of the published figure, beside that figure.
* Import time: ``clipwise.models.imports.import_version`` in this process (read, place, write the version, count its
  FLOPs), the median of ``--repeats`` runs; the command adds Python's and torch's start-up.

    .venv/bin/python benchmarks/imports.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pytorchvideo_hub import hub, hub_logits, randomised, save_hub_checkpoint  # noqa: E402
from source_layouts import in_layout  # noqa: E402

from clipwise.cli import main as clipwise  # noqa: E402
from clipwise.models import create_model  # noqa: E402
from clipwise.models.checkpoint import load_version_dir  # noqa: E402
from clipwise.models.imports import SOURCES, import_version  # noqa: E402
from clipwise.models.labels import bundled_labels  # noqa: E402

KINETICS = bundled_labels("kinetics400")
IMAGENET = [f"imagenet class {index}" for index in range(1000)]


@dataclass(frozen=True)
class Row:
    source: str
    preset: str
    published: float | None  # GFLOPs of one view as the source publishes it
    frames: int  # input of that figure
    size: int
    where: str  # where the figure is published
    builder: str = ""  # PyTorchVideo hub builder


ROWS = (
    Row("pytorchvideo", "x3d_s", 2.96, 13, 182, "PyTorchVideo model zoo (×3×10 views, 3-crop test size)", "x3d_s"),
    Row("pytorchvideo", "x3d_m", 6.72, 16, 256, "PyTorchVideo model zoo", "x3d_m"),
    Row("pytorchvideo", "x3d_l", None, 16, 312, "not in PyTorchVideo's table", "x3d_l"),
    Row("pytorchvideo", "slowonly_r50", 54.52, 8, 256, "PyTorchVideo model zoo", "slow_r50"),
    Row("pytorchvideo", "i3d_r50", 37.53, 8, 256, "PyTorchVideo model zoo", "i3d_r50"),
    Row("pyslowfast", "x3d_s", 1.96, 13, 160, "PySlowFast MODEL_ZOO.md"),
    Row("pyslowfast", "x3d_m", 4.73, 16, 224, "PySlowFast MODEL_ZOO.md"),
    Row("pyslowfast", "x3d_l", 18.37, 16, 312, "PySlowFast MODEL_ZOO.md"),
    Row("pyslowfast", "slowonly_r50", None, 8, 224, "no figure (its zoo file is a Caffe2 .pkl)"),
    Row("pyslowfast", "i3d_r50", None, 8, 224, "no figure (its zoo file is a Caffe2 .pkl)"),
    Row("mmaction2", "tsn_r50", 102.7, 25, 224, "mmaction2 metafile (1x1x8; 25 test segments)"),
    Row("mmaction2", "tsm_r50", 32.88, 8, 224, "mmaction2 metafile (1x1x8)"),
    Row("mmaction2", "i3d_r50", 43.5, 32, 256, "mmaction2 metafile (32x2x1)"),
    Row("mmaction2", "slowonly_r50", 54.75, 8, 256, "mmaction2 metafile (8x8x1)"),
    Row("torchvision", "tsn_r50", 8 * 4.09, 8, 224, "torchvision docs: ResNet-50 4.09 per image, ×8 frames"),
)


def source_file(row: Row, directory: Path) -> tuple[Path, torch.nn.Module | None]:
    """The checkpoint of a row and, for PyTorchVideo, the model that wrote it."""
    path = directory / f"{row.source}-{row.preset}{SOURCES[row.source].suffix}"
    if row.builder:
        model = randomised(getattr(hub(), row.builder)())
        return save_hub_checkpoint(model, path), model
    classes = len(IMAGENET if row.source == "torchvision" else KINETICS)
    state = in_layout(row.source, randomised(create_model(row.preset, num_classes=classes)))
    container = SOURCES[row.source].container
    torch.save({container: state} if container else state, path)
    return path, None


def flops_at(preset: str, kwargs: dict, frames: int, size: int) -> float:
    """``clipwise flops`` of the imported network (its manifest's fields) at another input."""
    fields = {key: value for key, value in kwargs.items() if key not in ("num_classes", "frames", "size")}
    args = ["flops", "--model", preset, "--frames", str(frames), "--size", str(size), "--json"]
    args += ["--classes", str(kwargs["num_classes"]), "--model-args", json.dumps(fields)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        clipwise(args)
    return json.loads(out.getvalue())["gflops"]


def measure(row: Row, directory: Path, repeats: int) -> dict:
    directory.mkdir(parents=True)
    checkpoint, source = source_file(row, directory)
    labels = IMAGENET if row.source == "torchvision" else KINETICS
    times, version = [], None
    for attempt in range(repeats):
        started = time.perf_counter()
        version = import_version(row.source, checkpoint, row.preset, labels, directory / f"repo-{attempt}" / "m")
        times.append(time.perf_counter() - started)
    loaded = load_version_dir(version)
    agreement = None
    if source is not None:
        spec = loaded.manifest.preprocessing
        clip = torch.randn(
            1, 3, spec.frames, spec.crop_size, spec.crop_size, generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            got, expected = loaded.model(clip), hub_logits(source, clip)
        agreement = ((got - expected).abs().max() / expected.abs().max()).item()
    manifest = loaded.manifest
    return {
        "source": row.source,
        "preset": row.preset,
        "agreement": agreement,
        "own_gflops": manifest.full_gflops,
        "own_input": f"{manifest.preprocessing.frames}×{manifest.preprocessing.crop_size}²",
        "gflops_at_published_input": flops_at(row.preset, manifest.kwargs, row.frames, row.size),
        "published_input": f"{row.frames}×{row.size}²",
        "published": row.published,
        "where": row.where,
        "import_s": statistics.median(times),
        "file_mb": checkpoint.stat().st_size / 2**20,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| source | preset | max rel. logit diff | GFLOPs at its clip | GFLOPs at the published input | published "
        "| import (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        agreement = f"{r['agreement']:.1e}" if r["agreement"] is not None else "— (no code here)"
        published = f"{r['published']:.2f} ({r['where']})" if r["published"] else f"— ({r['where']})"
        lines.append(
            f"| {r['source']} | `{r['preset']}` | {agreement} | {r['own_gflops']:.3f} ({r['own_input']}) "
            f"| {r['gflops_at_published_input']:.2f} ({r['published_input']}) | {published} | {r['import_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="imports per row (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        results = []
        for row in ROWS:
            results.append(measure(row, Path(work) / f"{row.source}-{row.preset}", args.repeats))
            print(f"{row.source} {row.preset}: done", file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
