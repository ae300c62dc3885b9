"""A short run of ``benchmarks/load.py``: 8 clients for 18 s against a real ``clipwise serve`` process, mixed
good and bad videos, model reloads every 4 s and a corrupt version offered after each.

The same targets as the full run: no server error, every answer the one expected (so no request failed
across the reloads, of at least 200), no request without an answer, every 200 the version it names would
give in-process (top-1 and scores), every reload done, the corrupt version refused each time with the old one
still serving, no thread of the run ended by an exception, the server still running at the end, and resident
memory growing less than 10% after warm-up. And the run's own check: against a server that has exited, it
fails with each failure recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from clipwise.service.local import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "load.py"
sys.path.insert(0, str(ROOT))
from benchmarks import load  # noqa: E402


def test_a_short_load_run_meets_the_targets(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    arguments = ["--clients", "8", "--duration-s", "18", "--warmup-s", "8", "--reload-every-s", "4"]
    run = subprocess.run(
        [sys.executable, str(BENCHMARK), *arguments, "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert report_path.exists(), run.stdout + run.stderr
    report = json.loads(report_path.read_text())
    assert report["requests"] >= 200, report
    assert (report["server_errors"], report["unexpected"], report["transport_errors"]) == (0, {}, {}), report
    assert report["answers_checked"] == report["statuses"]["200"] > 0 and report["wrong_answers"] == {}, report
    assert report["reloads"] >= 3 and report["reloads_failed"] == 0, report
    assert report["corrupt_refused"] == report["reloads"] and report["corrupt_accepted"] == 0, report
    assert (report["threads_died"], report["server_exit"]) == ([], None), report
    assert report["rss_growth"] < 0.10, report
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_run_against_a_server_that_exited_fails_with_each_failure_recorded(tmp_path: Path) -> None:
    """Nothing listens on the port and the server process has exited: every request is a transport error, the
    reloader and the memory sampler end on their exceptions, the exit status is reported, and the run fails."""
    server = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    server.wait()
    args = argparse.Namespace(clients=2, duration_s=1.0, warmup_s=0.5, reload_every_s=0.2)
    mix = [load.Upload("h264_mp4", b"never answered", 200)]
    report = load.Load(f"http://127.0.0.1:{free_port()}", server, tmp_path, {}, args).run(mix)
    assert report.server_exit == 3 and report.requests == 0, report
    assert list(report.transport_errors) == ["h264_mp4: ConnectError"], report
    assert sorted(died.partition(":")[0] for died in report.threads_died) == ["memory sampler", "reloader"], report
    assert not report.passed()
