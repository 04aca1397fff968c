"""Lag and watermark delay stay true during outages, and a Kafka outage does not flood the log.

A stuck flow must look stuck on /metrics: while Redis is down and events keep arriving, consumer lag grows
(it used to freeze at 0) and the watermark delay grows with the wall clock (it used to freeze at its last
publish); while Kafka is down, lag is unknown (NaN), never 0, and `streampulse_kafka_reachable` is 0.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import create_topics, produce, scrape, start_streampulse
from tests.services.apache_kafka import start_apache_kafka
from tests.services.redis_server import start_redis_server

pytestmark = pytest.mark.integration

PARTITIONS = 2
LAG = "streampulse_consumer_lag_messages"
DELAY = "streampulse_watermark_delay_seconds"
REACHABLE = "streampulse_kafka_reachable"


def _events(start: int, count: int, topic_time_ms: int) -> list[tuple[int, bytes, bytes]]:
    """`count` play attempts from number `start` on, spread over the partitions, at about `topic_time_ms`."""
    return [
        (i % PARTITIONS, b"k", orjson.dumps({
            "event_id": f"e{i}", "event_type": "play_attempt", "event_time_ms": topic_time_ms + i, "country": "BR",
            "device_type": "tv", "schema_version": 1, "session_id": f"s{i}", "account_id": "a", "title_id": "t",
        }))
        for i in range(start, start + count)
    ]  # fmt: skip


def _lags(port: int) -> list[float]:
    return [value for (name, _labels), value in scrape(port).items() if name == LAG]


def _wait_for_metrics(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-2000:]
        try:
            if _lags(port):  # the readers are tracked: the flow is up and reading
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("the flow did not serve lag within 60 s: " + log_path.read_text()[-2000:])


def _connection(bootstrap: str, redis_url: str, name: str) -> list[str]:
    return [
        "--kafka-bootstrap", bootstrap, "--playback-topic", f"playback-{name}", "--signup-topic", f"signup-{name}",
        "--dead-letter-topic", f"dead-letter-{name}", "--anomalies-topic", f"anomalies-{name}",
        "--redis-url", redis_url, "--namespace", name,
    ]  # fmt: skip


@pytest.fixture
def stopped_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def test_lag_grows_and_watermark_delay_follows_the_clock_while_redis_is_down(
    stack: Stack, unique_name: str, tmp_path: Path, stopped_process: list[subprocess.Popen[bytes]]
) -> None:
    redis_server = start_redis_server(tmp_path / "redis")
    topic = f"playback-{unique_name}"
    create_topics(stack.bootstrap, {topic: PARTITIONS, f"signup-{unique_name}": 1})
    now = int(time.time() * 1000)
    produce(stack.bootstrap, topic, _events(0, 200, now - 60_000))
    port = free_port()
    log_path = tmp_path / "run.log"
    process = start_streampulse(
        "run", "--metrics-port", str(port), *_connection(stack.bootstrap, redis_server.url, unique_name),
        log_path=log_path,
    )  # fmt: skip
    stopped_process.append(process)
    try:
        _wait_for_metrics(port, process, log_path)
        deadline = time.monotonic() + 30
        while scrape(port).get((DELAY, ())) is None or math.isnan(scrape(port)[(DELAY, ())]):
            assert time.monotonic() < deadline, "no watermark delay within 30 s: " + log_path.read_text()[-2000:]
            time.sleep(0.5)
        redis_server.stop()
        # Events keep arriving while Redis is down: the flow takes the next batch, then waits on its Redis write.
        lags: list[float] = []
        delays: list[tuple[float, float]] = []
        produced = 200
        for _round in range(8):
            produce(stack.bootstrap, topic, _events(produced, 500, now + produced))
            produced += 500
            time.sleep(2)
            samples = scrape(port)
            lags.append(sum(v for (name, _labels), v in samples.items() if name == LAG))
            delays.append((time.monotonic(), samples[(DELAY, ())]))
        assert process.poll() is None, "the flow must wait for Redis: " + log_path.read_text()[-2000:]
    finally:
        redis_server.stop()
    # Lag is measured every 5 s: from the third round on it must show what piled up, and keep growing.
    assert all(lag > 0 for lag in lags[2:]), lags
    assert lags[-1] > lags[2] and lags[-1] >= 1500, lags
    # The delay follows the wall clock (it used to freeze at the last publish).
    (t0, d0), (t1, d1) = delays[1], delays[-1]
    assert d1 - d0 == pytest.approx(t1 - t0, abs=3.0), delays


@pytest.mark.stacks("apache")  # stops and restarts its own Apache Kafka
def test_kafka_outage_makes_lag_unknown_and_is_told_in_a_few_lines(
    unique_name: str, tmp_path: Path, stopped_process: list[subprocess.Popen[bytes]]
) -> None:
    kafka = start_apache_kafka(tmp_path / "kafka")
    redis_server = start_redis_server(tmp_path / "redis")
    try:
        topic = f"playback-{unique_name}"
        create_topics(kafka.bootstrap, {topic: PARTITIONS, f"signup-{unique_name}": 1})
        produce(kafka.bootstrap, topic, _events(0, 200, int(time.time() * 1000) - 60_000))
        port = free_port()
        log_path = tmp_path / "run.log"
        process = start_streampulse(
            "run", "--metrics-port", str(port), *_connection(kafka.bootstrap, redis_server.url, unique_name),
            log_path=log_path,
        )  # fmt: skip
        stopped_process.append(process)
        _wait_for_metrics(port, process, log_path)
        log_before = log_path.stat().st_size
        kafka.stop()  # the clients see it go while it shuts down, within this call
        time.sleep(15)
        samples = scrape(port)
        with log_path.open("rb") as log_file:
            log_file.seek(log_before)
            outage_lines = log_file.read().decode(errors="replace").splitlines()
        assert process.poll() is None, log_path.read_text()[-2000:]
        assert len(outage_lines) < 20, f"{len(outage_lines)} log lines in a 15 s outage:\n" + "\n".join(
            outage_lines[:40]
        )
        lags = [v for (name, _labels), v in samples.items() if name == LAG]
        assert lags and all(math.isnan(v) for v in lags), f"lag must be unknown, never 0, while Kafka is down: {lags}"
        assert samples.get((REACHABLE, ())) == 0
        assert any("unreachable since" in line for line in outage_lines), outage_lines
        kafka.restart()
        deadline = time.monotonic() + 60
        while scrape(port)[(REACHABLE, ())] != 1 or any(math.isnan(v) for v in _lags(port)):
            assert time.monotonic() < deadline, "lag did not come back within 60 s: " + log_path.read_text()[-3000:]
            time.sleep(1)
        assert "reachable again" in log_path.read_text()
    finally:
        redis_server.stop()
        kafka.stop()
