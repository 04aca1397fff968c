"""The benchmark harness runs end to end on tiny input, so it does not rot between benchmark runs.

A benchmark is not a test: nothing here looks at a timing. It checks that
`python -m bench` completes on its own embedded stack, that every counting
run agreed with the load generator's truth, and that the results files have
the keys the issue asks for. Quix Streams (needs Apache Kafka and its own
environment) and the profile (py-spy) are left out; the memory steps are small.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import REQUIRED_KEYS
from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration


def test_bench_harness_runs_on_tiny_input(tmp_path: Path) -> None:
    results = tmp_path / "results"
    argv = [
        sys.executable, "-m", "bench",
        "--events", "20000", "--rounds", "1", "--skip", "quix,profile",
        "--memory-steps", "1000,3000", "--no-memory-split",
        "--freshness-rate", "2000", "--freshness-seconds", "2", "--freshness-drain", "0",
        "--results-dir", str(results), "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]

    data = json.loads((results / "latest.json").read_text())
    missing = [key for key in REQUIRED_KEYS if key not in data]
    assert not missing, missing
    assert data["machine"]["cores"] >= 1 and data["commit"]
    assert not data["failures"], data["failures"]
    for name in ("limit", "baseline", "streampulse_all_1p", "streampulse_all_2p", "streampulse_starts_1p"):
        assert data[f"{name}_eps"] is not None, name
    # Every run that counts stream starts matched the truth (a correctness check, not a timing one).
    checks = {name: [run["check"]["exact"] for run in runs if "check" in run] for name, runs in data["runs"].items()}
    assert all(all(c) for c in checks.values()), checks
    assert data["freshness"]["markers_seen_redis"] > 0
    assert [step["sessions"] for step in data["memory"]["steps"]] == [1000, 3000]
    report = (results / "latest.md").read_text()
    assert "| streampulse all metrics, 1 process |" in report
