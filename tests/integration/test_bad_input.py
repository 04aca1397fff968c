"""Hostile input on a real broker: every bad message dead-lettered with its reason, every valid event counted.

Oversize messages (just over librdkafka's 1,000,000 bytes, over 1 MiB, 10 MiB:
the input topic accepts 16 MiB) used to take the flow down for good: the
dead-letter producer could not write them. Now they go truncated, with
their size and SHA-256 in headers (sinks/dead_letter.py).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from sinks.dead_letter_fit import STUB_VALUE_BYTES
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import (
    PlaybackLog,
    playback_sessions,
    read_to_end,
    scrape,
    start_streampulse,
    streampulse,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
INPUT_MAX_BYTES = 16 * 1024 * 1024
MiB = 1024 * 1024


def _valid_json_of_size(template: dict[str, object], size: int) -> bytes:
    """A valid event padded by an unknown field to exactly `size` bytes: too large is its only fault.

    The padding is hex of random bytes, so compression cannot bring it under the broker's limit.
    """
    raw = orjson.dumps({**template, "padding": ""})
    padding = random.Random(size).randbytes(size // 2 + 1).hex().encode()[: size - len(raw)]
    return raw[:-2] + padding + b'"}'


def _bad_messages(template: dict[str, object]) -> list[tuple[bytes, str]]:
    """(value, expected reason) of each kind of hostile message."""
    raw = orjson.dumps(template)
    return [
        (_valid_json_of_size(template, 1_000_100), "too_large"),
        (_valid_json_of_size(template, MiB + 1), "too_large"),
        (_valid_json_of_size(template, 10 * MiB), "too_large"),
        (raw.replace(b'"title_id":"', b'"title_id":"\xff\xfe'), "malformed_json"),  # invalid UTF-8
        (raw.replace(b'"title_id":"', b'"title_id":"\x00'), "malformed_json"),  # a raw NUL byte
        (raw[:-1] + b',"deep":' + b"[" * 20_000 + b"]" * 20_000 + b"}", "malformed_json"),  # nested too deep
        (raw.replace(b'"startup_ms":900', b'"startup_ms":' + b"9" * 400), "out_of_range"),  # a huge number
        (raw.replace(b'"country":"', b'"country":"ZY","country":"'), "duplicate_key"),
    ]


def _plan(
    log: PlaybackLog, bad_key: bytes | None
) -> tuple[dict[int, list[tuple[bytes | None, bytes]]], dict[tuple[int, int], str]]:
    """Messages per partition (valid events with the bad ones spread among them) and, by offset, the bad ones."""
    messages: dict[int, list[tuple[bytes | None, bytes]]] = {}
    expected: dict[tuple[int, int], str] = {}
    for p, events in log.partitions.items():
        start = next(e for e in events if e["event_type"] == "play_start")
        # A play start whose only fault is what is done to it: counted if wrongly accepted.
        template = {**start, "event_id": f"bad-{p}", "startup_ms": 900}
        bad = _bad_messages(template)
        valid: list[tuple[bytes | None, bytes]] = [(str(e["session_id"]).encode(), orjson.dumps(e)) for e in events]
        step = max(len(valid) // (len(bad) + 1), 1)
        out: list[tuple[bytes | None, bytes]] = []
        for i, (value, reason) in enumerate(bad):
            out.extend(valid[i * step : (i + 1) * step])
            expected[(p, len(out))] = reason
            out.append((bad_key, value))
        out.extend(valid[len(bad) * step :])
        messages[p] = out
    return messages, expected


def _produce(bootstrap: str, topic: str, messages: dict[int, list[tuple[bytes | None, bytes]]]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "message.max.bytes": INPUT_MAX_BYTES + MiB}
    )
    failures: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    for p, batch in messages.items():
        for key, value in batch:
            producer.produce(topic, value=value, key=key, partition=p, on_delivery=delivered)
            producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures[:3]


def _headers(message: Message) -> dict[str, bytes]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {name: value for name, value in pairs if isinstance(value, bytes)}


def _query_starts(connection: list[str], resolution: str) -> Counter[tuple[int, str, str]]:
    result = streampulse(
        "query", "stream_starts", "--resolution", resolution, "--from", "0", "--by", "country,device_type",
        "--format", "json", *connection,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    counts: Counter[tuple[int, str, str]] = Counter()
    for row in map(orjson.loads, result.stdout.splitlines()):
        if row["value"]:
            counts[(row["window_start_ms"], row["dims"]["country"], row["dims"]["device_type"])] += row["value"]
    return counts


def _setup(
    stack: Stack, name: str, bad_key: bytes | None = b"bad", dead_letter_config: dict[str, str] | None = None
) -> tuple[PlaybackLog, dict[int, list[tuple[bytes | None, bytes]]], dict[tuple[int, int], str]]:
    """Topics (the input accepting 16 MiB), and valid events with every kind of bad message among them."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    topics = [
        NewTopic(f"playback-{name}", PARTITIONS, 1, config={"max.message.bytes": str(INPUT_MAX_BYTES)}),
        NewTopic(f"signup-{name}", 1, 1),
    ]
    if dead_letter_config is not None:
        topics.append(NewTopic(f"dead-letter-{name}", PARTITIONS, 1, config=dead_letter_config))
    for future in admin.create_topics(topics).values():
        future.result(60)
    now = int(time.time() * 1000)
    log = playback_sessions(29, PARTITIONS, sessions=300, start_ms=now - 20 * 60_000, span_ms=4 * 60_000)
    messages, expected = _plan(log, bad_key)
    _produce(stack.bootstrap, f"playback-{name}", messages)
    return log, messages, expected


