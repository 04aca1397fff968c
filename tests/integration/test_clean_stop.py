"""Ctrl-C on `streampulse run`: a clean stop, logged, with no panic or traceback on the way out."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from subprocess import Popen

import pytest

from streampulse.clean_stop import FORCE_AFTER_S
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import create_topics, playback_sessions, produce_log, scrape, start_streampulse
from tests.services.redis_server import start_redis_server

pytestmark = pytest.mark.integration

# A stop the operator asked for is a success, as `streampulse demo` exits on Ctrl-C (and what a service
# manager expects of a SIGINT/SIGTERM stop).
STOPPED = 0


def _start_run(stack: Stack, name: str, redis_url: str, tmp_path: Path, workers: str) -> tuple[Popen[bytes], Path, int]:
    topic, signups = f"playback-{name}", f"signup-{name}"
    create_topics(stack.bootstrap, {topic: 2, signups: 1})
    metrics_port = free_port()
    log_path = tmp_path / "run.log"
    process = start_streampulse(
        "run", "--metrics-port", str(metrics_port), "--kafka-bootstrap", stack.bootstrap, "--playback-topic", topic,
        "--signup-topic", signups, "--dead-letter-topic", f"dead-letter-{name}", "--redis-url", redis_url,
        "--namespace", name, "--recovery-dir", str(tmp_path / "recovery"), "--workers", workers,
        log_path=log_path,
    )  # fmt: skip
    return process, log_path, metrics_port


def _wait_until_consumed(process: Popen[bytes], log_path: Path, metrics_port: int) -> None:
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


def _interrupt(process: Popen[bytes], log_path: Path) -> tuple[int, str]:
    """Ctrl-C, then the exit code and everything the process printed."""
    try:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, log_path.read_text()


def _assert_clean(code: int, output: str) -> None:
    assert code == STOPPED, output
    assert "stopped by Ctrl-C" in output, output
    for noise in ("panicked", "Traceback", "RUST_BACKTRACE", "KeyboardInterrupt"):
        assert noise not in output, output


def _events(stack: Stack, name: str) -> None:
    now = int(time.time() * 1000)
    log = playback_sessions(5, 2, sessions=200, start_ms=now - 120_000, span_ms=60_000)
    produce_log(stack.bootstrap, f"playback-{name}", log)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_run_cleanly(stack: Stack, unique_name: str, tmp_path: Path, workers: str) -> None:
    process, log_path, metrics_port = _start_run(stack, unique_name, stack.redis_url, tmp_path, workers)
    _events(stack, unique_name)
    # Running: events read, windows published, sources polling Kafka (Python code, where Ctrl-C used to land).
    _wait_until_consumed(process, log_path, metrics_port)
    _assert_clean(*_interrupt(process, log_path))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_run_during_a_redis_outage(stack: Stack, unique_name: str, tmp_path: Path, workers: str) -> None:
    # A write waiting for Redis never ends its step: Ctrl-C must still stop the flow, cleanly and soon.
    redis_server = start_redis_server(tmp_path / "redis")
    try:
        process, log_path, metrics_port = _start_run(stack, unique_name, redis_server.url, tmp_path, workers)
        _events(stack, unique_name)
        _wait_until_consumed(process, log_path, metrics_port)
        redis_server.stop()
        deadline = time.monotonic() + 30
        while "retrying with backoff" not in log_path.read_text():
            assert time.monotonic() < deadline, "the flow did not notice the outage: " + log_path.read_text()
            time.sleep(0.2)
        started = time.monotonic()
        code, output = _interrupt(process, log_path)
        assert time.monotonic() - started < FORCE_AFTER_S + 10, output
        _assert_clean(code, output)
    finally:
        redis_server.stop()
