"""A year-long gap in event time, through real Kafka, the real flow and real Redis: flat memory, exact aggregates.

Twenty minutes of playback traffic with thousands of sessions playing, then
traffic a year later (valid: within --max-future-skew of the wall clock), some
of it from sessions that were playing before the gap, through `streampulse run
--exit-at-end`. The flow's peak resident memory is sampled while it runs and
must stay under a bound a few times what it needs with no gap (the store that
walked the gap window by window needed gigabytes); every window's stream
starts and concurrent streams must equal a count of the events themselves.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from sinks.redis_query import query
from tests.conftest import Stack
from tests.integration.helpers import COUNTRIES, DEVICES, REPO, create_topics, produce
from tests.unit.gap_traffic import PHASE_MS, TIMEOUT_MS, at_coarse_ends, brute_force_concurrency, gap_traffic

pytestmark = pytest.mark.integration

PARTITIONS = 4
YEAR_MS = 365 * 86_400_000
# The flow holds about 150 MB with no gap; walking a year of 10 s windows took gigabytes.
PEAK_RSS_LIMIT = 500 * 1024 * 1024
RUN_TIMEOUT_S = 240


def _peak_rss_bytes(pid: int) -> int:
    """The process's resident-set high-water mark so far (VmHWM; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_bounded(args: list[str], log_path: Path) -> int:
    """Run the CLI to its exit; fail as soon as its resident memory passes the bound. Returns its peak RSS."""
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "streampulse.cli", *args], stdout=log, stderr=log, cwd=REPO)
    peak = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while process.poll() is None:
            peak = max(peak, _peak_rss_bytes(process.pid))
            assert peak < PEAK_RSS_LIMIT, f"the flow's resident memory passed {peak >> 20} MB across the gap"
            assert time.monotonic() < deadline, f"the flow did not finish within {RUN_TIMEOUT_S} s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text()[-3000:]
    return peak


def _measured(client: redis.Redis, namespace: str, metric: str, resolution: str) -> Counter[tuple[int, str, str]]:
    rows = query(client, namespace, metric, resolution, 0, 2**62, by=("country", "device_type"))
    values: Counter[tuple[int, str, str]] = Counter()
    for row in rows:
        assert row.final, (row, namespace)
        values[(row.window_start_ms, row.dims["country"], row.dims["device_type"])] += int(row.value or 0)
    return +values


def test_a_year_long_gap_costs_no_memory_and_changes_no_aggregate(
    stack: Stack, unique_name: str, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    # The traffic after the gap ends some minutes before now: valid, not from the future.
    base_ms = now_ms - YEAR_MS - PHASE_MS - 15 * 60_000
    base_ms -= base_ms % 60_000
    # Partition 0 holds only traffic after the gap: its reader gets there while the others still have sessions
    # open before it (whose end the window store learns only when their own partitions pass it).
    per_partition = gap_traffic(
        YEAR_MS, base_ms, partitions=PARTITIONS, sessions=3000, countries=COUNTRIES, devices=DEVICES, ahead=0
    )
    playback, signup = f"playback-{unique_name}", f"signup-{unique_name}"
    create_topics(stack.bootstrap, {playback: PARTITIONS, signup: 1})
    produce(
        stack.bootstrap,
        playback,
        [(p, e.session_id.encode(), orjson.dumps(vars(e))) for p, events in enumerate(per_partition) for e in events],
    )
    namespace = f"gap-{unique_name}"
    args = [
        "run", "--exit-at-end", "--metrics-port", "0", "--kafka-bootstrap", stack.bootstrap,
        "--playback-topic", playback, "--signup-topic", signup, "--dead-letter-topic", f"dead-letter-{unique_name}",
        "--anomalies-topic", f"anomalies-{unique_name}", "--redis-url", stack.redis_url, "--namespace", namespace,
        "--session-timeout", f"{TIMEOUT_MS // 1000}s",
        # Small batches and frequent publishes: the store publishes while partition 0 is past the gap and the
        # others are not, as a live flow would.
        "--batch-size", "500", "--publish-interval", "100ms",
    ]  # fmt: skip
    peak = _run_bounded(args, tmp_path / "run.log")
    assert peak > 0
    print(f"peak RSS of the flow across a 1-year gap: {peak >> 20} MB")

    events = [e for partition_events in per_partition for e in partition_events]
    expected_starts = Counter(
        (e.event_time_ms - e.event_time_ms % 10_000, e.country, e.device_type)
        for e in events
        if e.event_type == "play_start"
    )
    expected_concurrency = brute_force_concurrency(events, 10_000)
    client = redis.Redis.from_url(stack.redis_url)
    assert _measured(client, namespace, "stream_starts", "10s") == expected_starts
    assert _measured(client, namespace, "concurrent_streams", "10s") == expected_concurrency
    assert _measured(client, namespace, "concurrent_streams", "1m") == at_coarse_ends(
        expected_concurrency, 10_000, 60_000
    )
    # Both sides of the gap were counted.
    later_ms = base_ms + PHASE_MS + YEAR_MS
    assert any(start < later_ms for start, _, _ in expected_concurrency)
    assert any(start >= later_ms for start, _, _ in expected_concurrency)
