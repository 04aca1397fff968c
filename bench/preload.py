"""Preloading the input topics with the load generator (simulated time), and what they must count to.

The load generator runs in simulated mode (as fast as it can) into Kafka with
its ground truth. Events it holds back on purpose (late ones) past the end
of the stream would find their partition with nothing newer and rightly be
counted, while the truth calls them late; so, as the integration tests do,
the stream is *closed* before that tail: one event per partition far after
everything else (not a `play_start`, so it changes no stream start), then
the tail. Every consumer then sees the truth's late events as late.

The expected `stream_starts` per (10 s window, country, device_type) is the
truth's windows minus its late events (loadgen/TRUTH.md).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Producer

from bench.common import say
from loadgen.config import FaultConfig, LoadgenConfig, ModelParams
from loadgen.faults import DUPLICATE, VALID, Out
from loadgen.runner import Progress, run
from loadgen.sinks import KafkaSink
from settings.kafka import KafkaSettings

HOUR_MS = 3_600_000
FINE_MS = 10_000
# The closing events are this far after the newest event: every window before them is final everywhere.
CLOSE_AFTER_MS = 15 * 60_000

# (window_start_ms, country, device_type) -> stream starts
Cells = dict[tuple[int, str, str], int]


@dataclass(frozen=True)
class PreloadSpec:
    """What to generate: events, seed, event-time span and the delivery faults."""

    events: int
    seed: int = 7
    span_ms: int = HOUR_MS
    jitter_ms: int = 2_000
    late_fraction: float = 0.005
    late_by_ms: int = 300_000
    duplicate_fraction: float = 0.01
    malformed_fraction: float = 0.005

    def faults(self) -> FaultConfig:
        """The load generator's fault settings."""
        return FaultConfig(
            jitter_ms=self.jitter_ms,
            late_fraction=self.late_fraction,
            late_by_ms=self.late_by_ms,
            duplicate_fraction=self.duplicate_fraction,
            duplicate_delay_ms=2_000,
            malformed_fraction=self.malformed_fraction,
        )

    def describe(self) -> dict[str, Any]:
        """For the results: what the input was."""
        return {
            "events": self.events,
            "seed": self.seed,
            "span_s": self.span_ms / 1000,
            "faults": {
                "jitter_ms": self.jitter_ms,
                "late_fraction": self.late_fraction,
                "late_by_ms": self.late_by_ms,
                "duplicate_fraction": self.duplicate_fraction,
                "malformed_fraction": self.malformed_fraction,
            },
        }


@dataclass(frozen=True)
class Preloaded:
    """Topics filled, and what a correct consumer must find in them."""

    playback_topic: str
    signup_topic: str
    messages: int
    valid_events: int
    mean_message_bytes: float
    produce_s: float
    expected: Cells
    late_events: int
    duplicates: int
    malformed: int
    start_ms: int
    close_ms: int
    # The truth's late stream starts per cell: where a consumer that counts late events counts too many.
    late: Cells = field(default_factory=dict)

    @property
    def topics(self) -> tuple[str, str]:
        """Both input topics."""
        return (self.playback_topic, self.signup_topic)


class _ClosingSink:
    """Passes messages to Kafka, but holds back a trailing run of late/malformed ones until `close`.

    At close, what came before is flushed, the closing events are produced to
    every partition, and only then the held-back tail.
    """

    def __init__(self, kafka: KafkaSettings, partitions: int) -> None:
        self._kafka = kafka
        self._partitions = partitions
        self._sink = KafkaSink(kafka, linger_ms=20)
        self._held: list[Out] = []
        self.newest_event_ms = 0
        self.bytes = 0
        self.messages = 0
        self.close_ms = 0

    def write(self, messages: list[Out]) -> None:
        out: list[Out] = []
        held = self._held
        for message in messages:
            self.bytes += len(message[3])
            if message[5] == VALID or message[5] == DUPLICATE:
                if held:
                    out.extend(held)
                    held.clear()
                out.append(message)
                event = message[4]
                if event is not None and event["event_time_ms"] > self.newest_event_ms:
                    self.newest_event_ms = event["event_time_ms"]
            else:
                held.append(message)
        self.messages += len(messages)
        if out:
            self._sink.write(out)

    def close(self) -> dict[str, Any]:
        report = self._sink.close()
        self.close_ms = self.newest_event_ms + CLOSE_AFTER_MS
        producer = Producer({"bootstrap.servers": self._kafka.bootstrap, "linger.ms": 5})
        for family, topic in (("playback", self._kafka.playback_topic), ("signup", self._kafka.signup_topic)):
            for p in range(self._partitions):
                producer.produce(topic, closing_event(family, p, self.close_ms), f"close-{p}".encode(), partition=p)
        if producer.flush(60):
            raise RuntimeError("the closing events were not acknowledged within 60 s")
        tail = KafkaSink(self._kafka, linger_ms=5)
        tail.write(self._held)
        tail_report = tail.close()
        for key in ("produced", "acked", "failed", "unconfirmed"):
            report[key] += tail_report[key]
        report["produced"] += 2 * self._partitions
        report["acked"] += 2 * self._partitions
        return report