def _run(stack: Stack, name: str, *args: str) -> tuple[list[str], str]:
    """`streampulse run --exit-at-end` on the test's topics; the query connection and stderr. Asserts exit 0."""
    connection = ["--redis-url", stack.redis_url, "--namespace", f"test-{name}"]
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0", "--kafka-bootstrap", stack.bootstrap,
        "--playback-topic", f"playback-{name}", "--signup-topic", f"signup-{name}",
        "--dead-letter-topic", f"dead-letter-{name}", *connection, *args,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return connection, result.stderr


def _assert_counted_exactly(connection: list[str], log: PlaybackLog) -> None:
    """Every valid event counted, nothing of the bad ones."""
    for resolution, size_ms in (("10s", 10_000), ("1m", 60_000)):
        assert _query_starts(connection, resolution) == log.expected_starts(size_ms), resolution


@pytest.mark.parametrize("workers", [1, 2])
def test_hostile_messages_are_dead_lettered_by_reason_and_valid_events_counted_exactly(
    stack: Stack, unique_name: str, workers: int
) -> None:
    log, messages, expected = _setup(stack, unique_name)
    connection, _stderr = _run(stack, unique_name, "--workers", str(workers))
    _assert_counted_exactly(connection, log)

    # Every bad message dead-lettered once, with its reason and its source.
    letters = read_to_end(stack.bootstrap, f"dead-letter-{unique_name}")
    found: dict[tuple[int, int], str] = {}
    for message in letters:
        headers = _headers(message)
        assert headers["sp-source-topic"] == f"playback-{unique_name}".encode()
        source = (int(headers["sp-source-partition"]), int(headers["sp-source-offset"]))
        assert source not in found, f"{source} dead-lettered twice"
        found[source] = headers["sp-reason"].decode()
        original = messages[source[0]][source[1]][1]
        if "sp-truncated" in headers:
            assert len(original) > 1_000_000
            assert headers["sp-original-size"] == str(len(original)).encode()
            assert headers["sp-original-sha256"] == hashlib.sha256(original).hexdigest().encode()
            assert original.startswith(message.value() or b"") and len(message.value() or b"") > 500_000
        else:
            assert message.value() == original
    assert found == expected
    truncated = {int(_headers(m)["sp-original-size"]) for m in letters if "sp-truncated" in _headers(m)}
    assert 10 * MiB in truncated, "a 10 MiB letter cannot fit a dead-letter topic with default settings"


