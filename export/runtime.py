"""Backends that run a model version: ``torch`` (the model's own ``execute``) and ``onnxruntime``.

Both are a ``Runner``: ``execute(clips)`` returns a ``models.base.Execution`` (logits, executed GFLOPs per
clip, full-compute GFLOPs, per-clip policy), so a caller treats them alike. ``OnnxRunner`` runs the
version's ``model.onnx`` (``clipwise export onnx``) in an ONNX Runtime session and computes the figures
and the policy from the decisions the graph outputs (``export.decoding``), with the model's own code.

ONNX Runtime is imported only when an ``OnnxRunner`` is made, so the torch backend needs none of the export
extra. Providers: CUDA when the installed onnxruntime has it (onnxruntime-gpu), then CPU; the CPU provider
uses as many threads as torch does, so the two backends compare on equal terms, and its idle threads do not
spin (spinning threads took the cores from torch running beside them: eager latency rose 10-500× in the
benchmark's interleaved runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import onnx
import torch
from pydantic import TypeAdapter

from export.decoding import decoder_for
from models.adafuse import AdaFuse
from models.base import Execution, VideoClassifier
from models.checkpoint import LoadedVersion
from models.policy import Policy

BACKENDS = ("torch", "onnxruntime")
MODEL_FILE = "model.onnx"
CLIPS = "clips"
# Keys of the metadata an exported model carries (``export.onnx``).
META_ARCHITECTURE = "clipwise.architecture"
META_WEIGHTS = "clipwise.weights_sha256"
META_STATIC_POLICY = "clipwise.static_policy"


class BackendUnavailable(RuntimeError):
    """A backend that cannot run this model here: no exported graph, or no runtime installed."""


class Runner(Protocol):
    """Runs one model version: ``name`` is the backend's, ``execute`` one inference pass with its cost."""

    name: str

    def execute(self, clips: torch.Tensor) -> Execution: ...

    def calibrate(self, clip_shape: Sequence[int]) -> float | None:
        """Prepare to serve clips of ``clip_shape`` (C, T, H, W) on this machine; the milliseconds of one clip
        through the full-compute path, or None where it cannot be timed. Called when a version loads."""
        ...


FULL_COMPUTE_REPEATS = 5


def median_ms(call: Callable[[], object], repeats: int = FULL_COMPUTE_REPEATS) -> float:
    """Median wall time of ``call`` in milliseconds, after one unmeasured call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class TorchRunner:
    """The model's own eager ``execute``; on CUDA, AdaFuse's gated pairs run as Triton kernels when Triton is
    installed (``export.triton_gating``)."""

    name = "torch"

    def __init__(self, model: VideoClassifier) -> None:
        self.model = model

    def execute(self, clips: torch.Tensor) -> Execution:
        with gpu_gating(self.model, clips):
            return self.model.execute(clips)

    def calibrate(self, clip_shape: Sequence[int]) -> float:
        """Calibrate the model's adaptive executor at this clip shape; time one clip through full compute."""
        frames, size = clip_shape[1], clip_shape[-1]
        self.model.calibrate(frames, size)
        clip = torch.randn(1, *clip_shape, generator=torch.Generator().manual_seed(0))
        with self.model.full_compute():
            return median_ms(lambda: self.execute(clip))


def gpu_gating(model: VideoClassifier, clips: torch.Tensor) -> contextlib.AbstractContextManager:
    """The Triton kernels for an AdaFuse model's gated pairs on CUDA clips, where Triton is installed."""
    if not (isinstance(model, AdaFuse) and clips.is_cuda and importlib.util.find_spec("triton")):
        return contextlib.nullcontext()
    from export.triton_gating import gated_conv_pair
    from models.adafuse import executing_gated_pairs

    return executing_gated_pairs(gated_conv_pair)


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [provider for provider in ("CUDAExecutionProvider", "CPUExecutionProvider") if provider in available]


class OnnxRunner:
    """A version's exported graph in an ONNX Runtime session, reporting like ``VideoClassifier.execute``.

    ``path`` must hold the export of the weights of ``loaded`` (checked against the graph's metadata); its
    model decodes the decisions (on a meta-device twin) and its manifest gives the full-compute cost.
    """

    name = "onnxruntime"

    def __init__(
        self, path: Path, loaded: LoadedVersion, *, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        if not path.is_file():
            raise BackendUnavailable(f"no {path}: run `clipwise export onnx --model-dir {path.parent}`")
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed (pip install 'clipwise[export]')") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the service runs torch, decoding and other sessions beside it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.options, self.providers_asked = options, list(providers or default_providers())
        self.session = onnxruntime.InferenceSession(str(path), options, providers=self.providers_asked)
        metadata = self.session.get_modelmeta().custom_metadata_map
        manifest = loaded.manifest
        if metadata.get(META_WEIGHTS) != manifest.weights_sha256:
            raise BackendUnavailable(f"{path} was exported from other weights than its manifest's: export it again")
        static_policy = metadata.get(META_STATIC_POLICY)
        self.graph = onnx.load(str(path)) if isinstance(loaded.model, AdaFuse) else None  # to recalibrate
        self.model = loaded.model
        self.decoder = decoder_for(
            loaded.model,
            manifest.full_gflops,
            TypeAdapter(Policy).validate_json(static_policy) if static_policy else None,
            self.graph,
        )
        self.full_gflops = manifest.full_gflops

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def calibrate(self, clip_shape: Sequence[int]) -> None:
        """An AdaFuse graph: time each gated node's two computations here and set its union thresholds
        (``export.calibration``), then reopen the session on the calibrated graph. No full-compute graph exists
        to time: an exported graph holds its policy path only."""
        if self.graph is None:
            return None
        import onnxruntime

        from export.calibration import calibrate_thresholds, set_union_thresholds

        set_union_thresholds(self.graph, calibrate_thresholds(self.model, clip_shape[1], clip_shape[-1], self.options))
        self.session = onnxruntime.InferenceSession(
            self.graph.SerializeToString(), self.options, providers=self.providers_asked
        )
        self.decoder = decoder_for(self.model, self.full_gflops, None, self.graph)
        return None

    def execute(self, clips: torch.Tensor) -> Execution:
        outputs = self.session.run(None, {CLIPS: clips.detach().cpu().float().contiguous().numpy()})
        gflops, policy = self.decoder(outputs)
        return Execution(torch.from_numpy(outputs[0]), gflops, self.full_gflops, policy)


def open_runner(loaded: LoadedVersion, backend: str, **session_options) -> Runner:
    """The runner of a loaded version on ``backend`` (one of ``BACKENDS``); raises ``BackendUnavailable``."""
    if backend == "torch":
        return TorchRunner(loaded.model)
    if backend == "onnxruntime":
        return OnnxRunner(loaded.path / MODEL_FILE, loaded, **session_options)
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
