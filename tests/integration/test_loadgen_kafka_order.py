"""The load generator's Kafka output is its file output, partition by partition, in send order.

The ground truth assumes every partition holds the events in the order they were sent, so a retried batch
landing after later ones (a producer without idempotence, right after a topic is created or across a broker
restart) makes the truth wrong. Checked against a `--out` file run with the same seed: no message lost, none
doubled, none moved. Without idempotence, measured here on Apache Kafka 4.3.1: thousands of messages moved
in a partition right after topic creation (3,800 to 4,787 of about 12,000-49,000 in one partition).

The restart is a broker's controlled shutdown (SIGTERM) and start, as in a rolling restart. Across it nothing is
lost and the first copy of every message is where the send order puts it, but the batches in flight when the
broker went away can land twice: when librdkafka cannot learn whether they were written, it bumps the producer
epoch and sends them again (KIP-360), and their copies follow the originals. Seen on a loaded machine, twice:
3,549 and 3,563 copies of 400,000 messages, one block in one partition; none when the machine is idle. The
flow takes such a copy for a re-delivery (the same event_id): counted once. A kill -9 of the single broker is
beyond what idempotence can promise: measured twice in three runs, the producer then saw 559 of 400,000
acknowledged messages lost or 3,549 doubled, as the broker recovers its log and producer state from an unclean
shutdown without fsync (Kafka relies on replicas, which a single test broker has none of).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from loadgen.api import Message, generate_config, produce
from settings.kafka import KafkaSettings
from streampulse.configure import kafka_settings
from streampulse.loadgen_cli import add_arguments, build_config
from tests.conftest import Stack
from tests.integration.helpers import read_to_end, streampulse
from tests.services.apache_kafka import ApacheKafka, start_apache_kafka

pytestmark = pytest.mark.integration

PARTITIONS = 8
START = "2026-01-01T00:00:00Z"  # simulated event time: any fixed past hour gives the same bytes every run
KEY_FIELDS = ("session_id", "signup_id")
_CLEAN_SHUTDOWN_S = 180.0


def _generate(seed: int, events: int) -> list[str]:
    return ["--seed", str(seed), "--events", str(events), "--start", START, "--span", "1h"]


def _file_run(args: list[str], tmp_path: Path) -> list[bytes]:
    out = tmp_path / "sent.jsonl"
    result = streampulse("loadgen", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out.read_bytes().splitlines()


def _key(line: bytes) -> bytes:
    event = orjson.loads(line)
    return next(str(event[f]) for f in KEY_FIELDS if f in event).encode()


def _assert_send_order(bootstrap: str, topics: list[str], sent: list[bytes], copies_allowed: bool = False) -> int:
    """Every partition holds exactly the sent messages of its keys, in send order; returns the copies found.

    `copies_allowed`: a partition may also hold second copies of messages sent before (a block resent after a
    broker restart); without them it must be exactly the send order, and nothing may be missing either way.
    """
    received = 0
    copies = 0
    for topic in topics:
        partition_of: dict[bytes, int] = {}
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for message in read_to_end(bootstrap, topic):
            key, partition = message.key(), message.partition()
            assert isinstance(key, bytes) and partition is not None
            assert partition_of.setdefault(key, partition) == partition, f"key {key!r} in two partitions"
            by_partition[partition].append(message.value() or b"")
        expected: dict[int, list[bytes]] = defaultdict(list)
        for line in sent:
            partition = partition_of.get(_key(line))
            if partition is not None:
                expected[partition].append(line)
        for partition, values in by_partition.items():
            if copies_allowed:
                extra = _copies(values, expected[partition])
                assert extra is not None, f"{topic}[{partition}]: a sent message missing or out of send order"
                copies += extra
                continue
            moved = sum(a != b for a, b in zip(values, expected[partition], strict=False))
            assert (len(values), moved) == (len(expected[partition]), 0), (
                f"{topic}[{partition}]: {len(values)} messages for {len(expected[partition])} sent; "
                f"{moved} not where the send order puts them"
            )
        received += sum(len(v) for v in by_partition.values())
    assert received == len(sent) + copies, f"{received} messages in Kafka, {len(sent)} sent, {copies} copies"
    return copies


def _copies(received: list[bytes], sent: list[bytes]) -> int | None:
    """How many of `received` are extra copies, if `sent` is in it in order and every extra one was sent before it.

    None if a sent message is missing, or out of order, or a received one was never sent before where it stands.
    """
    seen: set[bytes] = set()
    at = 0
    extra = 0
    for value in received:
        if at < len(sent) and value == sent[at]:
            seen.add(value)
            at += 1
        elif value in seen:
            extra += 1
        else:
            return None
    return extra if at == len(sent) else None


def _stop_cleanly(kafka: ApacheKafka) -> None:
    """SIGTERM the broker and wait for its controlled shutdown to finish, however slow a loaded machine makes it.

    The service's usual stop falls back to SIGKILL after 15 s; on a busy CI machine the shutdown can take longer,
    and a kill -9 mid-shutdown is the unclean case the module docstring sets aside (3,549 doubled, seen once so).
    """
    started = time.monotonic()
    kafka.process.stop(grace_s=_CLEAN_SHUTDOWN_S)
    code = kafka.process.popen.returncode
    took = time.monotonic() - started
    assert code in (0, 143), f"the broker did not shut down cleanly: exit code {code} after {took:.0f} s"


def _create_just_before(bootstrap: str, topics: list[str]) -> None:
    """Create the topics as `kafka-topics.sh --create` does, returning as soon as their metadata shows.

    The broker answers before every new partition's leader is ready to take writes, so the first produce
    requests can be refused and retried: what the load generator meets when run right after creating its
    topics.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics]).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    while not all(t in (found := admin.list_topics(timeout=5).topics) and found[t].error is None for t in topics):
        assert time.monotonic() < deadline, f"topics {topics} did not appear within 30 s"
        time.sleep(0.01)


