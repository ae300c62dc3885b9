"""ONNX export of every family: ``clipwise export onnx --model-dir REPO/NAME/VERSION`` writes ``model.onnx``.

The graph (``clipwise.export.graphs``) takes ``clips`` (batch, 3, T, H, W) at the model's configured T and size,
with a dynamic batch, and returns ``logits`` (batch, K), then for the adaptive families the decisions it
executed. Opset 18. The adaptive families' gated steps are operators of the ``clipwise`` domain whose
bodies are stored in the model as ONNX functions (``clipwise.export.ops``): ONNX Runtime runs them as they are.

Exporter: ``torch.onnx.export(dynamo=False)``, the TorchScript-based one, deprecated since torch 2.9 but
the one that keeps a custom operator as one node by name (an ``autograd.Function`` with a ``symbolic``);
the dynamo exporter inlines ONNX functions when it converts opsets, and cannot capture Ada3D's
data-dependent frame count. It also exports the static families about five times faster.

The model carries metadata: the registry architecture, the sha256 of the weights it was exported from
(the ONNX Runtime backend refuses a graph whose weights differ from the version's), and the fixed policy of
a static model that reports one (a frozen fusion strategy). ``export_version`` checks the graph against the
PyTorch model on random clips (logits within 1e-3 relative, the same execution record) before it replaces
the version's ``model.onnx``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from clipwise.export.clip_loop import loop_over_clips
from clipwise.export.graphs import GraphSpec, graph_spec
from clipwise.export.ops import ONNX_OPSET, attach_functions
from clipwise.export.runtime import CLIPS, META_ARCHITECTURE, META_STATIC_POLICY, META_WEIGHTS, MODEL_FILE, OnnxBackend
from clipwise.models.ada3d import Plan
from clipwise.models.base import VideoClassifier
from clipwise.models.checkpoint import LoadedVersion, load_version_dir
from clipwise.models.policy import Policy

RELATIVE_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """An export that failed or does not reproduce the PyTorch model."""


def _trace(spec: GraphSpec, example: torch.Tensor) -> onnx.ModelProto:
    """Trace ``spec.module`` on ``example`` with the TorchScript-based exporter."""
    if spec.per_clip:
        input_name, output_names, dynamic_axes = "clip", [f"clip_{name}" for name in spec.output_names], None
    else:
        input_name, output_names = CLIPS, spec.output_names
        dynamic_axes = {name: {0: "batch"} for name in [CLIPS, *output_names]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")  # inside that exporter
        # Shapes read in Python become constants: expected at a fixed frame count and size, and the export is
        # checked against PyTorch instead.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # TSM's strided slices
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        # mkldnn off: models may call fused oneDNN kernels on CPU, which have no ONNX form; traced, they take
        # the standard path.
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
            torch.onnx.export(
                spec.module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=[input_name],
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
    return onnx.load_from_string(buffer.getvalue())


def to_onnx(model: VideoClassifier, *, weights_sha256: str, plan: Plan | None = None) -> onnx.ModelProto:
    """The ONNX model of ``model`` in eval mode at its configured frames and size (see the module docstring).

    ``plan`` fixes an Ada3D model's actions (benchmarks); AdaFuse follows ``force_saving`` / ``follow_policy``
    when exported inside them.
    """
    config = model.config
    example = torch.randn(1, 3, config.frames, config.size, config.size)
    spec = graph_spec(model, plan)
    proto = _trace(spec, example)
    if spec.per_clip:
        proto = loop_over_clips(proto, CLIPS, spec.output_names)
    attach_functions(proto)
    metadata = {META_ARCHITECTURE: model.preset, META_WEIGHTS: weights_sha256}
    if len(spec.output_names) == 1:
        with torch.no_grad():
            policy = model.forward_with_policy(example)[1]
        if policy is not None:
            metadata[META_STATIC_POLICY] = policy[0].model_dump_json()
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds (atomically) and is removed
    when it fails: ``path`` is complete or untouched."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(staging)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)


def save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    """Write ``proto`` to ``path`` atomically."""
    with staged(path) as staging:
        onnx.save(proto, staging)
    return path


def verify(loaded: LoadedVersion, path: Path) -> None:
    """Raise ``ExportError`` unless the graph at ``path`` gives the model's logits (relative 1e-3) and the
    same execution record on a random clip."""
    config = loaded.model.config
    clips = torch.randn(2, 3, config.frames, config.size, config.size, generator=torch.Generator().manual_seed(0))
    expected = loaded.model.execute(clips)
    got = OnnxBackend(path, loaded).execute(clips)
    scale = expected.logits.abs().max().clamp_min(1e-12)
    error = ((got.logits - expected.logits).abs().max() / scale).item()
    if error > RELATIVE_TOLERANCE:
        raise ExportError(f"{path}: logits differ from PyTorch's by {error:.2e} (relative to the largest)")
    if not policies_agree(expected.policy, got.policy):
        raise ExportError(f"{path}: the graph's policy differs from PyTorch's")


def policies_agree(expected: list[Policy] | None, got: list[Policy] | None) -> bool:
    """The same decisions: every field equal, numbers within a relative 1e-5 (the graph computes in float32),
    except ``executed``, where each backend names how it ran a block in its own terms."""
    if expected is None or got is None:
        return expected is got
    dumps = [[policy.model_dump(exclude={"executed"}) for policy in policies] for policies in (expected, got)]
    return _agree(*dumps)


def _agree(expected: object, got: object) -> bool:
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(_agree(expected[key], got[key]) for key in expected)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(map(_agree, expected, got))
    if isinstance(expected, float) and isinstance(got, float):
        return math.isclose(expected, got, rel_tol=1e-5, abs_tol=1e-9)
    return expected == got


def export_version(version_dir: Path, *, check: bool = True) -> Path:
    """Export a model version (``REPO/NAME/VERSION``, or ``REPO/NAME`` for the newest) to its ``model.onnx``;
    unless ``check`` is off, the graph replaces an earlier one only once it matches PyTorch. Returns the path."""
    loaded = load_version_dir(version_dir)
    proto = to_onnx(loaded.model, weights_sha256=loaded.manifest.weights_sha256)
    path = loaded.path / MODEL_FILE
    with staged(path) as staging:
        onnx.save(proto, staging)
        if check:
            verify(loaded, staging)
    return path
