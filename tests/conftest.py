"""Fixtures shared by the test modules: real video files made with PyAV; the CI rule on skips.

Every video shows index-coded frames (``clipwise.video.synthetic``): ``read_frame_index`` on a decoded frame gives
the index of the frame it is. Defaults: 64 frames of 160×120 at 25 fps, a keyframe every 16 frames. The odd
and broken uploads of ``edge_cases`` are made once per session.

With ``CI=true`` (``.ci/run``) a skip is a failure unless the test is marked ``gpu_only``: it needs CUDA or
TensorRT, which CI machines lack. Everything else a test needs (Chromium, Playwright, ...) is installed
there, so a test skipping for want of it would hide a failure. ``-ra`` lists every skip with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_cases import EDGE_CASES
from live_server import one_torch_thread  # noqa: F401 - a fixture for every module

from clipwise.video.synthetic import encode_video, index_coded_frames, write_video

# The apps the tests serve in this process answer HTTP only: gRPC's default port would be bound by each (and
# the server's protocol messages may not share a process with tritonclient.grpc's); tests/test_grpc.py serves
# it from a server process of its own.
os.environ.setdefault("CLIPWISE_GRPC_PORT", "0")
NUM_FRAMES, HEIGHT, WIDTH, FPS, GOP = 64, 120, 160, 25, 16
IN_CI = os.environ.get("CI") == "true"
MAY_SKIP_IN_CI = "gpu_only"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MAY_SKIP_IN_CI}: needs CUDA or TensorRT (absent on CI machines): may skip under CI=true"
    )


def fail_the_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that says why it may not skip here."""
    _, _, reason = report.longrepr
    report.outcome = "failed"
    report.longrepr = f"CI=true: only {MAY_SKIP_IN_CI} tests may skip here; {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    expected_failure = hasattr(report, "wasxfail")
    if IN_CI and report.skipped and not expected_failure and item.get_closest_marker(MAY_SKIP_IN_CI) is None:
        fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if IN_CI and report.skipped:  # a whole module skipped: no marker can allow that
        fail_the_skip(report)
    return report


@pytest.fixture(scope="session")
def coded_frames() -> np.ndarray:
    """The (64, 120, 160, 3) uint8 frames every fixture video encodes."""
    return np.stack(list(index_coded_frames(NUM_FRAMES, HEIGHT, WIDTH)))


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def h264_video(video_dir: Path, coded_frames: np.ndarray) -> Path:
    """H.264 in MP4 (B-frames, index at the end): 64 frames, 160×120, 25 fps, keyframe every 16 frames."""
    path = video_dir / "h264.mp4"
    write_video(path, coded_frames, fps=FPS, codec="h264", gop=GOP)
    return path


@pytest.fixture(scope="session")
def vp9_video(video_dir: Path, coded_frames: np.ndarray) -> Path:
    """VP9 in WebM (no frame count in the header): same frames, rate and keyframes as ``h264_video``."""
    path = video_dir / "vp9.webm"
    write_video(path, coded_frames, fps=FPS, codec="vp9", gop=GOP)
    return path


@pytest.fixture(scope="session")
def video_bytes_factory() -> Callable[..., bytes]:
    """``make(num_frames=64, height=120, width=160, container_format="mp4", **write_video_options) -> bytes``:
    an index-coded video in memory, 25 fps with a keyframe every 16 frames unless the options say otherwise
    (``codec``, ``gop``, ``fps``, ``timestamps``...)."""

    def make(
        num_frames: int = NUM_FRAMES,
        height: int = HEIGHT,
        width: int = WIDTH,
        container_format: str = "mp4",
        **write_video_options,
    ) -> bytes:
        options = {"fps": FPS, "gop": GOP, **write_video_options}
        frames = index_coded_frames(num_frames, height, width)
        return encode_video(frames, container_format=container_format, **options)

    return make


@pytest.fixture(scope="session")
def edge_case_bytes() -> dict[str, bytes]:
    """The bytes of every ``edge_cases.EDGE_CASES`` upload, by name."""
    return {name: case.make() for name, case in EDGE_CASES.items()}
