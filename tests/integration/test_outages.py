"""Redis going away mid-run: the flow waits, retries, catches up; nothing lost, nothing doubled."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import (
    create_topics,
    playback_sessions,
    produce,
    produce_log,
    scrape,
    start_streampulse,
    streampulse,
)
from tests.services.redis_server import start_redis_server

pytestmark = pytest.mark.integration

PARTITIONS = 4


def test_redis_outage_is_waited_out_without_loss_or_double_counts(
    stack: Stack, unique_name: str, tmp_path: Path
) -> None:
    redis_server = start_redis_server(tmp_path / "redis", persistent=True)
    port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    now = int(time.time() * 1000)
    log = playback_sessions(31, PARTITIONS, sessions=800, start_ms=now - 30 * 60_000, span_ms=5 * 60_000)
    expected = log.expected_starts(10_000)
    topic, signups = f"playback-{unique_name}", f"signup-{unique_name}"
    create_topics(stack.bootstrap, {topic: PARTITIONS, signups: 1})
    tail_time = max(w for w, _, _ in expected) + 10 * 60_000
    tail = [
        (p, b"tail", orjson.dumps({
            "event_id": f"tail-{p}", "event_type": "play_attempt", "event_time_ms": tail_time, "country": "BR",
            "device_type": "tv", "schema_version": 1, "session_id": "tail", "account_id": "a", "title_id": "t",
        }))
        for p in range(PARTITIONS)
    ]  # fmt: skip
    connection = [
        "--kafka-bootstrap", stack.bootstrap, "--playback-topic", topic, "--signup-topic", signups,
        "--dead-letter-topic", f"dead-letter-{unique_name}", "--redis-url", redis_server.url, "--namespace", unique_name,
    ]  # fmt: skip
    metrics_port = free_port()
    run_log = tmp_path / "run.log"
    process = start_streampulse("run", "--metrics-port", str(metrics_port), *connection, log_path=run_log)
    try:
        # Let the flow start, then take Redis away before the events arrive and for a while after.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                scrape(metrics_port)
                break
            except OSError:
                time.sleep(0.3)
        redis_server.stop()
        produce_log(stack.bootstrap, topic, log)
        produce(stack.bootstrap, topic, tail)
        time.sleep(8)
        assert process.poll() is None, "the flow must wait for Redis, not crash: " + run_log.read_text()[-2000:]
        redis_server = start_redis_server(tmp_path / "redis", port=port, persistent=True)
        counts: dict[tuple[int, str, str], int] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            result = streampulse(
                "query", "stream_starts", "--from", "0", "--by", "country,device_type", "--format", "json",
                "--redis-url", redis_server.url, "--namespace", unique_name,
            )  # fmt: skip
            rows = [orjson.loads(line) for line in result.stdout.splitlines()]
            counts = {
                (r["window_start_ms"], r["dims"]["country"], r["dims"]["device_type"]): r["value"]
                for r in rows
                if r["value"]
            }
            if counts == expected and all(r["final"] for r in rows if r["window_start_ms"] < tail_time - 60_000):
                break
            time.sleep(1)
        assert counts == expected
        errors = scrape(metrics_port).get(("streampulse_redis_write_errors_total", ()), 0)
        assert errors > 0, "the outage must show on /metrics"
        assert "retrying with backoff" in run_log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        redis_server.stop()
