"""The benchmark harness runs end to end on tiny input, so it does not rot between benchmark runs.

A benchmark is not a test: nothing here looks at a timing. It checks that
`python -m bench` completes on its own embedded stack, that every counting
run agreed with the load generator's truth, and that the results files have
the keys the issue asks for, the scale-out ones (issue 13) from every
process's CPU seconds included. The peers (Quix Streams needs Apache Kafka;
each needs its own environment) and the profile (py-spy) are left out; the
memory steps are small.
The hand-written decoder of the `baseline_orjson` contender is checked against
the contract decoder field by field (no services needed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.consumers import MAX_MESSAGE_BYTES, contract_decoder, orjson_decoder
from bench.decoder_bench import NOW_MS, make_messages
from bench.harness import REQUIRED_KEYS
from loadgen.malformed import KINDS, Malformer
from schemas.contract import families
from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration


def test_bench_harness_runs_on_tiny_input(tmp_path: Path) -> None:
    results = tmp_path / "results"
    argv = [
        sys.executable, "-m", "bench",
        "--events", "20000", "--rounds", "1", "--skip", "quix,pathway,profile",
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
    names = (
        "limit",
        "limit_2p",
        "limit_4p",
        "baseline",
        "baseline_orjson",
        "streampulse_all_1p",
        "streampulse_all_2p",
        "streampulse_all_4p",
        "streampulse_starts_1p",
    )
    for name in names:
        assert data[f"{name}_eps"] is not None, name
    # Every process of a cluster has its own CPU seconds, and they make the scale-out figures.
    for processes in (1, 2, 4):
        run = data["runs"][f"streampulse_all_{processes}p"][0]
        assert len(run["process_cpu_s"]) == processes and all(s > 0 for s in run["process_cpu_s"]), run
        assert run["busiest_process_cpu_s"] == max(run["process_cpu_s"])
    # The ceiling: the limit as 4 processes, which between them read every message once (else a failure above).
    assert len(data["runs"]["limit_4p"][0]["process_cpu_s"]) == 4
    scaleout_keys = ("scaleout_efficiency_2p", "scaleout_efficiency_4p", "capacity_2p_eps", "capacity_4p_eps")
    for key in (*scaleout_keys, "limit_efficiency_2p", "limit_efficiency_4p"):
        assert data[key] is not None and data[key] > 0, key
    assert data["wallclock_ratio_2p"] is not None and data["other_cpu_s_2p"] is not None
    # Every run that counts stream starts matched the truth (a correctness check, not a timing one).
    checks = {name: [run["check"]["exact"] for run in runs if "check" in run] for name, runs in data["runs"].items()}
    assert all(all(c) for c in checks.values()), checks
    for baseline in ("baseline", "baseline_orjson"):
        check = data["runs"][baseline][0]["check"]
        assert check["rejected"] == check["malformed"] == data["input"]["malformed"] > 0, check
    assert data["freshness"]["markers_seen_redis"] > 0
    assert [step["sessions"] for step in data["memory"]["steps"]] == [1000, 3000]
    report = (results / "latest.md").read_text()
    assert "| streampulse all metrics, 1 process |" in report
    assert "## Scale-out: all metrics on 1, 2 and 4 processes" in report


def _decoder_cases(family: str) -> Iterator[bytes | None]:
    """Messages valid and not: every event type, each of its fields missing, null, mistyped or off its bounds.

    Also the load generator's malformed kinds, the size limit, invalid UTF-8 and broken framing.
    """
    valid = make_messages(family, 300)
    yield from valid
    events = [orjson.loads(m) for m in valid]
    malformer = Malformer("smoke")
    for event in events[: 3 * len(KINDS)]:
        malformer.observe(event)
        yield malformer.make(event)[3]
    by_type = {e["event_type"]: e for e in reversed(events)}
    for event_type, spec in families()[family].event_types.items():
        event = by_type[event_type]
        for field in spec.fields:
            values: list[Any] = [None, True, [], {}, 1.5, "", "a", "x" * 64, "x" * 65, -1, 0, 1, 1.0]
            values += ["AB", "ab", "A1", "US\n", "Ü", "ABC"]
            if field.enum:
                values += [field.enum[0], field.enum[0].upper()]
            for bound in (field.minimum, field.maximum):
                if bound is not None:
                    values += [bound - 1, bound, bound + 1, float(bound)]
            for value in values:
                yield orjson.dumps({**event, field.name: value})
            yield orjson.dumps({k: v for k, v in event.items() if k != field.name})
            yield orjson.dumps(event)[:-1] + f',"{field.name}":1e30}}'.encode()
        for ahead in (3_600_000, 3_600_001):
            yield orjson.dumps({**event, "event_time_ms": NOW_MS + ahead})
        raw = orjson.dumps(event)
        for size in (MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1):
            yield raw[:-1] + b',"pad":"' + b"x" * (size - len(raw) - 9) + b'"}'
        yield from (raw[:-1] + b',"extra":"\xff"}', raw + b" x", b" " + raw + b"\n")
    yield from (None, b"", b" ", b"null", b"1", b'"s"', b"[]", b"{}", b"[" * 5000)


@pytest.mark.parametrize("family", list(families()))
def test_hand_written_decoder_agrees_with_the_contract_decoder(family: str) -> None:
    mine, ours = orjson_decoder(family), contract_decoder(family)
    disagreements = []
    for raw in _decoder_cases(family):
        got, expected = mine(raw, NOW_MS), ours(raw, NOW_MS)
        types = (
            None if got is None else [type(x) for x in got],
            None if expected is None else [type(x) for x in expected],
        )
        if got != expected or types[0] != types[1]:
            disagreements.append(((raw or b"")[:160], got, expected))
    assert not disagreements, disagreements[:5]
