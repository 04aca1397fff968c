"""Events through real Kafka, the real flow and real Redis, checked against counts made from the events."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import (
    PlaybackLog,
    create_topics,
    playback_sessions,
    produce,
    produce_log,
    scrape,
    start_streampulse,
    streampulse,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
FINE_MS = 10_000


def _connection(stack: Stack, name: str) -> list[str]:
    return [
        "--kafka-bootstrap", stack.bootstrap,
        "--playback-topic", f"playback-{name}",
        "--signup-topic", f"signup-{name}",
        "--dead-letter-topic", f"dead-letter-{name}",
        "--redis-url", stack.redis_url,
        "--namespace", f"test-{name}",
    ]  # fmt: skip


def _query_starts(connection: list[str], resolution: str) -> tuple[Counter[tuple[int, str, str]], set[bool]]:
    result = streampulse(
        "query", "stream_starts", "--resolution", resolution, "--from", "0", "--by", "country,device_type",
        "--format", "json", *connection[-4:],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    counts: Counter[tuple[int, str, str]] = Counter()
    for row in rows:
        if row["value"]:
            counts[(row["window_start_ms"], row["dims"]["country"], row["dims"]["device_type"])] += row["value"]
    return counts, {row["final"] for row in rows}


def _query_window(connection: list[str], metric: str, window_start_ms: int) -> dict[tuple[str, str], float]:
    result = streampulse(
        "query", metric, "--from", str(window_start_ms), "--to", str(window_start_ms + 1), "--by", "country,device_type",
        "--format", "json", *connection[-4:],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    return {(r["dims"]["country"], r["dims"]["device_type"]): r["value"] for r in rows if r["value"]}


def _setup(stack: Stack, name: str, seed: int) -> tuple[list[str], PlaybackLog]:
    now = int(time.time() * 1000)
    log = playback_sessions(seed, PARTITIONS, sessions=600, start_ms=now - 20 * 60_000, span_ms=4 * 60_000)
    # Stream starts in the newest window too, so its /metrics gauges have something to show.
    newest = max(e["event_time_ms"] for e in log.all_events())
    for p, events in log.partitions.items():
        events.append({**events[-1], "event_id": f"last-{p}", "event_type": "play_start", "event_time_ms": newest,
                       "startup_ms": 700, "cdn": "c2"})  # fmt: skip
    create_topics(stack.bootstrap, {f"playback-{name}": PARTITIONS, f"signup-{name}": 1})
    produce_log(stack.bootstrap, f"playback-{name}", log)
    return _connection(stack, name), log


def test_exit_at_end_counts_every_window_exactly(stack: Stack, unique_name: str) -> None:
    connection, log = _setup(stack, unique_name, seed=11)
    result = streampulse("run", "--exit-at-end", "--metrics-port", "0", *connection, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    for resolution, size_ms in (("10s", 10_000), ("1m", 60_000)):
        counts, finals = _query_starts(connection, resolution)
        assert counts == log.expected_starts(size_ms)
        assert finals == {True}


def test_live_run_publishes_final_windows_to_redis_and_metrics(stack: Stack, unique_name: str, tmp_path: Path) -> None:
    connection, log = _setup(stack, unique_name, seed=23)
    expected = log.expected_starts(FINE_MS)
    last_window = max(window for window, _, _ in expected)
    # One later event per partition moves every partition's watermark past the windows under test.
    tail_time = last_window + 5 * 60_000
    tail = [
        (p, b"tail", orjson.dumps({
            "event_id": f"tail-{p}", "event_type": "play_attempt", "event_time_ms": tail_time, "country": "BR",
            "device_type": "tv", "schema_version": 1, "session_id": "tail", "account_id": "a", "title_id": "t",
        }))
        for p in range(PARTITIONS)
    ]  # fmt: skip
    produce(stack.bootstrap, f"playback-{unique_name}", tail)
    port = free_port()
    process = start_streampulse("run", "--metrics-port", str(port), *connection, log_path=tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 150
        samples = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            try:
                samples = scrape(port)
            except OSError:
                samples = {}
            end = samples.get(("streampulse_final_window_end_timestamp_seconds", (("resolution", "10s"),)))
            if end is not None and end * 1000 >= last_window + FINE_MS:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no final window reached /metrics in time; log:\n{(tmp_path / 'run.log').read_text()[-3000:]}")
        # Redis and /metrics are separate sinks of the same updates: give Redis a moment to catch up.
        for _ in range(20):
            counts, _finals = _query_starts(connection, "10s")
            if counts == expected:
                break
            time.sleep(0.5)
        assert counts == expected
        totals: Counter[tuple[str, str]] = Counter()
        for (_, country, device), n in expected.items():
            totals[(country, device)] += n
        # The counter also splits by CDN: summed over it, it holds every start of every window.
        exported: Counter[tuple[str, str]] = Counter()
        for (metric, labels), value in samples.items():
            if metric == "streampulse_stream_starts_total":
                exported[(dict(labels)["country"], dict(labels)["device_type"])] += int(value)
        assert exported == totals
        # The newest final window is the last one with any value (concurrent streams outlast the last
        # event by the session timeout); its gauges must show what Redis holds for that window.
        newest_end_ms = int(
            samples[("streampulse_final_window_end_timestamp_seconds", (("resolution", "10s"),))] * 1000
        )
        shown = {
            (dict(labels)["country"], dict(labels)["device_type"]): value
            for (name, labels), value in samples.items()
            if name == "streampulse_concurrent_streams"
        }
        stored = _query_window(connection, "concurrent_streams", newest_end_ms - FINE_MS)
        assert shown == stored
        assert stored, "the newest window should have open sessions to compare"
    finally:
        process.terminate()
        process.wait(timeout=30)
