"""Replays and the archive on real Kafka and Redis: a replayed range equals what the live run wrote.

One generated stream per stack (steady traffic with sessions already
playing, sign-up funnels, out-of-order delivery, duplicates, events later
than the allowed lateness, malformed messages) is produced to Kafka with
delivery-time record timestamps and aggregated by `run --exit-at-end` into a
live namespace. Replays of a range in the middle of it, from Kafka and from
the archive, must write every window inside the range exactly as the live
run did, and touch nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from flows.sources.kafka_seek import seek_offset
from flows.windows.catalog import AGGREGATES, BASE_DIMS, METRICS, dims_of
from loadgen.api import generate, produce
from loadgen.config import FaultConfig, ModelParams
from schemas.archive_layout import CHUNKS_DIR
from schemas.decoder import EventDecoder, Rejection
from settings.kafka import KafkaSettings
from sinks.redis_layout import index_key
from sinks.redis_query import query
from sinks.window_read import read_windows
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import REPO, create_topics, own_topics, read_to_end, streampulse, yesterday_at

pytestmark = pytest.mark.integration

HOUR = 3_600_000
MINUTE = 60_000
SIZES = {"10s": 10_000, "1m": MINUTE}
PARTITIONS = {"playback": 4, "signup": 2}
FAULTS = FaultConfig(
    jitter_ms=2_000,
    late_fraction=0.004,
    late_by_ms=120_000,  # later than the allowed lateness (30 s), mostly delivered within the range
    duplicate_fraction=0.01,
    duplicate_delay_ms=3_000,
    malformed_fraction=0.004,
)


@dataclass(frozen=True)
class Live:
    """A stream in Kafka and what `run --exit-at-end` made of it."""

    stack: Stack
    kafka: KafkaSettings
    namespace: str
    from_ms: int  # the range the tests replay
    to_ms: int

    def connection(self, namespace: str) -> list[str]:
        kafka = self.kafka
        return [
            "--kafka-bootstrap", kafka.bootstrap, "--playback-topic", kafka.playback_topic,
            "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
            "--anomalies-topic", kafka.anomalies_topic, "--redis-url", self.stack.redis_url, "--namespace", namespace,
        ]  # fmt: skip

    def replay(self, namespace: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return streampulse(
            "replay", "--from", str(self.from_ms), "--to", str(self.to_ms), *self.connection(namespace),
            # The generated record timestamps never trail event times: a tight skew lets the seek skip data.
            "--timestamp-skew", "1m", *extra, timeout=180,
        )  # fmt: skip


@pytest.fixture(scope="module")
def live(stack: Stack) -> Live:
    name = os.urandom(5).hex()
    kafka = own_topics(stack.bootstrap, name, PARTITIONS["playback"], PARTITIONS["signup"])
    start = yesterday_at(20)  # the same time of day on every run: the same traffic, whatever the hour
    generated = generate(
        seed=31,
        events=20_000,
        start_ms=start,
        span_ms=25 * MINUTE,
        # Sessions already playing at the start, many sign-up funnels: state a replay must rebuild.
        params=ModelParams(warm_start=True, signup_share=1.0, watch_median_ms=3 * MINUTE),
        faults=FAULTS,
        session_timeout_ms=60_000,
        with_truth=False,
    )
    assert produce(generated.messages, kafka)["failed"] == 0
    run = Live(stack, kafka, f"live-{name}", from_ms=start + 10 * MINUTE, to_ms=start + 18 * MINUTE)
    result = streampulse("run", "--exit-at-end", "--metrics-port", "0", *run.connection(run.namespace), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _keyspace(client: redis.Redis, skip_namespace: str) -> dict[bytes, bytes]:
    """Every key (but the skipped namespace's) with its serialized value."""
    skip = f"sp:{skip_namespace}:".encode()
    return {key: client.dump(key) or b"" for key in client.scan_iter(count=1000) if not key.startswith(skip)}


def _high_watermarks(kafka: KafkaSettings) -> dict[str, int]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "test"})
    try:
        existing = consumer.list_topics(timeout=10).topics
        marks = {}
        for topic in (kafka.dead_letter_topic, kafka.anomalies_topic):
            parts = sorted(existing[topic].partitions) if topic in existing else []
            marks[topic] = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
        return marks
    finally:
        consumer.close()


def _windows(client: redis.Redis, namespace: str, resolution: str) -> list[int]:
    return sorted(int(m) for m in client.zrange(index_key(namespace, resolution), 0, -1))  # type: ignore[arg-type]


def _aggregates(client: redis.Redis, namespace: str, resolution: str, start: int) -> dict[str, dict[Any, int]]:
    [window] = read_windows(client, namespace, resolution, [start], list(AGGREGATES))
    return {a: {dims: v for dims, v in window.values.get(a, {}).items() if v} for a in AGGREGATES}


