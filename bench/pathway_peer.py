"""The second peer: Pathway counting stream starts per 10 s event-time window, country and device_type.

    PATHWAY_PYTHON -m bench.pathway_peer --bootstrap H:P --topic playback --partitions 4 --out result.json

Runs in its own virtual environment (bench/peer.py): pathway 0.33 brings its
own dependencies, which must not change what streampulse is measured with.
Written in the best configuration ../shared/PEERS.md found for it:

- `pw.io.kafka.read(..., format="json", mode="static")` with a schema: its
  Rust JSON reader, reading to the end offsets present at start, then exiting;
  messages that do not fit the schema are skipped (and logged) by the reader;
  `fetch.queue.backoff.ms: 10` (librdkafka's default waits up to 1 s between
  fetches), `autocommit_duration_ms=10` (its lateness cutoff is checked
  between batches: long batches let late events through).
- The contract's other rules a `play_start` must meet are column filters
  (vectorised, no Python per event): the enum of device types, country
  `^[A-Z]{2}$`, schema_version 1, startup_ms >= 0, every field present, and
  an event time at most 1 h ahead of the wall clock. Its JSON reader cannot
  see message sizes, so the 64 KiB limit is not applied (see `oversized`).
- One `windowby` per partition (tumbling 10 s, `cutoff` 30 s): its cutoff
  compares each event with the newest event time the operator has seen over
  all its input, so one window operator over every partition drops a lagging
  partition's on-time events; per partition, each has its own clock, as the
  contract's per-partition watermark does. The partitions' counts are summed.
- Duplicates: `count_distinct(event_id)` per window cell (a re-delivered event
  keeps its id and its partition, the message key being the session).

With `mode="static"` every window is emitted at the end (`keep_results`), so
the harness compares every cell with the truth. Time is the process's, from
start to exit, as for streampulse.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pathway as pw

FINE_MS = 10_000
GRACE_MS = 30_000
# The contract's limit on how far ahead of the wall clock an event time may be (schemas/decoder.py).
MAX_FUTURE_SKEW_MS = 3_600_000
DEVICE_TYPES = ("tv", "mobile", "tablet", "web", "console", "other")


class PlaybackEvent(pw.Schema):  # type: ignore[misc]  # pathway is not in the main venv
    """What the count needs of a playback event; a `play_start`'s other fields are there to be checked."""

    event_id: str
    event_type: str
    event_time_ms: int
    country: str
    device_type: str
    schema_version: int
    session_id: str | None = pw.column_definition(default_value=None)
    account_id: str | None = pw.column_definition(default_value=None)
    title_id: str | None = pw.column_definition(default_value=None)
    cdn: str | None = pw.column_definition(default_value=None)
    startup_ms: int | None = pw.column_definition(default_value=None)


def _upper_letter(text: Any) -> Any:
    return (text >= "A") & (text <= "Z")


def valid_stream_starts(events: Any, now_ms: int) -> Any:
    """The `play_start`s that meet the contract (beyond the schema the reader already applied)."""
    t = pw.this
    device_ok = t.device_type == DEVICE_TYPES[0]
    for device in DEVICE_TYPES[1:]:
        device_ok |= t.device_type == device
    return events.filter(
        (t.event_type == "play_start")
        & (t.schema_version == 1)
        & device_ok
        & (t.country.str.len() == 2)
        & _upper_letter(t.country.str.slice(0, 1))
        & _upper_letter(t.country.str.slice(1, 2))
        & (t.event_id.str.len() >= 1)
        & (t.event_id.str.len() <= 64)
        & (t.event_time_ms >= 0)
        & (t.event_time_ms <= now_ms + MAX_FUTURE_SKEW_MS)
        & t.session_id.is_not_none()
        & t.account_id.is_not_none()
        & t.title_id.is_not_none()
        & t.cdn.is_not_none()
        & t.startup_ms.is_not_none()
        & (pw.coalesce(t.startup_ms, -1) >= 0)
    )


def count_per_partition(starts: Any, partitions: int) -> Any:
    """Distinct stream starts per (window, country|device) with one window operator, so one clock, per partition."""
    keyed = starts.select(
        t=pw.this.event_time_ms,
        cell=pw.this.country + "|" + pw.this.device_type,
        event_id=pw.this.event_id,
        partition=pw.this._metadata["partition"].as_int(),
    )
    per_partition = []
    for p in range(partitions):
        windows = keyed.filter(pw.this.partition == p).windowby(
            pw.this.t,
            window=pw.temporal.tumbling(duration=FINE_MS),
            instance=pw.this.cell,
            behavior=pw.temporal.common_behavior(cutoff=GRACE_MS, keep_results=True),
        )
        per_partition.append(
            windows.reduce(
                window=pw.this._pw_window_start,
                cell=pw.this._pw_instance,
                n=pw.reducers.count_distinct(pw.this.event_id),
            )
        )
    every = pw.Table.concat_reindex(*per_partition)
    return every.groupby(pw.this.window, pw.this.cell).reduce(
        pw.this.window, pw.this.cell, n=pw.reducers.sum(pw.this.n)
    )


def main(argv: list[str] | None = None) -> int:
    """Run the Pathway program to the end of the topic and write what it counted as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    settings = {
        "bootstrap.servers": args.bootstrap,
        "group.id": f"bench-pathway-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "fetch.queue.backoff.ms": "10",
    }
    events = pw.io.kafka.read(
        settings,
        args.topic,
        schema=PlaybackEvent,
        format="json",
        mode="static",
        autocommit_duration_ms=10,
        with_metadata=True,
    )
    consumed = events.reduce(n=pw.reducers.count())
    counts = count_per_partition(valid_stream_starts(events, time.time_ns() // 1_000_000), args.partitions)

    cells: dict[tuple[int, str], int] = {}
    totals = {"parsed": 0}

    def on_cell(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            cells[(int(row["window"]), str(row["cell"]))] = int(row["n"])
        else:
            cells.pop((int(row["window"]), str(row["cell"])), None)

    def on_consumed(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            totals["parsed"] = int(row["n"])

    pw.io.subscribe(counts, on_change=on_cell)
    pw.io.subscribe(consumed, on_change=on_consumed)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)

    result = {
        # Messages that fit the schema (the reader skips the rest): what it consumed is not reported by Pathway.
        "parsed": totals["parsed"],
        "cells": [[w, *cell.split("|", 1), n] for (w, cell), n in cells.items() if n],
    }
    args.out.write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
