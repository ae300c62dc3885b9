"""Backends that run a model version: ``torch`` (the model's own ``execute``) and ``onnxruntime``.

Both are a ``Backend``: ``execute(clips)`` returns a ``clipwise.models.base.Execution`` (logits, executed GFLOPs per
clip, full-compute GFLOPs, per-clip policy), so a caller treats them alike. ``OnnxBackend`` runs the
version's ``model.onnx`` (``clipwise export onnx``) in an ONNX Runtime session and computes the figures
and the policy from the decisions the graph outputs (``clipwise.export.decoding``), with the model's own code.

Both run on a device (``clipwise.models.device``: ``cpu``, ``cuda:N``); a backend's ``label`` names what ran, as a
response reports it: ``torch`` / ``torch-cuda``, ``onnxruntime`` (CPU provider) / ``onnxruntime-cuda`` /
``onnxruntime-tensorrt`` (``LABELS``). On CUDA the torch backend copies clips from pinned memory, runs each
worker thread on its own CUDA stream, and runs a model's gated pairs as the Triton kernels of
``clipwise.export.triton_gating`` where Triton is installed.

ONNX Runtime is imported only when an ``OnnxBackend`` is made, so the torch backend needs none of the export
extra. Providers follow the device: the CPU provider on ``cpu``; on ``cuda:N`` (onnxruntime-gpu) the
TensorRT provider first where the ``tensorrt`` package imports, then CUDA, then CPU for what they leave.
ONNX Runtime expands the clipwise-domain functions (``clipwise.export.ops``) into their standard ops for a provider
that does not claim them. The CPU provider uses as many threads as torch does, so the two backends compare
on equal terms, and its idle threads do not spin (spinning threads take the cores from torch running beside
them). Its graph has its 3D convs rewritten as 2D convs over frames (``clipwise.export.frame_convs``), which
ONNX Runtime runs faster.

``OpenVinoBackend`` compiles the same ``model.onnx`` with OpenVINO (CPU plugin; GPU where present), imported
only when one is made. OpenVINO reads ONNX directly but not the clipwise-domain operators as model-local
functions (their outputs lose their rank), so the functions are inlined first (``onnx.inliner``): a clip
plan's ``SelectFrames`` and ``SwitchableConv3d`` then run as the standard nodes they are made of, inside the graph's
Loop. Gated pairs cannot run there: their union convolutions gather their weights per request, and the CPU plugin
refuses a convolution whose weights have a dynamic shape; rather than run it densely, the backend is
unavailable for it, with that reason. One compiled model has one infer request per worker slot
(``concurrency``: the service's ``max_concurrent_inferences``), so concurrent jobs never share one; f32
(the CPU plugin would pick bf16 where the processor has it, which the export's parity does not allow), as
many threads as torch, the latency hint, no core pinning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from pydantic import TypeAdapter

from clipwise.export.gpu import gated_pairs_on, triton_installed
from clipwise.models.base import Execution, VideoClassifier
from clipwise.models.checkpoint import LoadedVersion
from clipwise.models.policy import Policy

if TYPE_CHECKING:  # onnx and what reads graphs come with the export extra: imported by the graph backends only
    import onnx

    from clipwise.export.decoding import Decoder

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
PROVIDER_LABELS = {  # ONNX Runtime's provider that ran -> the backend's label
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime-cuda",
    "TensorrtExecutionProvider": "onnxruntime-tensorrt",
}
LABELS = ("torch", "torch-cuda", *PROVIDER_LABELS.values(), "openvino")  # what a response names as the backend that ran
MODEL_FILE = "model.onnx"
CLIPS = "clips"
# Keys of the metadata an exported model carries (``clipwise.export.onnx``).
META_ARCHITECTURE = "clipwise.architecture"
META_WEIGHTS = "clipwise.weights_sha256"
META_STATIC_POLICY = "clipwise.static_policy"


class BackendUnavailable(RuntimeError):
    """A backend that cannot run this model here: no exported graph, or no runtime installed."""


class Backend(Protocol):
    """Runs one model version: ``name`` is the backend's (one of ``BACKENDS``), ``label`` what ran it (one of
    ``LABELS``: the backend and, off the CPU, its device or provider), ``execute`` one inference pass with its
    cost."""

    name: str
    label: str

    def execute(self, clips: torch.Tensor) -> Execution: ...

    def calibrate(self, clip_shape: Sequence[int]) -> None:
        """Time, on this machine, the computations the backend chooses between when it serves clips of
        ``clip_shape`` (C, T, H, W), and keep its choices. Called when a version loads."""
        ...

    def time_full_compute(self, clip_shape: Sequence[int]) -> float | None:
        """The milliseconds of one clip of ``clip_shape`` through the full-compute path, or None where the
        backend has none (an exported graph holds its policy path only)."""
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


def interleaved_ms(
    calls: Mapping[str, Callable[[], object]], rounds: int, budget_s: float = float("inf")
) -> tuple[dict[str, float], int]:
    """Median wall time of each call in milliseconds over up to ``rounds`` rounds of one call each (the order
    alternating between rounds, so drifting load falls on all alike), stopping early once ``budget_s`` is spent
    (at least one round). Returns the medians and the rounds run; warm the calls up first."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    for index in range(rounds):
        order = list(calls.items()) if index % 2 == 0 else list(calls.items())[::-1]
        for name, call in order:
            begun = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - begun) * 1000)
        if time.perf_counter() - started >= budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}, len(times[next(iter(times))])