def _assert_replay_equals_live(client: redis.Redis, live: Live, namespace: str) -> None:
    compared = 0
    for resolution, size in SIZES.items():
        inside = [
            w for w in _windows(client, live.namespace, resolution) if live.from_ms <= w and w + size <= live.to_ms
        ]
        assert len(inside) == (live.to_ms - live.from_ms) // size
        # Exactly the windows inside the range: those straddling it or of the lead hold only part of their events.
        assert _windows(client, namespace, resolution) == inside
        for start in inside:
            expected = _aggregates(client, live.namespace, resolution, start)
            assert _aggregates(client, namespace, resolution, start) == expected, (resolution, start)
            assert read_windows(client, namespace, resolution, [start])[0].final
            compared += sum(len(cells) for cells in expected.values())
        for metric, spec in METRICS.items():
            # Every metric at its finest grouping (top titles rank titles within country and device).
            by = BASE_DIMS if spec.kind == "top" else dims_of(metric)
            rows = {
                ns: [
                    (r.window_start_ms, tuple(sorted(r.dims.items())), r.value)
                    for r in query(client, ns, metric, resolution, live.from_ms, live.to_ms, by=by, top_n=10_000)
                ]
                for ns in (live.namespace, namespace)
            }
            assert rows[namespace] == rows[live.namespace], (metric, resolution)
    assert compared > 1000  # the comparison covers real traffic, not empty windows


def _check_replay(client: redis.Redis, live: Live, namespace: str, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replay: done:" in result.stderr
    _assert_replay_equals_live(client, live, namespace)
    marker = client.hgetall(f"sp:{namespace}:replay")
    assert marker[b"state"] == b"done" and int(marker[b"from_ms"]) == live.from_ms


def test_replay_from_kafka_equals_the_live_run(live: Live) -> None:
    client = redis.Redis.from_url(live.stack.redis_url)
    namespace = f"replay-{os.urandom(4).hex()}"
    before, topics_before = _keyspace(client, namespace), _high_watermarks(live.kafka)
    result = live.replay(namespace)
    _check_replay(client, live, namespace, result)
    # Nothing but the replay's namespace changed: not the live keys, not the dead-letter or anomalies topics.
    assert _keyspace(client, namespace) == before
    assert _high_watermarks(live.kafka) == topics_before
    # A namespace a live run wrote is refused before anything is written.
    refused = live.replay(live.namespace)
    assert refused.returncode == 2
    assert "no replay wrote" in refused.stderr
    assert _keyspace(client, namespace) == before


def test_replay_from_the_archive_equals_the_live_run(live: Live, tmp_path: Path) -> None:
    client = redis.Redis.from_url(live.stack.redis_url)
    archive = tmp_path / "archive"
    written = streampulse(
        "archive", "--exit-at-end", "--archive-dir", str(archive), "--chunk-events", "2000", "--metrics-port", "0",
        *live.connection("unused")[:10],
    )  # fmt: skip
    assert written.returncode == 0, written.stderr[-3000:]
    assert "archive: done:" in written.stderr
    namespace = f"replay-{os.urandom(4).hex()}"
    before = _keyspace(client, namespace)
    # At 200x the 8 minutes take 2.4 s or more: long enough for progress lines.
    result = live.replay(namespace, "--source", "archive", "--archive-dir", str(archive), "--pace", "200x")
    _check_replay(client, live, namespace, result)
    assert "% of the range" in result.stderr
    assert _keyspace(client, namespace) == before


def test_kafka_seek_by_timestamp_never_misses_a_record(stack: Stack, unique_name: str) -> None:
    topic = f"seek-{unique_name}"
    create_topics(stack.bootstrap, {topic: 1})
    base = int(time.time() * 1000) - HOUR
    # Mostly increasing record timestamps, with some stragglers stamped earlier than their neighbours.
    stamps = [base + i * 100 - (5_000 if i % 17 == 0 else 0) for i in range(2_000)]
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 5})
    for i, stamp in enumerate(stamps):
        producer.produce(topic, b"x", partition=0, timestamp=stamp)
        if i % 250 == 0:
            producer.flush(30)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "test", "enable.partition.eof": True})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        for target in (base - 1, base + 15_000, base + 100_050, base + 199_000):
            exact = next(i for i, stamp in enumerate(stamps) if stamp >= target)
            offset = seek_offset(consumer, topic, 0, target, low, high)
            # Never after the first record at or past the target; the beginning is the correct fallback.
            assert offset in (exact, low), (target, offset, exact)
            if stack.name == "apache":
                assert offset == exact  # Apache Kafka answers timestamp lookups exactly (tansu 0.6 does not)
    finally:
        consumer.close()


