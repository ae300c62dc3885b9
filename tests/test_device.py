"""The device setting (``CLIPWISE_DEVICE`` / ``--device``): names, the clear refusal of a GPU this machine lacks
(at startup of ``clipwise serve`` and of the app, in ``clipwise bench``, ``eval`` and ``train``), the backends'
labels and ONNX Runtime's providers; and, where CUDA is present, serving on it through a real server.

A GPU that exists nowhere is ``cuda:<device count>``: no CUDA at all here (CI), one past the last GPU where
there is one, so the refusals are checked on every machine. The CUDA tests are ``gpu_only``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
from pathlib import Path
from typing import get_args

import httpx
import pytest
import torch
from pydantic import ValidationError

from clipwise.commands import bench, serve, train
from clipwise.commands import eval as eval_command
from clipwise.export.runtime import LABELS, BackendUnavailable, open_backend, providers_for
from clipwise.models import create_model
from clipwise.models.checkpoint import LoadedVersion, load_version, save_version
from clipwise.models.device import DeviceUnavailable, resolve_device
from clipwise.service.app import ConfigurationError, create_app
from clipwise.service.backends import BackendLabel
from clipwise.service.config import Settings

MISSING_GPU = f"cuda:{torch.cuda.device_count()}"
ON_CUDA = torch.cuda.is_available()


def command(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="clipwise")
    module.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize(("name", "expected"), [("cpu", "cpu"), ("cpu:0", "cpu:0")])
def test_cpu_names_resolve(name, expected):
    assert resolve_device(name) == torch.device(expected)


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", "cuda:-1", "cpu:1", ""])
def test_other_names_are_refused(name):
    with pytest.raises(DeviceUnavailable, match="is not one of cpu, cuda or cuda:N"):
        resolve_device(name)


def test_a_gpu_this_machine_lacks_is_refused_saying_why():
    with pytest.raises(DeviceUnavailable, match=f"device {MISSING_GPU} asked for, but") as refused:
        resolve_device(MISSING_GPU)
    assert ("CUDA is not available here" in str(refused.value)) != ON_CUDA


def test_settings_take_cpu_and_cuda_names_only():
    assert Settings().device == "cpu"
    assert Settings(device="cuda:3").device == "cuda:3"  # the name is valid; whether it exists is startup's
    with pytest.raises(ValidationError):
        Settings(device="gpu")


def test_the_app_refuses_at_once_a_gpu_this_machine_lacks(tmp_path: Path):
    with pytest.raises(ConfigurationError, match=f"CLIPWISE_DEVICE / --device: device {MISSING_GPU} asked for"):
        create_app(Settings(model_repository=tmp_path, device=MISSING_GPU))


def test_clipwise_serve_stops_at_once_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture):
    args = command(serve, "serve", "--model-repository", str(tmp_path), "--device", MISSING_GPU)
    assert args.run(args) == 2
    assert f"clipwise serve: CLIPWISE_DEVICE / --device: device {MISSING_GPU} asked for" in capsys.readouterr().err


def test_clipwise_bench_eval_and_train_refuse_it_too(tmp_path: Path, capsys: pytest.CaptureFixture):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not read before the server starts")
    args = command(bench, "bench", "--model-repository", str(tmp_path), "--device", MISSING_GPU,
                   "--video", str(video), "--json", str(tmp_path / "out.json"))  # fmt: skip
    assert args.run(args) == 2
    assert f"device {MISSING_GPU} asked for" in capsys.readouterr().err
    args = command(eval_command, "eval", "--model-dir", str(tmp_path), "--data", str(tmp_path), "--device", MISSING_GPU)
    with pytest.raises(SystemExit, match=f"clipwise eval: device {MISSING_GPU} asked for"):
        args.run(args)
    args = command(train, "train", "--model", "tsn_r18_tiny", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                   "--device", MISSING_GPU)  # fmt: skip
    with pytest.raises(SystemExit, match=f"clipwise train: device {MISSING_GPU} asked for"):
        args.run(args)


def saved_version(repository: Path, model) -> LoadedVersion:
    from clipwise.export.onnx import export_version

    save_version(model, [f"class_{index}" for index in range(4)], repository, model.preset, trained=False)
    export_version(repository / model.preset / "1", check=False)  # the tests compare what they need
    return load_version(repository, model.preset)


@pytest.fixture(scope="module")
def tsn_version(tmp_path_factory: pytest.TempPathFactory) -> LoadedVersion:
    torch.manual_seed(0)
    return saved_version(tmp_path_factory.mktemp("repository"), create_model("tsn_r18_tiny", num_classes=4))


@pytest.fixture(scope="module")
def adafuse_version(tmp_path_factory: pytest.TempPathFactory) -> LoadedVersion:
    """A tiny AdaFuse whose policy nets decide by clear margins (the same decisions on any device)."""
    torch.manual_seed(0)
    model = create_model("adafuse_tsn_r18_tiny", num_classes=4)
    for block in model.gated_blocks():
        torch.nn.init.normal_(block.policy.fc_out.weight, std=0.3)
        torch.nn.init.uniform_(block.policy.fc_out.bias, -1, 1)
    return saved_version(tmp_path_factory.mktemp("repository"), model)


def test_the_labels_are_the_api_s(tsn_version: LoadedVersion):
    assert set(get_args(BackendLabel)) == set(LABELS)
    backends = [open_backend(tsn_version, backend) for backend in ("torch", "onnxruntime")]
    assert [backend.label for backend in backends] == ["torch", "onnxruntime"]  # on the CPU, the backends' names


def test_onnx_runtime_on_the_cpu_uses_its_cpu_provider_only():
    assert providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]


def test_onnx_runtime_without_its_cuda_provider_says_what_to_install():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider (onnxruntime-gpu: not on CI machines)")
    with pytest.raises(BackendUnavailable, match="install onnxruntime-gpu"):
        providers_for(torch.device("cuda", 0))


# --- on CUDA (gpu_only) ------------------------------------------------------------------------------------


@pytest.mark.gpu_only
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cuda_backends_report_what_the_cpu_reports(
    adafuse_version: LoadedVersion, backend: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    clips = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))
    on_cpu = open_backend(adafuse_version, backend).execute(clips)
    try:
        on_cuda = open_backend(adafuse_version, backend, device="cuda")
    except BackendUnavailable as reason:
        pytest.skip(str(reason))  # onnxruntime without its CUDA provider
    assert on_cuda.label in {"torch-cuda", "onnxruntime-cuda", "onnxruntime-tensorrt"}
    on_gpu = on_cuda.execute(clips)
    assert on_gpu.logits.device.type == "cpu"
    tolerance = 1e-4 if backend == "torch" else 1e-2  # ONNX Runtime's CUDA provider may use TF32
    torch.testing.assert_close(on_gpu.logits, on_cpu.logits, rtol=tolerance, atol=tolerance)
    assert on_gpu.policy_gflops == pytest.approx(on_cpu.policy_gflops, rel=1e-6)  # the same decisions
    if backend == "torch":  # the kernels compute Eq. 5 exactly; the CPU's executor may compute more
        assert on_gpu.executed_gflops == pytest.approx(on_gpu.policy_gflops, rel=1e-6)


@pytest.mark.gpu_only
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
def test_concurrent_requests_on_cuda_streams_get_their_own_answers(adafuse_version: LoadedVersion, h264_video):
    from live_server import serving

    settings = Settings(model_repository=adafuse_version.path.parent.parent, device="cuda", batching=False,
                        max_concurrent_inferences=4)  # fmt: skip
    data = h264_video.read_bytes()
    url = f"/v1/models/{adafuse_version.name}/predict"
    with serving(create_app(settings)) as client:
        alone = client.post(url, files={"file": ("clip.mp4", data)}, params={"clips": 2}).json()
        assert alone["backend"] == "torch-cuda"

        def predict(_: int) -> dict:
            with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
                return own.post(url, files={"file": ("clip.mp4", data)}, params={"clips": 2}).json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(predict, range(16)))
    for answer in answers:
        assert answer["flops"] == pytest.approx(alone["flops"])
        assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in alone["predictions"]]
        assert [p["score"] for p in answer["predictions"]] == pytest.approx(
            [p["score"] for p in alone["predictions"]], rel=1e-4
        )