@pytest.mark.stacks("apache")  # tansu does not enforce max.message.bytes
def test_a_letter_the_broker_refuses_as_too_large_goes_as_a_stub(stack: Stack, unique_name: str) -> None:
    # The option claims 5 MB, the topic takes 1 MiB: the truncated 10 MiB letter is refused, its stub is not.
    log, messages, expected = _setup(stack, unique_name)
    connection, _stderr = _run(stack, unique_name, "--dead-letter-max-bytes", "5000000")
    _assert_counted_exactly(connection, log)
    letters = read_to_end(stack.bootstrap, f"dead-letter-{unique_name}")
    assert len(letters) == len(expected)
    stubs = [m for m in letters if _headers(m).get("sp-original-size") == str(10 * MiB).encode()]
    assert len(stubs) == PARTITIONS
    for message in stubs:
        headers = _headers(message)
        original = messages[int(headers["sp-source-partition"])][int(headers["sp-source-offset"])][1]
        assert message.value() == original[:STUB_VALUE_BYTES]
        assert headers["sp-original-sha256"] == hashlib.sha256(original).hexdigest().encode()


@pytest.mark.stacks("apache")  # tansu accepts records without a key on a compacted topic
def test_a_letter_refused_for_good_is_counted_and_logged_and_the_flow_goes_on(stack: Stack, unique_name: str) -> None:
    # A compacted topic refuses records without a key, for good: the bad messages here have none.
    log, _messages, expected = _setup(
        stack, unique_name, bad_key=None, dead_letter_config={"cleanup.policy": "compact"}
    )
    connection, stderr = _run(stack, unique_name)
    _assert_counted_exactly(connection, log)
    assert read_to_end(stack.bootstrap, f"dead-letter-{unique_name}") == []
    refusals = [line for line in stderr.splitlines() if "could not write the dead letter" in line]
    assert len(refusals) == 1, stderr[-3000:]  # once per Kafka error, however many letters
    assert "streampulse_dead_letters_undeliverable_total" in refusals[0]
    assert len(expected) > 1


def test_a_live_flow_stays_up_and_counts_the_truncated_letters(stack: Stack, unique_name: str, tmp_path: Path) -> None:
    _log, _messages, expected = _setup(stack, unique_name)
    port = free_port()
    process = start_streampulse(
        "run", "--metrics-port", str(port), "--kafka-bootstrap", stack.bootstrap,
        "--playback-topic", f"playback-{unique_name}", "--signup-topic", f"signup-{unique_name}",
        "--dead-letter-topic", f"dead-letter-{unique_name}", "--redis-url", stack.redis_url,
        "--namespace", f"test-{unique_name}", log_path=tmp_path / "run.log",
    )  # fmt: skip
    reasons = Counter(expected.values())
    try:
        deadline = time.monotonic() + 120
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            try:
                samples = scrape(port)
            except OSError:
                samples = {}
            if samples.get(("streampulse_dead_letters_written_total", ())) == len(expected):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the letters were not all written; log:\n{(tmp_path / 'run.log').read_text()[-3000:]}")
        bad = {
            dict(labels)["reason"]: value
            for (name, labels), value in samples.items()
            if name == "streampulse_bad_events_total"
        }
        assert bad == reasons
        truncated = samples.get(("streampulse_dead_letters_truncated_total", (("reason", "too_large"),)), 0)
        assert truncated >= PARTITIONS  # the 10 MiB letters at least
        time.sleep(2)
        assert process.poll() is None, "the flow stopped after dead-lettering"
        log_text = (tmp_path / "run.log").read_text()
        assert log_text.count("written truncated") == 1  # logged once per reason
    finally:
        process.terminate()
        process.wait(timeout=30)
