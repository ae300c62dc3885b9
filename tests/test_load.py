"""A short run of ``benchmarks/load.py``: 8 clients for 18 s against a real ``clipwise serve`` process, mixed
good and bad videos, model reloads every 4 s and a corrupt version offered after each.

The same targets as the full run: no server error, every answer the one expected (so no request failed
across the reloads, of at least 200), every 200 the version it names would give in-process (top-1 and
scores), every reload done, the corrupt version refused each time with the old one still serving, and
resident memory growing less than 10% after warm-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"


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
    assert (report["server_errors"], report["unexpected"]) == (0, {}), report
    assert report["answers_checked"] == report["statuses"]["200"] > 0 and report["wrong_answers"] == {}, report
    assert report["reloads"] >= 3 and report["reloads_failed"] == 0, report
    assert report["corrupt_refused"] == report["reloads"] and report["corrupt_accepted"] == 0, report
    assert report["rss_growth"] < 0.10, report
    assert run.returncode == 0, run.stdout + run.stderr