def closing_event(family: str, partition: int, time_ms: int) -> bytes:
    """A valid event far after the stream, no `play_start`: moves its partition's watermark, counts no start."""
    common = {"event_time_ms": time_ms, "country": "BR", "device_type": "tv", "schema_version": 1}
    if family == "playback":
        event = {"event_type": "play_attempt", "session_id": f"close-{partition}", "account_id": "a", "title_id": "t"}
    else:
        event = {"event_type": "signup_started", "signup_id": f"close-{partition}", "channel": "organic"}
    return orjson.dumps({"event_id": f"close-{family}-{partition}", **common, **event})


def start_ms_for(span_ms: int, now_ms: int | None = None) -> int:
    """An hour boundary so that the span, its late tail and the closing events all end well before now.

    Far enough in the past that no event is "from the future" for the decoder, recent enough to be plausible.
    """
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return (now - span_ms - 2 * HOUR_MS) // HOUR_MS * HOUR_MS


def expected_stream_starts(truth: dict[str, Any]) -> Cells:
    """Stream starts per 10 s window and (country, device_type) a correct consumer reports: windows minus late."""
    totals: Counter[tuple[int, str, str]] = Counter()
    for section, sign in ((truth["windows"], 1), (truth["late"]["windows"], -1)):
        for window in section["10s"]["windows"]:
            for cell in window["cells"]:
                starts = cell.get("stream_starts")
                if starts:
                    totals[(window["start_ms"], cell["country"], cell["device_type"])] += sign * sum(starts.values())
    return {k: v for k, v in totals.items() if v}


def late_stream_starts(truth: dict[str, Any]) -> Cells:
    """The truth's late stream starts per (10 s window, country, device_type): counted by none that is correct."""
    totals: Counter[tuple[int, str, str]] = Counter()
    for window in truth["late"]["windows"]["10s"]["windows"]:
        for cell in window["cells"]:
            starts = cell.get("stream_starts")
            if starts:
                totals[(window["start_ms"], cell["country"], cell["device_type"])] += sum(starts.values())
    return {k: v for k, v in totals.items() if v}


def preload(spec: PreloadSpec, bootstrap: str, playback_topic: str, signup_topic: str, partitions: int) -> Preloaded:
    """Fill both topics (already created with `partitions` partitions) and return what they must count to."""
    kafka = KafkaSettings(bootstrap, playback_topic, signup_topic, "unused-dead-letter")
    start = start_ms_for(spec.span_ms)
    config = LoadgenConfig(
        start_ms=start,
        seed=spec.seed,
        mode="simulated",
        events=spec.events,
        span_ms=spec.span_ms,
        # Over an hour or two the diurnal curve is nearly flat anyway; flat keeps the span what was asked for.
        params=ModelParams(diurnal=False),
        faults=spec.faults(),
        windows_ms=(FINE_MS,),
    )
    sink = _ClosingSink(kafka, partitions)
    say(f"preload: generating {spec.events:,} events into {playback_topic}/{signup_topic} ({partitions} partitions)")
    started = time.perf_counter()
    result = run(config, sink, with_truth=True, progress=Progress(config))
    produce_s = time.perf_counter() - started
    report = result.sink
    if report["failed"] or report["unconfirmed"]:
        raise RuntimeError(
            f"preload: {report['failed']} failed, {report['unconfirmed']} unconfirmed: {report['errors']}"
        )
    truth = result.truth
    assert truth is not None
    messages = result.messages + 2 * partitions
    say(
        f"preload: {messages:,} messages ({result.valid_events:,} valid events) in {produce_s:.1f} s "
        f"({messages / produce_s:,.0f} msg/s), mean {sink.bytes / max(sink.messages, 1):.0f} B"
    )
    return Preloaded(
        playback_topic=playback_topic,
        signup_topic=signup_topic,
        messages=messages,
        valid_events=result.valid_events,
        mean_message_bytes=sink.bytes / max(sink.messages, 1),
        produce_s=produce_s,
        expected=expected_stream_starts(truth),
        late_events=int(truth["late"]["count"]),
        duplicates=int(truth["duplicates"]["count"]),
        malformed=int(truth["malformed"]["count"]),
        start_ms=start,
        close_ms=sink.close_ms,
        late=late_stream_starts(truth),
    )


def compare(expected: Cells, measured: Cells) -> dict[str, Any]:
    """How measured stream starts differ from the expected ones: `exact` and the totals."""
    keys = set(expected) | set(measured)
    differing = [k for k in keys if expected.get(k, 0) != measured.get(k, 0)]
    return {
        "exact": not differing,
        "expected_total": sum(expected.values()),
        "measured_total": sum(measured.values()),
        "cells": len(expected),
        "cells_differing": len(differing),
        "cells_missing": sum(1 for k in expected if k not in measured),
        "cells_extra": sum(1 for k in measured if k not in expected),
    }
