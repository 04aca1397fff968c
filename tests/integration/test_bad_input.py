"""Hostile input on a real broker: every bad message dead-lettered with its reason, every valid event counted.

Oversize messages (just over librdkafka's 1,000,000 bytes, over 1 MiB, 10 MiB:
the input topic accepts 16 MiB) used to take the flow down for good: the
dead-letter producer could not write them. Now they go truncated, with
their size and SHA-256 in headers (sinks/dead_letter.py).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.conftest import Stack
from tests.integration.helpers import PlaybackLog, playback_sessions, read_to_end, streampulse

pytestmark = pytest.mark.integration

PARTITIONS = 2
INPUT_MAX_BYTES = 16 * 1024 * 1024
MiB = 1024 * 1024


def _valid_json_of_size(template: dict[str, object], size: int) -> bytes:
    """A valid event padded by an unknown field to exactly `size` bytes: too large is its only fault."""
    raw = orjson.dumps({**template, "padding": ""})
    return raw[:-2] + b"p" * (size - len(raw)) + b'"}'


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


def _plan(log: PlaybackLog) -> tuple[dict[int, list[tuple[bytes, bytes]]], dict[tuple[int, int], str]]:
    """Messages per partition (valid events with the bad ones spread among them) and, by offset, the bad ones."""
    messages: dict[int, list[tuple[bytes, bytes]]] = {}
    expected: dict[tuple[int, int], str] = {}
    for p, events in log.partitions.items():
        start = next(e for e in events if e["event_type"] == "play_start")
        # A play start whose only fault is what is done to it: counted if wrongly accepted.
        template = {**start, "event_id": f"bad-{p}", "startup_ms": 900}
        bad = _bad_messages(template)
        valid = [(str(e["session_id"]).encode(), orjson.dumps(e)) for e in events]
        step = max(len(valid) // (len(bad) + 1), 1)
        out: list[tuple[bytes, bytes]] = []
        for i, (value, reason) in enumerate(bad):
            out.extend(valid[i * step : (i + 1) * step])
            expected[(p, len(out))] = reason
            out.append((b"bad", value))
        out.extend(valid[len(bad) * step :])
        messages[p] = out
    return messages, expected


def _produce(bootstrap: str, topic: str, messages: dict[int, list[tuple[bytes, bytes]]]) -> None:
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


def test_hostile_messages_are_dead_lettered_by_reason_and_valid_events_counted_exactly(
    stack: Stack, unique_name: str
) -> None:
    playback, signup, dead = f"playback-{unique_name}", f"signup-{unique_name}", f"dead-letter-{unique_name}"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    topics = [
        NewTopic(playback, PARTITIONS, 1, config={"max.message.bytes": str(INPUT_MAX_BYTES)}),
        NewTopic(signup, 1, 1),
    ]
    for future in admin.create_topics(topics).values():
        future.result(60)
    now = int(time.time() * 1000)
    log = playback_sessions(29, PARTITIONS, sessions=300, start_ms=now - 20 * 60_000, span_ms=4 * 60_000)
    messages, expected = _plan(log)
    _produce(stack.bootstrap, playback, messages)

    connection = ["--redis-url", stack.redis_url, "--namespace", f"test-{unique_name}"]
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0", "--kafka-bootstrap", stack.bootstrap,
        "--playback-topic", playback, "--signup-topic", signup, "--dead-letter-topic", dead, *connection,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # Every valid event counted exactly, nothing of the bad ones.
    for resolution, size_ms in (("10s", 10_000), ("1m", 60_000)):
        assert _query_starts(connection, resolution) == log.expected_starts(size_ms), resolution

    # Every bad message dead-lettered once, with its reason and its source.
    letters = read_to_end(stack.bootstrap, dead)
    found: dict[tuple[int, int], str] = {}
    for message in letters:
        headers = _headers(message)
        assert headers["sp-source-topic"] == playback.encode()
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
    sizes = {len(messages[p][o][1]) for (p, o), reason in expected.items() if reason == "too_large"}
    assert 10 * MiB in sizes
    truncated = {int(_headers(m)["sp-original-size"]) for m in letters if "sp-truncated" in _headers(m)}
    assert 10 * MiB in truncated, "a 10 MiB letter cannot fit a dead-letter topic with default settings"