def _generated(args: list[str], bootstrap: str, topics: list[str]) -> tuple[list[Message], KafkaSettings]:
    """The messages `streampulse loadgen ARGS` sends to these topics, generated in memory (loadgen.api)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    kafka = ["--kafka-bootstrap", bootstrap, "--playback-topic", topics[0], "--signup-topic", topics[1]]
    options = parser.parse_args([*args, *kafka])
    return generate_config(build_config(options), with_truth=False).messages, kafka_settings(options)


def _produce(messages: Iterable[Message], settings: KafkaSettings) -> None:
    """Produce as the command line does (loadgen.sinks.KafkaSink), as fast as the broker takes them."""
    report = produce(messages, settings, flush_timeout_s=120)
    assert (report["failed"], report["unconfirmed"]) == (0, 0), report


def test_loadgen_to_kafka_keeps_the_send_order_of_a_file_run(stack: Stack, unique_name: str, tmp_path: Path) -> None:
    # Also the check that the broker (tansu in the embedded stack) takes an idempotent producer.
    args = _generate(seed=11, events=100_000)
    topics = [f"playback-{unique_name}", f"signup-{unique_name}"]
    messages, settings = _generated(args, stack.bootstrap, topics)
    _create_just_before(stack.bootstrap, topics)
    _produce(messages, settings)
    _assert_send_order(stack.bootstrap, topics, _file_run(args, tmp_path))


@pytest.mark.stacks("apache")  # a restartable broker of its own
def test_loadgen_order_survives_a_broker_restart(unique_name: str, tmp_path: Path) -> None:
    events = 400_000
    args = _generate(seed=12, events=events)
    topics = [f"playback-{unique_name}", f"signup-{unique_name}"]
    with start_apache_kafka(tmp_path / "kafka") as kafka:
        messages, settings = _generated(args, kafka.bootstrap, topics)
        _create_just_before(kafka.bootstrap, topics)
        failed: list[BaseException] = []
        a_quarter_handed_over = threading.Event()

        def handed_over() -> Iterator[Message]:
            for i, message in enumerate(messages):
                if i == len(messages) // 4:
                    a_quarter_handed_over.set()
                yield message

        def production() -> None:
            try:
                _produce(handed_over(), settings)
            except BaseException as exc:  # handed to the test's thread
                failed.append(exc)
            finally:
                a_quarter_handed_over.set()

        # A daemon thread: if the broker does not come back, the test fails instead of hanging on the producer.
        producer = threading.Thread(target=production, daemon=True)
        producer.start()
        assert a_quarter_handed_over.wait(timeout=120), "the producer did not take the first quarter within 120 s"
        # Three quarters still to send and the last acks to wait for: the restart cuts through the production.
        # A controlled shutdown, as a rolling restart does (a kill -9: see the module docstring).
        assert producer.is_alive(), failed
        _stop_cleanly(kafka)
        kafka.restart()
        producer.join(timeout=240)
        assert not producer.is_alive(), "the load generator did not finish within 240 s of the restart"
        assert not failed, failed
        # Order kept and nothing lost; librdkafka may send the batches in flight at the restart again (see the
        # module docstring): their copies follow the originals.
        copies = _assert_send_order(kafka.bootstrap, topics, _file_run(args, tmp_path), copies_allowed=True)
        assert copies <= events // 20, f"{copies} copies of {events} messages"
