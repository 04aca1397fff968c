"""Chaos: Redis and then the Kafka broker taken away while events keep arriving, with a live flow.

A producer sends the load generator's stream (every delivery fault) in slices over about 20 s.
Meanwhile Redis is stopped for a few seconds and started again, then the broker. The flow must stay up,
say what happened in a few clear lines (not hundreds), and end with every metric equal to the ground
truth: nothing lost, nothing counted twice.

The producer holds back while the broker is down and flushes first, so the records it sent are in the
log before the broker stops: the generator's truth assumes its delivery order.

It runs its own Apache Kafka and Redis (it stops them), so it needs the Apache stack's jars and Java.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer

from loadgen.api import Generated, Message
from settings.kafka import KafkaSettings
from sinks.redis_layout import index_key
from sinks.window_read import read_windows
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import REPO, create_topics, scrape
from tests.integration.test_metrics_against_truth import (
    CLOSE_MS,
    PARTITIONS,
    _assert_equal_to_truth,
    _closing_events,
    _connection,
    closing_point,
    faulty_traffic,
)
from tests.services.apache_kafka import start_apache_kafka
from tests.services.redis_server import start_redis_server

# It stops and restarts its own Apache Kafka: collected only when the Apache stack is selected.
pytestmark = [pytest.mark.integration, pytest.mark.stacks("apache")]

OUTAGE_S = 6.0
SLICES = 20


@pytest.fixture(scope="module")
def generated() -> Generated:
    return faulty_traffic(seed=8128, events=15_000, hour=19, minutes=15)


def _producer(bootstrap: str) -> Producer:
    # Idempotent: a batch retried across the broker restart lands in order, once. No delivery timeout
    # short enough to give up during the outage.
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
            "log_level": 2,  # the outage is the point: no "connection refused" lines from the test's own producer
        }
    )


def _send(producer: Producer, kafka: KafkaSettings, messages: list[Message], failures: list[str]) -> None:
    topics = {"playback": kafka.playback_topic, "signup": kafka.signup_topic}

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for m in messages:
        key = m.key.encode() if m.key is not None else None
        while True:
            try:
                producer.produce(topics[m.family], value=m.value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)


def test_redis_then_broker_outages_under_live_load_lose_and_double_nothing(
    generated: Generated, unique_name: str, tmp_path: Path
) -> None:
    broker = start_apache_kafka(tmp_path / "kafka")
    redis_server = start_redis_server(tmp_path / "redis", persistent=True)
    redis_port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    stack = Stack("apache", broker.bootstrap, redis_server.url)
    kafka = KafkaSettings(
        bootstrap=broker.bootstrap,
        playback_topic=f"playback-{unique_name}",
        signup_topic=f"signup-{unique_name}",
        dead_letter_topic=f"dead-letter-{unique_name}",
    )
    namespace = f"outages-{unique_name}"
    process: subprocess.Popen[bytes] | None = None
    try:
        create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
        messages = generated.messages
        cut, close_ms = closing_point(messages)
        CLOSE_MS[namespace] = close_ms - close_ms % 60_000

        port = free_port()
        log = tmp_path / "flow.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "streampulse.cli", "run", "--metrics-port", str(port),
             *_connection(kafka, stack, namespace)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the flow never served /metrics"
                time.sleep(0.2)

        failures: list[str] = []
        producer = _producer(broker.bootstrap)
        may_send, holding = threading.Event(), threading.Event()
        may_send.set()

        def produce_all() -> None:
            step = -(-cut // SLICES)
            for start in range(0, cut, step):
                if not may_send.is_set():
                    producer.flush(60)  # nothing in flight when the broker goes
                    holding.set()
                    may_send.wait(120)
                _send(producer, kafka, messages[start : min(start + step, cut)], failures)
                time.sleep(1.0)
            holding.set()
            producer.flush(180)

        sending = threading.Thread(target=produce_all, name="chaos-producer")
        sending.start()
        time.sleep(3)
        redis_server.stop()
        time.sleep(OUTAGE_S)
        redis_server = start_redis_server(tmp_path / "redis", port=redis_port, persistent=True)
        time.sleep(3)
        may_send.clear()
        assert holding.wait(60), "the producer did not hold back"
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.restart()
        may_send.set()
        sending.join(timeout=300)
        assert not sending.is_alive(), "the producer did not finish"
        assert not failures, failures[:3]
        assert process.poll() is None, "the flow must ride out both outages: " + log.read_text()[-3000:]

        # Close the stream (tests/integration/test_metrics_against_truth.py), then wait for every window to be final.
        closing = _producer(broker.bootstrap)
        for family, topic in (("playback", kafka.playback_topic), ("signup", kafka.signup_topic)):
            for partition, key, value in _closing_events(family, close_ms):
                closing.produce(topic, value=value, key=key, partition=partition)
        _send(closing, kafka, messages[cut:], failures)
        assert closing.flush(60) == 0
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 120
        while _final_minutes(client, namespace, CLOSE_MS[namespace]) < _expected_minutes(generated):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "windows did not all become final after the outages"
            time.sleep(1)
        _assert_equal_to_truth(stack, kafka, namespace, generated)

        text = log.read_text()
        kafka_lines = [line for line in text.splitlines() if "unreachable since" in line]
        redis_lines = [line for line in text.splitlines() if "Redis" in line and "retrying" in line]
        assert 1 <= len(kafka_lines) <= 2, kafka_lines
        assert len(redis_lines) == 1, redis_lines  # one per outage: the writers of a process tell it together
        assert "reachable again" in text
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        redis_server.stop()
        broker.stop()


def _expected_minutes(generated: Generated) -> int:
    """How many 1-minute windows hold valid events before the closing events."""
    return len({(m.event["event_time_ms"] // 60_000) for m in generated.messages if m.kind == "valid" and m.event})


def _final_minutes(client: redis.Redis, namespace: str, before_ms: int) -> int:
    """How many 1-minute windows before `before_ms` Redis holds as final."""
    members: list[bytes] = client.zrange(index_key(namespace, "1m"), 0, -1)  # type: ignore[assignment]
    starts = [int(m) for m in members]
    return sum(
        1 for window in read_windows(client, namespace, "1m", starts) if window.start_ms < before_ms and window.final
    )
