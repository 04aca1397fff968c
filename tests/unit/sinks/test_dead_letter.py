"""Dead letters fit the dead-letter topic's limit: whole when they can, truncated with proof of the whole when not.

What the broker does with them is tested on real Kafka (tests/integration/test_bad_input.py).
"""

from __future__ import annotations

import hashlib

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from flows.health import pipeline_metrics
from flows.partials import DeadLetter
from settings.kafka import KafkaSettings
from sinks.dead_letter import DeadLetterWriter, dead_letter_limit, producer_config
from sinks.dead_letter_fit import (
    MAX_TRUNCATED_KEY,
    STUB_VALUE_BYTES,
    compression_slack,
    dead_letter_headers,
    fit_letter,
    record_size,
    stub,
)
from streampulse.cli import main

LIMIT = 1_048_588  # Apache Kafka's default max.message.bytes


def letter(value: bytes | None, key: bytes | None = b"session-1", reason: str = "too_large") -> DeadLetter:
    return DeadLetter("playback-events", 3, 1234, 1_700_000_000_000, key, value, reason, "detail " * 20)


def headers_of(outgoing: object) -> dict[str, bytes]:
    return dict(outgoing.headers)  # type: ignore[attr-defined]


def test_a_letter_that_fits_goes_whole_with_its_source() -> None:
    small = letter(b'{"event_type": 1}', reason="wrong_type")
    out = fit_letter(small, LIMIT)
    assert not out.truncated
    assert out.value == small.value and out.key == small.key
    headers = headers_of(out)
    assert headers["sp-reason"] == b"wrong_type"
    assert (headers["sp-source-topic"], headers["sp-source-partition"], headers["sp-source-offset"]) == (
        b"playback-events",
        b"3",
        b"1234",
    )
    assert "sp-truncated" not in headers


@pytest.mark.parametrize(
    ("size", "limit"), [(1_000_100, 1_000_000), (1_048_577, LIMIT), (10 * 1024 * 1024, LIMIT), (10 * 1024 * 1024, 8192)]
)
def test_an_oversize_letter_goes_truncated_with_size_and_hash_of_the_whole(size: int, limit: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    out = fit_letter(letter(value), limit)
    assert out.truncated
    assert out.size <= limit
    assert out.value is not None and value.startswith(out.value) and len(out.value) > limit // 2
    headers = headers_of(out)
    assert headers["sp-truncated"] == b"true"
    assert headers["sp-original-size"] == str(size).encode()
    assert headers["sp-original-sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["sp-source-offset"] == b"1234"


def test_a_letter_exactly_at_the_limit_minus_overhead_is_whole_and_one_byte_more_is_not() -> None:
    probe = letter(b"")
    room = LIMIT - compression_slack(LIMIT) - record_size(probe.key, b"", dead_letter_headers(probe))
    assert not fit_letter(letter(b"a" * room), LIMIT).truncated
    assert fit_letter(letter(b"a" * (room + 1)), LIMIT).truncated


def test_an_oversize_key_is_cut_and_its_size_kept() -> None:
    out = fit_letter(letter(b"v" * 2_000_000, key=b"k" * 3_000_000), LIMIT)
    assert out.truncated and out.size <= LIMIT
    assert out.key == b"k" * MAX_TRUNCATED_KEY
    assert headers_of(out)["sp-original-key-size"] == b"3000000"


def test_a_null_value_too_large_only_by_its_key_is_truncated_without_crashing() -> None:
    out = fit_letter(letter(None, key=b"k" * 2_000_000), LIMIT)
    assert out.truncated and out.size <= LIMIT
    assert headers_of(out)["sp-original-size"] == b"0"


@given(size=st.integers(0, 3 * LIMIT), key=st.none() | st.binary(max_size=3000), limit=st.integers(4096, 4 * LIMIT))
def test_whatever_the_sizes_the_letter_fits_or_is_whole(size: int, key: bytes | None, limit: int) -> None:
    value = b"x" * size
    out = fit_letter(letter(value, key=key), limit)
    assert out.size <= limit
    assert out.truncated != (out.value == value and out.key == key)


def test_a_stub_is_small_and_still_says_what_it_was() -> None:
    value = b"z" * 5_000_000
    out = stub(letter(value, key=b"q" * 5000))
    assert out.truncated
    assert out.value == value[:STUB_VALUE_BYTES]
    assert out.size < 8 * 1024
    assert headers_of(out)["sp-original-sha256"] == hashlib.sha256(value).hexdigest().encode()


def test_the_option_overrides_the_broker_and_sets_the_producer_limit() -> None:
    kafka = KafkaSettings("127.0.0.1:1", "p", "s", "d", dead_letter_max_bytes=5_000_000)
    assert dead_letter_limit(kafka) == 5_000_000  # no broker asked: port 1 answers nothing
    config = producer_config(kafka, 5_000_000)
    assert config["message.max.bytes"] == 5_000_000
    assert config["enable.idempotence"] is True
    assert config["message.timeout.ms"] == 0


def test_the_producer_limit_stays_within_librdkafkas_bounds() -> None:
    kafka = KafkaSettings("127.0.0.1:1", "p", "s", "d")
    assert producer_config(kafka, 2**31)["message.max.bytes"] == 1_000_000_000
    assert producer_config(kafka, 10)["message.max.bytes"] == 1000


@pytest.mark.parametrize("value", ["12", "lots", "2000000000"])
def test_a_bad_dead_letter_limit_stops_at_start(
    value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAMPULSE_DEAD_LETTER_MAX_BYTES", value)
    with pytest.raises(SystemExit) as stopped:
        main(["run"])
    output = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "--dead-letter-max-bytes" in output and value in output


def undeliverable(error: str) -> float:
    return (
        pipeline_metrics().registry.get_sample_value("streampulse_dead_letters_undeliverable_total", {"error": error})
        or 0.0
    )


def partition_for_decisions() -> DeadLetterWriter:
    """A dead-letter writer whose producer is never used (nothing is produced by these tests)."""
    return DeadLetterWriter(KafkaSettings("127.0.0.1:1", "p", "s", "d"), LIMIT)


def test_a_letter_refused_as_too_large_is_sent_again_as_a_stub_and_a_stub_refused_is_given_up() -> None:
    sink = partition_for_decisions()
    big = letter(b"x" * 2_000_000)
    sink._failed(big, False, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert sink._again == [(big, True)]
    before = undeliverable("MSG_SIZE_TOO_LARGE")
    sink._again.clear()
    sink._failed(big, True, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert sink._again == []
    assert undeliverable("MSG_SIZE_TOO_LARGE") == before + 1


def test_a_transient_failure_is_retried_and_a_permanent_one_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = partition_for_decisions()
    small = letter(b"{}", reason="not_an_object")
    sink._failed(small, False, KafkaError(KafkaError._TRANSPORT, retriable=True))
    assert sink._again == [(small, False)]
    sink._again.clear()
    before = undeliverable("TOPIC_AUTHORIZATION_FAILED")
    with caplog.at_level("WARNING", logger="sinks.dead_letter"):
        for _ in range(3):
            sink._failed(small, False, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert sink._again == []
    assert undeliverable("TOPIC_AUTHORIZATION_FAILED") == before + 3
    lines = [
        r
        for r in caplog.records
        if "TOPIC_AUTHORIZATION_FAILED" in r.getMessage() or "could not write" in r.getMessage()
    ]
    assert len(lines) <= 1  # once per error in the process (another test may have logged it first)
    assert not sink._broken
    sink._failed(small, False, KafkaError(KafkaError._FATAL, fatal=True))
    assert sink._broken  # replaced by a fresh producer once the old one has failed what it held
