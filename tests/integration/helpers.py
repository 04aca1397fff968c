"""Helpers of the integration tests: events built by hand, produced to real Kafka, and the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connect.kafka_admin import ensure_topics
from settings.kafka import KafkaSettings
from streampulse.processes import free_port

COUNTRIES = ("BR", "US", "DE", "IN")
DEVICES = ("tv", "mobile", "web")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class PlaybackLog:
    """Events per partition in delivery order, and what they should count to."""

    partitions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def all_events(self) -> list[dict[str, Any]]:
        return [e for events in self.partitions.values() for e in events]

    def expected_starts(self, size_ms: int) -> Counter[tuple[int, str, str]]:
        """Stream starts per (window start, country, device), counted from the events themselves."""
        unique = {e["event_id"]: e for e in self.all_events()}
        return Counter(
            (e["event_time_ms"] - e["event_time_ms"] % size_ms, e["country"], e["device_type"])
            for e in unique.values()
            if e["event_type"] == "play_start"
        )


def playback_sessions(seed: int, partitions: int, sessions: int, start_ms: int, span_ms: int) -> PlaybackLog:
    """Sessions of attempt -> start or failure -> heartbeats, keyed to partitions, delivered slightly out of order."""
    rng = random.Random(seed)
    by_partition: dict[int, list[dict[str, Any]]] = {p: [] for p in range(partitions)}
    for s in range(sessions):
        session_id = f"s{seed}-{s}"
        partition = s % partitions
        country, device = rng.choice(COUNTRIES), rng.choice(DEVICES)
        t = start_ms + rng.randrange(span_ms)
        common = {
            "session_id": session_id,
            "account_id": f"a{rng.randrange(1000)}",
            "title_id": f"t{rng.randrange(50)}",
            "country": country,
            "device_type": device,
            "schema_version": 1,
        }
        events: list[dict[str, Any]] = [{"event_type": "play_attempt", "event_time_ms": t}]
        if rng.random() < 0.9:
            t += rng.randrange(200, 4000)
            events.append({"event_type": "play_start", "event_time_ms": t, "startup_ms": 900, "cdn": "c1"})
            for _ in range(rng.randrange(0, 4)):
                t += 30_000
                events.append(
                    {"event_type": "heartbeat", "event_time_ms": t, "played_ms": 30_000, "bitrate_kbps": 3000}
                )
        else:
            t += rng.randrange(200, 4000)
            events.append({"event_type": "start_failure", "event_time_ms": t, "error_code": "E1"})
        for i, event in enumerate(events):
            by_partition[partition].append({"event_id": f"{session_id}-{i}", **common, **event})
    for p, events in by_partition.items():
        events.sort(key=lambda e: e["event_time_ms"])
        # Out of order within 5 s: swap neighbours whose times are close.
        for i in range(len(events) - 1):
            if events[i + 1]["event_time_ms"] - events[i]["event_time_ms"] < 5_000 and rng.random() < 0.5:
                events[i], events[i + 1] = events[i + 1], events[i]
        by_partition[p] = events
    return PlaybackLog(by_partition)


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topics with these partition counts, as the product does (connect.kafka_admin)."""
    ensure_topics(KafkaSettings(bootstrap, "unused-playback", "unused-signup", "unused-dead-letter"), topics)


def own_topics(bootstrap: str, name: str, playback_partitions: int = 2, signup_partitions: int = 1) -> KafkaSettings:
    """A test's own topics, named after `name` (`playback-{name}`, ...), with the two input topics created."""
    kafka = KafkaSettings(
        bootstrap=bootstrap,
        playback_topic=f"playback-{name}",
        signup_topic=f"signup-{name}",
        dead_letter_topic=f"dead-letter-{name}",
        anomalies_topic=f"anomalies-{name}",
    )
    create_topics(bootstrap, {kafka.playback_topic: playback_partitions, kafka.signup_topic: signup_partitions})
    return kafka


def produce(bootstrap: str, topic: str, messages: Sequence[tuple[int, bytes | None, bytes]]) -> None:
    """Produce (partition, key, value) messages and wait until every one is acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for partition, key, value in messages:
        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0, "messages still in flight after 60 s"
    assert not failures, failures[:3]


def produce_log(bootstrap: str, topic: str, log: PlaybackLog) -> None:
    produce(
        bootstrap,
        topic,
        [(p, e["session_id"].encode(), orjson.dumps(e)) for p, events in log.partitions.items() for e in events],
    )


def streampulse(
    *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "streampulse.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        check=False,
    )


def start_streampulse(*args: str, log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "streampulse.cli", *args], stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO
    )


def start_cluster(
    options: Sequence[str], logs: Sequence[Path], metrics_ports: Sequence[int] | None = None, append: bool = False
) -> list[subprocess.Popen[bytes]]:
    """`streampulse run OPTIONS` as a bytewax cluster of one process per log, all started at once.

    One log: a lone process (no cluster flags). Each process serves /metrics on its port of `metrics_ports` (one the
    OS picks by default) and writes its output to its log (`append`: after what a previous run wrote there).
    """
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in logs)
    ports = list(metrics_ports) if metrics_ports is not None else [0] * len(logs)
    return [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "streampulse.cli", "run", "--metrics-port", str(port)),
                *(("--process-id", str(i), "--addresses", addresses) if len(logs) > 1 else ()),
                *options,
            ],
            stdout=log.open("ab" if append else "wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        for i, (port, log) in enumerate(zip(ports, logs, strict=True))
    ]


def wait_cluster(cluster: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path], timeout: float = 300) -> None:
    """Wait for every process of a cluster to exit; a failure shows the end of its log."""
    for process, log in zip(cluster, logs, strict=True):
        assert process.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Message]:
    """Every message of every partition of `topic`, partition by partition in offset order, up to its end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{topic}", "enable.partition.eof": True})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Message] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"did not reach the end of {topic} within {timeout_s:.0f} s"
            for message in consumer.consume(1000, 1.0):
                error = message.error()
                if error is None:
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition() or 0)
    finally:
        consumer.close()
    return sorted(messages, key=lambda m: (m.partition() or 0, m.offset() or 0))


DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def yesterday_at(hour: int) -> int:
    """Epoch ms of `hour`:00 UTC the day before today (UTC): a fixed time of day, always in the past.

    The load generator's traffic depends on the time of day only (its diurnal curve is per UTC minute, and
    every window length divides a day), so anchoring there makes a test's traffic the same whatever hour it
    runs at. Yesterday is in the past, as the decoder wants, and well inside Kafka's 7-day retention of the
    record timestamps (the simulated delivery times) and Redis' TTLs.
    """
    now = time.time_ns() // 1_000_000
    return (now // DAY_MS - 1) * DAY_MS + hour * HOUR_MS
