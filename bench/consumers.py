"""The reference consumers the flows are measured against, one process each.

    python -m bench.consumers limit           --bootstrap H:P --topics playback,signup --out result.json
    python -m bench.consumers baseline        --bootstrap H:P --topics playback,signup --out result.json
    python -m bench.consumers baseline_orjson --bootstrap H:P --topics playback,signup --out result.json

- `limit`: confluent-kafka `consume()` plus the contract's decoder
  (schemas.decoder, what every contender decodes with), nothing else: the
  physical limit of a Python consumer of these topics on this machine.
- `baseline_orjson`: what a competent engineer writes by hand for the
  like-for-like metric, the issue's baseline: stream starts per 10 s window
  x country x device_type, with a per-partition watermark (a window closes
  on a partition once the partition's newest event time passes its end plus
  30 s of allowed lateness: later events are late, not counted) and
  duplicates dropped by `event_id` while the window is open. It decodes by
  hand: `orjson.loads`, then the contract's rules checked one by one in
  plain Python (`orjson_decoder`), so malformed messages are rejected, not
  counted. Exact: its output is checked against the load generator's truth
  like the flows'.
- `baseline`: the same counting with our contract decoder (msgspec) in place
  of the hand-written one: a baseline that already has the fastest decoder
  we know, so it runs close to the limit.

All read every partition of both topics from the beginning with one
consumer (explicit offsets, no consumer group) and stop when every partition
has reported its end (librdkafka's end-of-partition event, as the flows do),
then write what they counted as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from string import ascii_uppercase
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.decoder import EventDecoder, Rejection

FINE_MS = 10_000
ALLOWED_LATENESS_MS = 30_000
BATCH = 5_000
_EOF = KafkaError._PARTITION_EOF

# What the counting needs of a valid event: (event_type, event_time_ms, event_id, country, device_type).
Fields = tuple[str, int, str, str, str]
# A message value and the wall clock (epoch ms) -> the event's fields, or None if the message is rejected.
Decode = Callable[[bytes | None, int], Fields | None]


def consumer_for(bootstrap: str, topics: list[str], share: tuple[int, int] = (0, 1)) -> tuple[Consumer, int]:
    """A consumer assigned the partitions of `topics` at their low offsets; also how many.

    `share` (k, n): only every n-th partition from the k-th, counted over both topics in order, so n processes
    with k = 0 .. n-1 read the topics once between them.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-reference",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Same as the flows' readers: the default 1 s backoff stalls a consumer slower than its fetcher.
            "fetch.queue.backoff.ms": 10,
            "enable.partition.eof": True,
        }
    )
    assignment: list[TopicPartition] = []
    index, (k, n) = 0, share
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        for p in sorted(metadata.partitions):
            index += 1
            if (index - 1) % n != k:
                continue
            # Explicit offsets: OFFSET_BEGINNING costs tansu 0.5 s per partition.
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            assignment.append(TopicPartition(topic, p, low))
    consumer.assign(assignment)
    return consumer, len(assignment)


def run_limit(
    bootstrap: str, topics: list[str], families: list[str], share: tuple[int, int] = (0, 1)
) -> dict[str, object]:
    """Consume and decode everything (or this process's `share` of the partitions); count messages and rejections."""
    consumer, partitions = consumer_for(bootstrap, topics, share)
    decoders = {t: EventDecoder(f).decode for t, f in zip(topics, families, strict=True)}
    consumed = rejected = 0
    at_end: set[tuple[str, int]] = set()
    while len(at_end) < partitions:
        messages = consumer.consume(BATCH, 1.0)
        now_ms = time.time_ns() // 1_000_000
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == _EOF:
                    at_end.add((message.topic() or "", message.partition() or 0))
                continue
            consumed += 1
            if type(decoders[message.topic() or ""](message.value(), now_ms)) is Rejection:
                rejected += 1
    consumer.close()
    return {"consumed": consumed, "rejected": rejected}


def run_baseline(bootstrap: str, topics: list[str], families: list[str]) -> dict[str, object]:
    """Count stream starts exactly, decoding with our contract decoder (msgspec)."""
    return count_stream_starts(bootstrap, topics, families, contract_decoder)


def run_baseline_orjson(bootstrap: str, topics: list[str], families: list[str]) -> dict[str, object]:
    """Count stream starts exactly, decoding by hand: orjson, then the contract's rules in plain Python."""
    return count_stream_starts(bootstrap, topics, families, orjson_decoder)


