"""The peer: Quix Streams counting stream starts per 10 s event-time window, country and device_type.

    PEER_PYTHON -m bench.quix_peer --bootstrap H:P --topic playback --out result.json

Runs in its own virtual environment (see bench/peer.py): quixstreams pins
confluent-kafka below the version streampulse is measured with. Written as
a user of Quix Streams would write it, with its defaults (consumer group,
changelog topics, at-least-once, 5 s commits): decode with the same contract
decoder as every contender (invalid messages filtered out), keep the
`play_start`s, `group_by` country and device type (a repartition topic), a
tumbling 10 s window on event time with 30 s of grace, `count().final()`.
Duplicates are not dropped (that would need state per event id, which Quix
Streams does not offer out of the box); late events are counted through the
window's `on_late` callback.

The app stops once no message came for `--idle-timeout` seconds. The time
that counts is from the harness starting this process (`--started-at`, wall
clock) to the last message processed, not the idle wait; windows still open
at the end are not emitted (`.final()`), so the harness compares closed
windows only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

from schemas.decoder import EventDecoder, Rejection

FINE_MS = 10_000
GRACE_MS = 30_000
REJECTED: dict[str, Any] = {"event_type": "rejected"}


class EventDeserializer(Deserializer):  # type: ignore[misc]  # quixstreams is not in the main venv
    """The contract's decoder as a Quix Streams deserializer: a small dict per valid event."""

    def __init__(self) -> None:
        super().__init__()
        self._decode = EventDecoder("playback").decode

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        event = self._decode(value, time.time_ns() // 1_000_000)
        if type(event) is Rejection:
            return REJECTED
        e: Any = event
        return {
            "event_type": e.event_type,
            "event_time_ms": e.event_time_ms,
            "country": e.country,
            "device_type": e.device_type,
        }


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """Event time from the payload; rejected messages keep the Kafka timestamp."""
    t = value.get("event_time_ms") if isinstance(value, dict) else None
    return int(t) if t is not None else timestamp


def main(argv: list[str] | None = None) -> int:
    """Run the Quix Streams app to the end of the topic and write what it counted as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--started-at", type=float, default=time.time(), help="wall clock the harness started us")
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    counted: dict[tuple[int, str, str], int] = {}
    progress = {"consumed": 0, "late": 0, "last_processed": time.time()}

    def consumed(value: Any) -> None:
        progress["consumed"] += 1
        progress["last_processed"] = time.time()

    def processed(value: Any) -> None:
        progress["last_processed"] = time.time()

    def late(*_args: Any) -> bool:
        progress["late"] += 1
        return False  # counted here; do not log a line per late event

    def collect(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> None:
        country, device = (key.decode() if isinstance(key, bytes) else str(key)).split("|")
        counted[(int(value["start"]), country, device)] = int(value["value"])
        progress["last_processed"] = time.time()

    with tempfile.TemporaryDirectory(prefix="bench-quix-state-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
        )
        topic = app.topic(args.topic, value_deserializer=EventDeserializer(), timestamp_extractor=event_time)
        sdf = app.dataframe(topic)
        sdf = sdf.update(consumed)
        sdf = sdf.filter(lambda value: value["event_type"] == "play_start")
        sdf = sdf.group_by(lambda value: f"{value['country']}|{value['device_type']}", name="country_device")
        sdf = sdf.update(processed)
        sdf = sdf.tumbling_window(duration_ms=FINE_MS, grace_ms=GRACE_MS, on_late=late).count().final()
        sdf = sdf.update(collect, metadata=True)
        app.run(timeout=args.idle_timeout, collect=False)

    result = {
        "consumed": progress["consumed"],
        "late": progress["late"],
        "wall_s": progress["last_processed"] - args.started_at,
        "cells": [[w, c, d, n] for (w, c, d), n in counted.items()],
    }
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
