"""Ctrl-C on `streampulse run`: a clean stop, logged, with no panic or traceback on the way out."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import create_topics, playback_sessions, produce_log, scrape, start_streampulse

pytestmark = pytest.mark.integration

# A stop the operator asked for is a success, as `streampulse demo` exits on Ctrl-C (and what a service
# manager expects of a SIGINT/SIGTERM stop).
STOPPED = 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_run_cleanly(stack: Stack, unique_name: str, tmp_path: Path, workers: str) -> None:
    topic, signups = f"playback-{unique_name}", f"signup-{unique_name}"
    create_topics(stack.bootstrap, {topic: 2, signups: 1})
    now = int(time.time() * 1000)
    produce_log(stack.bootstrap, topic, playback_sessions(5, 2, sessions=200, start_ms=now - 120_000, span_ms=60_000))
    metrics_port = free_port()
    log_path = tmp_path / "run.log"
    process = start_streampulse(
        "run", "--metrics-port", str(metrics_port), "--kafka-bootstrap", stack.bootstrap, "--playback-topic", topic,
        "--signup-topic", signups, "--dead-letter-topic", f"dead-letter-{unique_name}", "--redis-url",
        stack.redis_url, "--namespace", unique_name, "--recovery-dir", str(tmp_path / "recovery"), "--workers", workers,
        log_path=log_path,
    )  # fmt: skip
    try:
        # Running: events read, windows published, sources polling Kafka (Python code, where Ctrl-C used to land).
        deadline = time.monotonic() + 60
        consumed = 0.0
        while consumed < 1:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the flow did not consume within 60 s: " + log_path.read_text()
            try:
                samples = scrape(metrics_port)
                consumed = sum(v for (name, _), v in samples.items() if name == "streampulse_events_consumed_total")
            except OSError:
                pass
            time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert code == STOPPED, output
    assert "stopped" in output, output
    for noise in ("panicked", "Traceback", "RUST_BACKTRACE", "KeyboardInterrupt"):
        assert noise not in output, output