class TorchBackend:
    """The model's own eager ``execute`` on ``device`` (the model is moved there).

    On CUDA, clips go over from pinned host memory and each worker thread runs on a CUDA stream of its own, so
    concurrent requests overlap on the GPU without sharing a stream; logits come back to the host before
    ``execute`` returns. A model's gated pairs run as the Triton kernels there (``gated_pairs_on``).
    """

    name = "torch"

    def __init__(self, model: VideoClassifier, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.label = "torch" if self.device.type == "cpu" else f"torch-{self.device.type}"
        self.kernels = self.device.type == "cuda" and triton_installed()
        gated = model.capabilities.policy == "gated_pairs"
        if self.device.type == "cuda" and gated and not self.kernels:
            logger.warning("Triton is not installed: gated pairs run the eager executor on %s", self.device)
        self._streams = threading.local()
        self._pairs = gated_pairs_on if self.kernels and gated else None

    def execute(self, clips: torch.Tensor) -> Execution:
        if self.device.type != "cuda":
            return self.model.execute(clips.to(self.device))
        pairs = self._pairs(self.device) if self._pairs else contextlib.nullcontext()
        with torch.cuda.stream(self._stream()), pairs:
            if clips.device.type == "cpu" and not clips.is_pinned():
                clips = clips.pin_memory()
            execution = self.model.execute(clips.to(self.device, non_blocking=True))
            return dataclasses.replace(execution, logits=execution.logits.cpu())  # waits for this stream only

    def _stream(self) -> torch.cuda.Stream:
        """This thread's CUDA stream on the backend's device (a worker slot is a thread)."""
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.device)
        return stream

    def calibrate(self, clip_shape: Sequence[int]) -> None:
        """Calibrate the model's adaptive executor at this clip shape (not where the Triton kernels replace the
        eager executor: they choose nothing)."""
        if self._pairs is None:
            self.model.calibrate(clip_shape[1], clip_shape[-1])

    def time_full_compute(self, clip_shape: Sequence[int]) -> float:
        clip = torch.randn(1, *clip_shape, generator=torch.Generator().manual_seed(0))
        with self.model.full_compute():
            return median_ms(lambda: self.execute(clip))


