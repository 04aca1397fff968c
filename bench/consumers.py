"""The two reference consumers the flows are measured against, one process each.

    python -m bench.consumers limit    --bootstrap H:P --topics playback,signup --out result.json
    python -m bench.consumers baseline --bootstrap H:P --topics playback,signup --out result.json

- `limit`: confluent-kafka `consume()` plus the contract's decoder
  (schemas.decoder, what every contender decodes with), nothing else: the
  physical limit of a Python consumer of these topics on this machine.
- `baseline`: what a competent engineer writes by hand for the like-for-like
  metric: stream starts per 10 s window x country x device_type, with a
  per-partition watermark (a window closes on a partition once the
  partition's newest event time passes its end plus 30 s of allowed
  lateness: later events are late, not counted) and duplicates dropped by
  `event_id` while the window is open. Exact: its output is checked against
  the load generator's truth like the flows'.

Both read every partition of both topics from the beginning with one
consumer (explicit offsets, no consumer group) and stop when every partition
has reported its end (librdkafka's end-of-partition event, as the flows do),
then write what they counted as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas.decoder import EventDecoder, Rejection

FINE_MS = 10_000
ALLOWED_LATENESS_MS = 30_000
BATCH = 5_000
_EOF = KafkaError._PARTITION_EOF


def consumer_for(bootstrap: str, topics: list[str]) -> tuple[Consumer, int]:
    """A consumer assigned every partition of `topics` at its low offset; also the partition count."""
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
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        for p in sorted(metadata.partitions):
            # Explicit offsets: OFFSET_BEGINNING costs tansu 0.5 s per partition.
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            assignment.append(TopicPartition(topic, p, low))
    consumer.assign(assignment)
    return consumer, len(assignment)


def run_limit(bootstrap: str, topics: list[str], families: list[str]) -> dict[str, object]:
    """Consume and decode everything; count messages and rejections."""
    consumer, partitions = consumer_for(bootstrap, topics)
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
    """Count stream starts per (window, country, device_type) with a per-partition watermark, exactly."""
    consumer, partitions = consumer_for(bootstrap, topics)
    decoders = {t: EventDecoder(f).decode for t, f in zip(topics, families, strict=True)}
    playback = {t for t, f in zip(topics, families, strict=True) if f == "playback"}
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
            if type(event) is Rejection:
                rejected += 1
                continue
            if topic not in playback:
                continue
            part = (topic, message.partition() or 0)
            t: int = event.event_time_ms  # type: ignore[union-attr]
            newest = high.get(part, -1)
            if t > newest:
                high[part] = newest = t
            if event.event_type != "play_start":  # type: ignore[union-attr]
                continue
            window = t - t % FINE_MS
            if window + closes_after <= newest:
                late += 1
                continue
            windows = seen.setdefault(part, {})
            ids = windows.get(window)
            if ids is None:
                ids = windows[window] = set()
            event_id: str = event.event_id  # type: ignore[union-attr]
            if event_id in ids:
                duplicates += 1
                continue
            ids.add(event_id)
            key = (window, event.country, event.device_type)  # type: ignore[union-attr]
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


def main(argv: list[str] | None = None) -> int:
    """Run one reference consumer and write its result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("limit", "baseline"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True, help="playback topic,signup topic")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    topics = args.topics.split(",")
    families = ["playback", "signup"][: len(topics)]
    result = (run_limit if args.mode == "limit" else run_baseline)(args.bootstrap, topics, families)
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