def _valid_messages(kafka: KafkaSettings) -> tuple[list[tuple[str, int, int, str]], int]:
    """Every valid message of both topics as (family, partition, offset, event_id), and how many are bad."""
    valid: list[tuple[str, int, int, str]] = []
    bad = 0
    for family, topic in (("playback", kafka.playback_topic), ("signup", kafka.signup_topic)):
        decoder = EventDecoder(family)
        for message in read_to_end(kafka.bootstrap, topic):
            event = decoder.decode(message.value(), int(time.time() * 1000))
            if isinstance(event, Rejection):
                bad += 1
            else:
                valid.append((family, message.partition() or 0, message.offset() or 0, event.event_id))
    return sorted(valid), bad


def _archived(root: Path) -> list[tuple[str, int, int, str]]:
    """Every archived row as (family, partition, offset, event_id), read as any Parquet tool would."""
    if not any(p for p in root.rglob("*.parquet") if not p.name.startswith(".")):
        return []
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table(
        columns=["family", "kafka_partition", "kafka_offset", "event_id"]
    )
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def _archive_metrics(port: int) -> dict[str, float]:
    """What the archive's /metrics says: events written, bad messages skipped, messages held, lag (summed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals = {"events": 0.0, "bad": 0.0, "buffered": 0.0, "lag": 0.0}
    names = {
        "streampulse_archive_events_total": "events",
        "streampulse_archive_bad_events_total": "bad",
        "streampulse_archive_buffered_messages": "buffered",
        "streampulse_archive_lag_messages": "lag",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                totals[names[sample.name]] += sample.value
    return totals


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.parquet")}


def _markers(root: Path) -> Iterator[dict[str, Any]]:
    """The committed chunks' markers."""
    for path in (root / CHUNKS_DIR).rglob("*.json"):
        if not path.name.endswith(".pending.json"):
            yield orjson.loads(path.read_bytes())


def test_archive_killed_mid_run_resumes_with_every_event_exactly_once(live: Live, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    args = [
        "archive", "--exit-at-end", "--archive-dir", str(archive), "--chunk-events", "300", "--metrics-port", "0",
        *live.connection("unused")[:10],
    ]  # fmt: skip
    log = (tmp_path / "killed.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "streampulse.cli", *args], stdout=log, stderr=log, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if sum(1 for _ in _markers(archive)) >= 2:  # killed with chunks to resume after
                break
            time.sleep(0.01)
        assert process.poll() is None, "the archiver ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    complete = sum(1 for _ in _markers(archive))
    resumed = streampulse(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    valid, bad = _valid_messages(live.kafka)
    assert _archived(archive) == valid  # each valid message once: none lost, none doubled
    assert sum(sum(m["bad"].values()) for m in _markers(archive)) == bad > 0
    assert sum(1 for _ in _markers(archive)) > complete
    # A run that was never interrupted cuts the same chunks: the same files, byte for byte.
    clean = tmp_path / "clean"
    uninterrupted = streampulse(*[clean.as_posix() if a == str(archive) else a for a in args])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert _files(archive) == _files(clean)


def test_archive_keeps_up_with_a_live_topic_and_stops_cleanly(stack: Stack, unique_name: str, tmp_path: Path) -> None:
    kafka = KafkaSettings(stack.bootstrap, f"playback-{unique_name}", f"signup-{unique_name}", f"dl-{unique_name}")
    create_topics(stack.bootstrap, {kafka.playback_topic: 2, kafka.signup_topic: 1})
    generated = generate(seed=3, events=400, start_ms=int(time.time() * 1000) - HOUR, span_ms=10 * MINUTE)
    first, second = generated.messages[:250], generated.messages[250:]
    assert produce(first, kafka)["failed"] == 0
    archive = tmp_path / "archive"
    metrics_port = free_port()
    args = [
        "archive", "--archive-dir", str(archive), "--flush-interval", "1s", "--kafka-bootstrap", stack.bootstrap,
        "--playback-topic", kafka.playback_topic, "--signup-topic", kafka.signup_topic,
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    log = tmp_path / "archive.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "streampulse.cli", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO
    )
    try:
        for produced in (first, generated.messages):
            if produced is generated.messages:
                assert produce(second, kafka)["failed"] == 0
            # Caught up, the archiver writes what it holds after --flush-interval: the files follow the topic.
            expected = len([m for m in produced if m.kind != "malformed"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and process.poll() is None:
                if archive.is_dir() and len(_archived(archive)) == expected:
                    break
                time.sleep(0.2)
            assert len(_archived(archive)) == expected, log.read_text()[-3000:]
            # /metrics says the same: every valid message archived, none held, no lag (sampled every second).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (seen := _archive_metrics(metrics_port))["lag"] + seen["buffered"]:
                time.sleep(0.2)
            assert _archive_metrics(metrics_port) == {
                "events": expected,
                "bad": len(produced) - expected,
                "buffered": 0,
                "lag": 0,
            }, log.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    assert "archive: done:" in log.read_text()