def export_decoder(
    path: Path, loaded: LoadedVersion, metadata: Mapping[str, str], graph: onnx.ModelProto | None
) -> Decoder:
    """The decoder of the outputs of ``path`` (``graph``, needed for gated pairs), an export of ``loaded`` whose
    metadata is ``metadata``; raises ``BackendUnavailable`` if it was exported from other weights."""
    from clipwise.export.decoding import decoder_for

    if metadata.get(META_WEIGHTS) != loaded.manifest.weights_sha256:
        raise BackendUnavailable(f"{path} was exported from other weights than its manifest's: export it again")
    static_policy = metadata.get(META_STATIC_POLICY)
    policy = TypeAdapter(Policy).validate_json(static_policy) if static_policy else None
    return decoder_for(loaded.model, loaded.manifest.full_gflops, policy, graph)


def providers_for(device: torch.device) -> list:
    """ONNX Runtime's providers for ``device``: the CPU's; on CUDA, TensorRT where the ``tensorrt`` package
    imports and this onnxruntime has its provider, then CUDA on that GPU, then the CPU for what they leave.
    Raises ``BackendUnavailable`` on CUDA when this onnxruntime has no CUDA provider (not onnxruntime-gpu)."""
    import onnxruntime

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise BackendUnavailable(
            f"onnxruntime {onnxruntime.__version__} has no CUDA execution provider (providers: {', '.join(available)})"
            ": install onnxruntime-gpu in its place to run on CUDA"
        )
    on_gpu = {"device_id": device.index or 0}
    providers: list = [("CUDAExecutionProvider", on_gpu), "CPUExecutionProvider"]
    if "TensorrtExecutionProvider" in available and importlib.util.find_spec("tensorrt") is not None:
        providers.insert(0, ("TensorrtExecutionProvider", on_gpu))
    return providers


