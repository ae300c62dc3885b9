"""The same clip tensor over the Open Inference Protocol's gRPC and over its HTTP binary extension, interleaved.

Starts ``clipwise serve`` as a subprocess on the bundled repository (one model, both transports; a process of
its own: the server's protocol messages and ``tritonclient.grpc``'s cannot share one), checks that both
transports give the same answer, then times ``--rounds`` requests of each with Triton's clients, alternating
which goes first, after ``--warmup`` rounds. The default sends 4 clips of ``tsn_r18_small`` (3×8×112²):
4.8 MB, the size of one 8×224² clip. Prints the p50 of each and their ratio (gRPC / HTTP); exits 1 when gRPC
is slower or nothing was measured.

Two figures separate the server's share from the client's: the same ModelInfer serialised once and sent as
bytes on a plain gRPC channel (interleaved with the others: the server and the transport without the client's
per-request work), and each client's CPU per request (``time.process_time``, its gRPC threads included),
which on a small machine the server's inference shares.

    python benchmarks/grpc_vs_http.py [--model tsn_r18_small] [--clips 4] [--rounds 100] [--json report.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2

from clipwise.export.runtime import interleaved_ms
from clipwise.service.config import BUNDLED_REPOSITORY
from clipwise.service.local import free_port, wait_until_ready

OUTPUTS = ("logits", "probabilities", "executed_gflops")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CPU_REQUESTS = 10  # requests of each client whose CPU time is measured


@dataclass(frozen=True)
class Servers:
    """A server process, its HTTP base URL, gRPC address and log file."""

    process: subprocess.Popen
    http_url: str
    grpc_address: str
    log: Path


@contextlib.contextmanager
def server_process(log: Path, **flags: object) -> Iterator[Servers]:
    """``clipwise serve`` with ``flags`` (``model_repository=...``) on free loopback ports for HTTP and gRPC,
    once every default model is ready; stopped on exit."""
    http_port, grpc_port = free_port(), free_port()
    flags = {"port": http_port, "grpc_port": grpc_port, "log_level": "info", **flags}
    arguments = [f"--{flag.replace('_', '-')}={value}" for flag, value in flags.items()]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "clipwise.cli", "serve", *arguments], stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until_ready(url, 300, gave_up=lambda: _exited(process, log))
        yield Servers(process, url, f"127.0.0.1:{grpc_port}", log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _exited(process: subprocess.Popen, log: Path) -> str | None:
    if process.poll() is None:
        return None
    return f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}"


def grpc_infer(client: triton_grpc.InferenceServerClient, model: str, clips: np.ndarray) -> triton_grpc.InferResult:
    tensor = triton_grpc.InferInput("clips", list(clips.shape), "FP32")
    tensor.set_data_from_numpy(clips)
    return client.infer(model, [tensor])


def http_infer(client: triton_http.InferenceServerClient, model: str, clips: np.ndarray) -> triton_http.InferResult:
    tensor = triton_http.InferInput("clips", list(clips.shape), "FP32")
    tensor.set_data_from_numpy(clips, binary_data=True)
    outputs = [triton_http.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
    return client.infer(model, [tensor], outputs=outputs)


@contextlib.contextmanager
def serialised_once(address: str, model: str, clips: np.ndarray) -> Iterator[Callable[[], bytes]]:
    """A ModelInfer of ``clips`` as Triton's client builds it, serialised once: each call sends those bytes on
    a plain channel and returns the response's, unparsed."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="clips", datatype="FP32", shape=clips.shape)
    request.raw_input_contents.append(clips.tobytes())
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(address, options=options) as channel:
        yield functools.partial(channel.unary_unary(MODEL_INFER), request.SerializeToString())


def cpu_ms(call: Callable[[], object], requests: int = CPU_REQUESTS) -> float:
    """This process's CPU milliseconds per call (every thread: a client's own gRPC threads too)."""
    started = time.process_time()
    for _ in range(requests):
        call()
    return (time.process_time() - started) * 1000 / requests


@dataclass
class Report:
    model: str
    clips: int
    clip_shape: list[int]
    payload_mb: float
    rounds: int
    grpc_p50_ms: float
    http_p50_ms: float
    ratio: float  # gRPC p50 / HTTP p50: at most 1 passes
    grpc_serialised_once_p50_ms: float  # the server's and the transport's share of a gRPC request
    grpc_client_cpu_ms: float  # Triton's gRPC client, CPU per request
    http_client_cpu_ms: float

    def passed(self) -> bool:
        return self.rounds > 0 and self.ratio <= 1


def measure(servers: Servers, model: str, clips_count: int, rounds: int, warmup: int) -> Report:
    grpc_client = triton_grpc.InferenceServerClient(servers.grpc_address)
    http_client = triton_http.InferenceServerClient(servers.http_url.removeprefix("http://"), network_timeout=120)
    shape = grpc_client.get_model_metadata(model, as_json=True)["inputs"][0]["shape"][1:]
    clips = np.random.default_rng(0).standard_normal((clips_count, *map(int, shape)), dtype=np.float32)
    over_grpc, over_http = grpc_infer(grpc_client, model, clips), http_infer(http_client, model, clips)
    for name in OUTPUTS:  # the same answer either way, or the timing compares different work
        np.testing.assert_allclose(over_grpc.as_numpy(name), over_http.as_numpy(name), rtol=1e-5, atol=1e-6)
    with serialised_once(servers.grpc_address, model, clips) as once:
        calls = {
            "grpc": functools.partial(grpc_infer, grpc_client, model, clips),
            "http": functools.partial(http_infer, http_client, model, clips),
            "once": once,
        }
        interleaved_ms(calls, warmup)
        p50_ms, rounds_run = interleaved_ms(calls, rounds)
        cpu = {name: cpu_ms(calls[name]) for name in ("grpc", "http")}
    grpc_client.close()
    http_client.close()
    return Report(
        model=model,
        clips=clips_count,
        clip_shape=[int(size) for size in shape],
        payload_mb=round(clips.nbytes / 1e6, 2),
        rounds=rounds_run,
        grpc_p50_ms=round(p50_ms["grpc"], 2),
        http_p50_ms=round(p50_ms["http"], 2),
        ratio=round(p50_ms["grpc"] / p50_ms["http"], 3),
        grpc_serialised_once_p50_ms=round(p50_ms["once"], 2),
        grpc_client_cpu_ms=round(cpu["grpc"], 2),
        http_client_cpu_ms=round(cpu["http"], 2),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tsn_r18_small", help="a bundled model")
    parser.add_argument("--clips", type=int, default=4, help="clips per request")
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds (one request of each per round)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    parser.add_argument("--torch-threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        flags = {"model_repository": BUNDLED_REPOSITORY, "models": args.model, "torch_threads": args.torch_threads}
        with server_process(Path(scratch) / "server.log", **flags) as servers:
            report = measure(servers, args.model, args.clips, args.rounds, args.warmup)
    print(
        f"{report.model} {report.clips}×{report.clip_shape} ({report.payload_mb} MB): "
        f"gRPC p50 {report.grpc_p50_ms} ms, HTTP binary p50 {report.http_p50_ms} ms over {report.rounds} "
        f"interleaved rounds; gRPC / HTTP = {report.ratio}\n"
        f"gRPC serialised once p50 {report.grpc_serialised_once_p50_ms} ms (server and transport); client CPU per "
        f"request: gRPC {report.grpc_client_cpu_ms} ms, HTTP {report.http_client_cpu_ms} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    if not report.passed():
        print("FAIL: gRPC slower than HTTP binary, or nothing measured", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