def count_stream_starts(
    bootstrap: str, topics: list[str], families: list[str], decoder: Callable[[str], Decode]
) -> dict[str, object]:
    """Count stream starts per (window, country, device_type) with a per-partition watermark, exactly.

    `decoder(family)` makes the decoder of a family's messages; every message is decoded (a bad one is
    rejected, whatever its topic), the playback ones are counted.
    """
    decoders = {t: decoder(f) for t, f in zip(topics, families, strict=True)}
    playback = {t for t, f in zip(topics, families, strict=True) if f == "playback"}
    consumer, partitions = consumer_for(bootstrap, topics)
    counts: dict[tuple[int, str, str], int] = {}
    # Per (topic, partition): newest event time, and the play_start ids seen per still-open window.
    high: dict[tuple[str, int], int] = {}
    seen: dict[tuple[str, int], dict[int, set[str]]] = {}
    consumed = rejected = late = duplicates = 0
    at_end: set[tuple[str, int]] = set()
    closes_after = FINE_MS + ALLOWED_LATENESS_MS
    while len(at_end) < partitions:
        messages = consumer.consume(BATCH, 1.0)
        now_ms = time.time_ns() // 1_000_000
        for message in messages:
            topic = message.topic() or ""
            error = message.error()
            if error is not None:
                if error.code() == _EOF:
                    at_end.add((topic, message.partition() or 0))
                continue
            consumed += 1
            event = decoders[topic](message.value(), now_ms)
            if event is None:
                rejected += 1
                continue
            if topic not in playback:
                continue
            event_type, t, event_id, country, device_type = event
            part = (topic, message.partition() or 0)
            newest = high.get(part, -1)
            if t > newest:
                high[part] = newest = t
            if event_type != "play_start":
                continue
            window = t - t % FINE_MS
            if window + closes_after <= newest:
                late += 1
                continue
            windows = seen.setdefault(part, {})
            ids = windows.get(window)
            if ids is None:
                ids = windows[window] = set()
            if event_id in ids:
                duplicates += 1
                continue
            ids.add(event_id)
            key = (window, country, device_type)
            counts[key] = counts.get(key, 0) + 1
        # Forget the ids of windows closed on their partition: a copy arriving now is late anyway.
        for part, windows in seen.items():
            newest = high[part]
            for window in [w for w in windows if w + closes_after <= newest]:
                del windows[window]
    consumer.close()
    return {
        "consumed": consumed,
        "rejected": rejected,
        "late": late,
        "duplicates": duplicates,
        "cells": [[w, c, d, n] for (w, c, d), n in counts.items()],
    }


def contract_decoder(family: str) -> Decode:
    """Our contract decoder (schemas.decoder, msgspec), returning what the counting needs.

    The wrapper costs one Python call per message (~50 ns, ~2 % of this baseline's time per message).
    """
    decode = EventDecoder(family).decode

    def fields(raw: bytes | None, now_ms: int) -> Fields | None:
        event: Any = decode(raw, now_ms)
        if type(event) is Rejection:
            return None
        return event.event_type, event.event_time_ms, event.event_id, event.country, event.device_type

    return fields


# -- The hand-written decoder ------------------------------------------------------------------------------------
# Written from schemas/*.v1.schema.json without our decoder: orjson, then every rule of the contract checked
# in plain Python. Messages are valid UTF-8 JSON objects of at most 64 KiB; every field of an event type is
# required; unknown fields are allowed; JSON Schema counts 1.0 as an integer but not `true`.

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FUTURE_SKEW_MS = 3_600_000  # an event time more than 1 h ahead of the wall clock is a broken clock
MAX_EVENT_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
COUNTRIES = frozenset(a + b for a in ascii_uppercase for b in ascii_uppercase)  # ^[A-Z]{2}$
DEVICE_TYPES = frozenset({"tv", "mobile", "tablet", "web", "console", "other"})

Rule = Callable[[Any], bool]


def string(min_length: int, max_length: int) -> Rule:
    """A string of `min_length` to `max_length` characters."""
    return lambda value: type(value) is str and min_length <= len(value) <= max_length


def integer(minimum: int, maximum: int) -> Rule:
    """An integer from `minimum` to `maximum` (an integral float like 1.0 is an integer; `true` is not)."""

    def check(value: Any) -> bool:
        if type(value) is not int and not (type(value) is float and value.is_integer()):
            return False
        number: float = value
        return minimum <= number <= maximum

    return check


def one_of(*allowed: str) -> Rule:
    """One of the strings of an enum."""
    values = frozenset(allowed)
    return lambda value: type(value) is str and value in values


def upper_case_letters(count: int) -> Rule:
    """`count` letters A-Z (`^[A-Z]{count}$`)."""
    return lambda value: (
        type(value) is str and len(value) == count and value.isascii() and value.isalpha() and value.isupper()
    )


