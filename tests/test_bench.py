"""``clipwise bench`` end to end: in-process and against a running server, on tiny untrained models.

Expected compute comes from the repository's manifests (not from the responses the bench summarises);
latency and throughput can only be checked for consistency (ordered percentiles, counts, positive rates).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from clipwise.commands import bench
from clipwise.models import create_model
from clipwise.models.checkpoint import load_version, save_version
from clipwise.service.app import create_app
from clipwise.service.config import Settings
from clipwise.service.local import local_server

STATIC, ADAPTIVE = "tsn_r18_tiny", "adafuse_tsn_r18_tiny"
LABELS = [f"class_{i}" for i in range(6)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse(*argv: str) -> argparse.Namespace:
    """``clipwise bench ARGV`` through the command's own parser."""
    parser = argparse.ArgumentParser(prog="clipwise")
    bench.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def run_bench(*argv: str) -> int:
    args = parse(*argv)
    return args.run(args)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench-repository")
    for name in (STATIC, ADAPTIVE):
        torch.manual_seed(0)
        save_version(create_model(name, num_classes=len(LABELS)), LABELS, path, name, trained=False)
    return path


@pytest.fixture(scope="module")
def server_url(repository: Path) -> Iterator[str]:
    with local_server(create_app(Settings(model_repository=repository, log_level="warning"))) as url:
        yield url


def full_gflops_per_view(repository: Path, name: str) -> float:
    return load_version(repository, name).manifest.full_gflops


def test_flags_are_parsed_and_bounded(h264_video: Path) -> None:
    args = parse("--video", str(h264_video), "--concurrency", "1,4,16", "--models", "a, b", "--json", "out.json")
    assert args.concurrency == [1, 4, 16]
    assert args.models == ["a", "b"]
    assert args.backend is None
    for bad in (["--concurrency", "0"], ["--concurrency", "1,999"], ["--requests", "0"], ["--crops", "2"]):
        with pytest.raises(SystemExit):
            parse("--video", str(h264_video), "--json", "out.json", *bad)


def test_against_a_running_server(
    server_url: str, repository: Path, h264_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    flags = ["--url", server_url, "--video", str(h264_video), "--requests", "6", "--concurrency", "1,3"]
    code = run_bench(*flags, "--clips", "2", "--json", str(out), "--chart", str(chart))

    assert code == 0
    report = json.loads(out.read_text())
    assert report["server"] == {"url": server_url, "in_process": False}
    levels = {(level["model"], level["concurrency"]): level for level in report["results"]}
    assert set(levels) == {(name, c) for name in (ADAPTIVE, STATIC) for c in (1, 3)}  # every served model
    for (name, _), level in levels.items():
        assert level["sent"] == level["answered"] == 6 and level["errors"] == {}
        latency = level["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        assert level["throughput_rps"] > 0 and level["backend"] == "torch"
        assert level["full_gflops"] == pytest.approx(2 * full_gflops_per_view(repository, name))
        assert 0 < level["decode_share"] < 1
        assert level["stages_ms"]["decode"] > 0 and level["stages_ms"]["total"] >= level["stages_ms"]["inference"]
    static, adaptive = levels[(STATIC, 1)], levels[(ADAPTIVE, 1)]
    assert static["executed_gflops"] == pytest.approx(static["full_gflops"]) and static["policy"] == {}
    assert adaptive["policy_gflops"] < adaptive["full_gflops"]  # what the decisions ask for...
    assert adaptive["policy_gflops"] <= adaptive["executed_gflops"] <= adaptive["full_gflops"]  # ... and what ran
    assert set(adaptive["policy"]) == {"keep", "reuse", "skip"}
    assert sum(adaptive["policy"].values()) == pytest.approx(1)
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    table = capsys.readouterr().out
    assert all(f"{name:<28} torch" in table for name in (STATIC, ADAPTIVE))


def test_in_process_with_a_time_limit(repository: Path, h264_video: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    flags = ["--model-repository", str(repository), "--models", STATIC, "--video", str(h264_video)]
    code = run_bench(*flags, "--requests", "100000", "--time-limit", "0.5", "--json", str(out))

    assert code == 0
    report = json.loads(out.read_text())
    assert report["server"]["in_process"] and report["server"]["settings"]["models"] == [STATIC]
    (level,) = report["results"]
    assert 0 < level["answered"] == level["sent"] < 100000  # stopped by the time limit, not the count


def test_a_refused_backend_is_reported(
    server_url: str, h264_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    flags = ["--url", server_url, "--models", STATIC, "--backend", "no-such-runtime", "--video", str(h264_video)]
    code = run_bench(*flags, "--requests", "3", "--json", str(out))

    assert code == 1
    (level,) = json.loads(out.read_text())["results"]
    assert level["answered"] == 0
    (error,) = level["errors"]
    assert error.startswith("422 validation_error:") and "backend" in error
    assert error in capsys.readouterr().out


def test_unknown_model_in_process_fails_clearly(
    repository: Path, h264_video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--model-repository", str(repository), "--models", "no_such_model", "--video", str(h264_video)]
    code = run_bench(*flags, "--json", str(tmp_path / "bench.json"))

    assert code == 2
    assert "did not start" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()