class OnnxBackend:
    """A version's exported graph in an ONNX Runtime session, reporting like ``VideoClassifier.execute``.

    ``path`` must hold the export of the weights of ``loaded`` (checked against the graph's metadata); its
    model decodes the decisions (on a meta-device twin) and its manifest gives the full-compute cost. The
    session runs on ``device`` (``providers_for``) unless ``providers`` names others.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        loaded: LoadedVersion,
        *,
        device: torch.device | str = "cpu",
        providers: Sequence | None = None,
        threads: int | None = None,
    ) -> None:
        if not path.is_file():
            raise BackendUnavailable(f"no {path}: run `clipwise export onnx --model-dir {path.parent}`")
        try:
            import onnx
            import onnxruntime
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed (pip install 'clipwise[export]')") from None
        from clipwise.export.frame_convs import fold_frame_convs

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the service runs torch, decoding and other sessions beside it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.options, self.providers_asked = options, list(providers or providers_for(torch.device(device)))
        # its 3D convs as 2D convs over frames, which ONNX Runtime runs faster (OpenVINO, slower: it reads the file)
        graph = fold_frame_convs(onnx.load(str(path)))
        self._open_session(graph)
        self.label = PROVIDER_LABELS.get(self.providers[0], self.name)
        self.graph = graph if loaded.model.capabilities.policy == "gated_pairs" else None  # to calibrate
        self.model = loaded.model
        self.decoder = export_decoder(path, loaded, self.session.get_modelmeta().custom_metadata_map, self.graph)
        self.full_gflops = loaded.manifest.full_gflops

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _open_session(self, graph: onnx.ModelProto) -> None:
        import onnxruntime

        serialized = graph.SerializeToString()
        self.session = onnxruntime.InferenceSession(serialized, self.options, providers=self.providers_asked)

    def calibrate(self, clip_shape: Sequence[int]) -> None:
        """A graph of gated nodes: time each node's two computations here and set its union thresholds
        (``clipwise.export.calibration``), then open the session again on the calibrated graph."""
        from clipwise.export.calibration import calibrate_thresholds, gated_nodes, set_union_thresholds
        from clipwise.export.decoding import GatedPairDecoder

        if self.graph is None or not gated_nodes(self.graph):  # a full-compute export: nothing gated
            return
        # Timed on the session's providers, less TensorRT (it would build an engine for every probe graph).
        probes = [entry for entry in self.providers_asked if _provider_name(entry) != "TensorrtExecutionProvider"]
        thresholds = calibrate_thresholds(self.model, clip_shape[1], clip_shape[-1], self.options, probes)
        set_union_thresholds(self.graph, thresholds)
        self._open_session(self.graph)
        if isinstance(self.decoder, GatedPairDecoder):  # it decodes with the nodes' thresholds: the new ones
            self.decoder.union_below = list(thresholds)

    def time_full_compute(self, clip_shape: Sequence[int]) -> None:
        return None

    def execute(self, clips: torch.Tensor) -> Execution:
        outputs = self.session.run(None, {CLIPS: clips.detach().cpu().float().contiguous().numpy()})
        gflops, policy = self.decoder(outputs)
        return Execution(torch.from_numpy(outputs[0]), gflops, self.full_gflops, policy)


class OpenVinoBackend:
    """A version's exported graph compiled by OpenVINO, reporting like ``VideoClassifier.execute`` (see the
    module docstring). ``path`` must hold the export of the weights of ``loaded``."""

    name = label = "openvino"

    def __init__(self, path: Path, loaded: LoadedVersion, *, concurrency: int = 1, threads: int | None = None) -> None:
        if not path.is_file():
            raise BackendUnavailable(f"no {path}: run `clipwise export onnx --model-dir {path.parent}`")
        try:
            import onnx
            import onnx.inliner
            import openvino
        except ImportError:
            raise BackendUnavailable("openvino is not installed (pip install 'clipwise[openvino]')") from None
        if loaded.model.capabilities.policy == "gated_pairs":
            raise BackendUnavailable(
                f"OpenVINO cannot run {type(loaded.model).__name__}'s gated convolutions (their weights are gathered "
                "per request, a dynamic weight shape its CPU plugin refuses): serve it on torch or onnxruntime"
            )
        graph = onnx.load(str(path))
        self.decoder = export_decoder(path, loaded, {entry.key: entry.value for entry in graph.metadata_props}, graph)
        self.full_gflops = loaded.manifest.full_gflops
        self.output_names = [output.name for output in graph.graph.output]
        core = openvino.Core()
        self.device = "GPU" if "GPU" in core.available_devices else "CPU"
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.device == "CPU":
            config |= {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "ENABLE_CPU_PINNING": False}
        inlined = onnx.inliner.inline_local_functions(graph)
        self.compiled = core.compile_model(core.read_model(inlined.SerializeToString()), self.device, config)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # one per worker slot
        for _ in range(max(1, concurrency)):
            self._requests.put(self.compiled.create_infer_request())

    def calibrate(self, clip_shape: Sequence[int]) -> None:
        """Nothing to calibrate: OpenVINO runs no gated node."""

    def time_full_compute(self, clip_shape: Sequence[int]) -> None:
        return None

    def execute(self, clips: torch.Tensor) -> Execution:
        request = self._requests.get()
        try:
            results = request.infer({CLIPS: clips.detach().cpu().float().contiguous().numpy()})
            by_name = {name: value for output, value in results.items() for name in output.get_names()}
            outputs = [by_name[name].copy() for name in self.output_names]
        finally:
            self._requests.put(request)
        gflops, policy = self.decoder(outputs)
        return Execution(torch.from_numpy(outputs[0]), gflops, self.full_gflops, policy)


def _provider_name(entry: str | tuple[str, dict]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def open_backend(
    loaded: LoadedVersion,
    backend: str,
    *,
    device: torch.device | str = "cpu",
    concurrency: int = 1,
    **session_options,
) -> Backend:
    """The backend of a loaded version on ``backend`` (one of ``BACKENDS``) on ``device``; raises
    ``BackendUnavailable``. ``concurrency``: the jobs that may run on it at once (OpenVINO's infer requests)."""
    if backend == "torch":
        return TorchBackend(loaded.model, device)
    if backend == "onnxruntime":
        return OnnxBackend(loaded.path / MODEL_FILE, loaded, device=device, **session_options)
    if backend == "openvino":  # on OpenVINO's own devices (its GPU plugin where present), whatever ``device``
        return OpenVinoBackend(loaded.path / MODEL_FILE, loaded, concurrency=concurrency, **session_options)
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
