"""TensorRT engines from exported graphs: ``clipwise export tensorrt --model-dir REPO/NAME/VERSION``.

Builds ``model.plan`` from the version's ``model.onnx`` (``clipwise export onnx`` first) with an
optimisation profile over the batch size (1 … ``max_batch``, tuned for ``opt_batch``), FP32 unless asked
for FP16. The ``clipwise`` gating operators of the adaptive families are either

* ``expand`` (default): replaced by their ONNX function bodies (``onnx.inliner``), standard ops TensorRT
  parses itself (NonZero, Gather, Scan, ScatterND, If, Conv); or
* ``plugin``: kept as nodes, which TensorRT's ONNX parser binds to plugins registered under the operator
  names (``GatedConvPair``, ``SelectFrames``, ``SwitchableConv3d``, version "1"), loaded from the shared
  libraries given with ``--plugin-library``.

TensorRT is imported only here, only when this command runs. It was not available where Clipwise was
developed (its wheels download from NVIDIA's index, which those machines cannot reach), so engine building
has not been run there; what runs everywhere is the expansion of the gating operators, checked against
ONNX Runtime by the tests.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import onnx
import onnx.inliner

from clipwise.export.ops import DOMAIN
from clipwise.export.runtime import CLIPS

ENGINE_FILE = "model.plan"
GATING_MODES = ("expand", "plugin")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (the ``tensorrt`` Python package) is not installed here."""


def expand_gating(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every ``clipwise`` operator replaced by its function body: standard ops only."""
    expanded = onnx.inliner.inline_local_functions(model)
    del expanded.opset_import[:]
    expanded.opset_import.extend(entry for entry in model.opset_import if entry.domain != DOMAIN)
    return expanded


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install tensorrt` on a machine with an NVIDIA GPU and CUDA "
            "(the ONNX Runtime backend needs nothing more than `pip install 'clipwise[export]'`)"
        ) from None
    return tensorrt


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    gating: str = "expand",
    plugin_libraries: Sequence[Path] = (),
    max_batch: int = 8,
    opt_batch: int = 1,
    fp16: bool = False,
    workspace_gib: float = 4.0,
) -> Path:
    """Build and write a serialized TensorRT engine for the graph at ``onnx_path``; see the module docstring."""
    if gating not in GATING_MODES:
        raise ValueError(f"gating must be one of {GATING_MODES}, not {gating!r}")
    trt = _import_tensorrt()
    if not onnx_path.is_file():
        raise RuntimeError(f"no {onnx_path}: run `clipwise export onnx --model-dir {onnx_path.parent}` first")
    logger = trt.Logger(trt.Logger.WARNING)
    for library in plugin_libraries:
        ctypes.CDLL(str(library))
    trt.init_libnvinfer_plugins(logger, "")
    model = onnx.load(onnx_path)
    if gating == "expand":
        model = expand_gating(model)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    clip_shape = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(CLIPS, (1, *clip_shape), (opt_batch, *clip_shape), (max_batch, *clip_shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT could not build an engine for {onnx_path} (see its log above)")
    engine_path.write_bytes(bytes(engine))
    return engine_path