ID = string(1, 64)
DURATION_MS = integer(0, 86_400_000)
BITRATE_KBPS = integer(0, 1_000_000)
# The fields beyond the common ones (event_type, event_id, event_time_ms, country, device_type, schema_version).
RULES: dict[str, Rule] = {
    "session_id": ID,
    "account_id": ID,
    "title_id": ID,
    "signup_id": ID,
    "cdn": ID,
    "error_code": ID,
    "startup_ms": DURATION_MS,
    "played_ms": DURATION_MS,
    "rebuffer_ms": DURATION_MS,
    "bitrate_kbps": BITRATE_KBPS,
    "previous_bitrate_kbps": BITRATE_KBPS,
    "channel": one_of("organic", "paid_search", "social", "partner", "referral"),
    "plan": one_of("basic", "standard", "premium", "ads"),
    "payment_method": one_of("card", "paypal", "gift_card", "carrier_billing"),
    "failure_reason": one_of("payment_declined", "fraud_suspected", "abandoned", "technical_error"),
    "price_cents": integer(0, 100_000_000),
    "currency": upper_case_letters(3),
}
SESSION = ("session_id", "account_id", "title_id")
EVENT_TYPES: dict[str, dict[str, tuple[str, ...]]] = {
    "playback": {
        "play_attempt": SESSION,
        "play_start": (*SESSION, "startup_ms", "cdn"),
        "start_failure": (*SESSION, "error_code"),
        "heartbeat": (*SESSION, "played_ms", "bitrate_kbps"),
        "rebuffer": (*SESSION, "rebuffer_ms"),
        "bitrate_change": (*SESSION, "bitrate_kbps", "previous_bitrate_kbps"),
        "pause": SESSION,
        "resume": SESSION,
        "play_error": (*SESSION, "error_code"),
        "play_stop": (*SESSION, "played_ms"),
    },
    "signup": {
        "signup_started": ("signup_id", "channel"),
        "plan_selected": ("signup_id", "channel", "plan"),
        "payment_submitted": ("signup_id", "channel", "plan", "payment_method"),
        "signup_completed": ("signup_id", "channel", "plan", "payment_method", "account_id", "price_cents", "currency"),
        "signup_failed": ("signup_id", "channel", "failure_reason"),
    },
}


def orjson_decoder(family: str) -> Decode:
    """The hand-written decoder of one family's messages; None for a message that breaks the contract."""
    # Each event type's own fields with their rules, paired once here rather than looked up per message.
    event_types = {name: tuple((f, RULES[f]) for f in fields) for name, fields in EVENT_TYPES[family].items()}

    def decode(raw: bytes | None, now_ms: int) -> Fields | None:
        if raw is None or len(raw) > MAX_MESSAGE_BYTES:
            return None
        try:
            event = orjson.loads(raw)  # rejects invalid UTF-8, trailing data, NaN, nesting too deep
        except orjson.JSONDecodeError:
            return None
        if type(event) is not dict:
            return None
        try:
            event_type = event["event_type"]
            event_id = event["event_id"]
            t = event["event_time_ms"]
            country = event["country"]
            device_type = event["device_type"]
            version = event["schema_version"]
        except KeyError:
            return None
        if type(event_type) is not str or event_type not in event_types:
            return None
        if type(event_id) is not str or not 1 <= len(event_id) <= 64:
            return None
        if type(t) is not int:
            if type(t) is not float or not t.is_integer():
                return None
            t = int(t)
        if not 0 <= t <= MAX_EVENT_TIME_MS or t - now_ms > MAX_FUTURE_SKEW_MS:
            return None
        if type(country) is not str or country not in COUNTRIES:
            return None
        if type(device_type) is not str or device_type not in DEVICE_TYPES:
            return None
        if version != 1 or type(version) is bool:
            return None
        for name, rule in event_types[event_type]:
            if not rule(event.get(name)):
                return None
        return event_type, t, event_id, country, device_type

    return decode


RUNS: dict[str, Callable[[str, list[str], list[str]], dict[str, object]]] = {
    "limit": run_limit,
    "baseline": run_baseline,
    "baseline_orjson": run_baseline_orjson,
}


def _share(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    try:
        share = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 0/4)") from None
    if not 0 <= share[0] < share[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be 0 .. N-1")
    return share


def main(argv: list[str] | None = None) -> int:
    """Run one reference consumer and write its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=tuple(RUNS))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="playback topic,signup topic")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--share",
        type=_share,
        default=(0, 1),
        metavar="K/N",
        help="limit only: read every N-th partition from the K-th (K = 0 .. N-1), one of N processes",
    )
    args = parser.parse_args(argv)
    topics = args.topics.split(",")
    families = ["playback", "signup"][: len(topics)]
    if args.share != (0, 1) and args.mode != "limit":
        parser.error("--share is for the limit only (the baselines count every partition)")
    result = (
        run_limit(args.bootstrap, topics, families, args.share)
        if args.mode == "limit"
        else RUNS[args.mode](args.bootstrap, topics, families)
    )
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
