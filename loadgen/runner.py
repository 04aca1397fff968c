"""One run of the load generator: model -> ground truth -> delivery faults -> (pacing) -> sink."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from loadgen.config import LoadgenConfig
from loadgen.faults import DUPLICATE, LATE, MALFORMED, VALID, Delivery, Out
from loadgen.incident_effects import IncidentSet
from loadgen.malformed import EXPECTED_REASON
from loadgen.model import Model
from loadgen.sinks import Sink
from loadgen.truth import TruthBuilder


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass
class RunResult:
    """What a run produced."""

    valid_events: int
    messages: int
    by_kind: dict[str, int]
    sink: dict[str, Any]
    elapsed_s: float
    interrupted: bool = False
    truth: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def events_per_s(self) -> float:
        """Valid events per second of wall-clock time."""
        return self.valid_events / self.elapsed_s if self.elapsed_s > 0 else float("inf")


class Progress:
    """A one-line progress report (count, rate, ETA) on a terminal; silent anywhere else."""

    def __init__(self, config: LoadgenConfig, stream: TextIO | None = None, every_s: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.config = config
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = 0.0
        self._shown = False

    def update(self, events: int, event_time_ms: int | None, final: bool = False) -> None:
        """Redraw the line if it is time to (or `final`)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.started
        rate = events / elapsed if elapsed > 0 else 0.0
        parts = [f"loadgen: {events:,} events", f"{rate:,.0f} ev/s"]
        if event_time_ms is not None:
            stamp = datetime.fromtimestamp(event_time_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            parts.append(f"event time {stamp}Z")
        fraction = self._fraction(events, event_time_ms)
        if fraction is not None and fraction > 0:
            parts.append(f"{fraction:.0%}")
            eta = elapsed * (1 - fraction) / fraction
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        line = "  ".join(parts)
        self.stream.write(f"\r{line:<100}" + ("\n" if final else ""))
        self.stream.flush()
        self._shown = True

    def _fraction(self, events: int, event_time_ms: int | None) -> float | None:
        c = self.config
        fractions = []
        if c.events:
            fractions.append(events / c.events)
        if c.span_ms and event_time_ms is not None:
            fractions.append((event_time_ms - c.start_ms) / c.span_ms)
        return min(1.0, max(fractions)) if fractions else None


class _Pacer:
    """Holds each message until the wall clock reaches its delivery time (realtime mode)."""

    def __init__(self, write: Callable[[list[Out]], None], clock: Callable[[], int] = now_ms) -> None:
        self.write = write
        self.clock = clock
        self._unsent: list[Out] = []

    def __call__(self, messages: list[Out]) -> None:
        self._unsent = messages
        i = 0
        n = len(messages)
        while i < n:
            now = self.clock()
            j = i
            while j < n and messages[j][0] <= now:
                j += 1
            if j > i:
                self.write(messages[i:j])
                i = j
                self._unsent = messages[i:]
            else:
                time.sleep(min((messages[i][0] - now) / 1000, 0.25))
        self._unsent = []

    def unsent(self) -> list[Out]:
        """What an interrupted call had not written yet."""
        rest, self._unsent = self._unsent, []
        return rest


def run(
    config: LoadgenConfig,
    sink: Sink,
    *,
    with_truth: bool = False,
    progress: Progress | None = None,
    batch_size: int | None = None,
) -> RunResult:
    """Generate, deliver into `sink`, and (if asked) build the ground truth of what was delivered.

    Ctrl-C (KeyboardInterrupt) stops the run cleanly: what is held back is sent at once, the sink is closed and
    the truth covers exactly what was sent.
    """
    gc_was_enabled = gc.isenabled()
    if config.mode == "simulated":
        # The run allocates millions of short-lived dicts and tuples but makes no reference cycles that matter:
        # cyclic GC passes over the growing heap would cost more than the generation itself.
        gc.disable()
    try:
        return _run(config, sink, with_truth, progress, batch_size)
    finally:
        if gc_was_enabled:
            gc.enable()


def _run(
    config: LoadgenConfig, sink: Sink, with_truth: bool, progress: Progress | None, batch_size: int | None
) -> RunResult:
    started = time.monotonic()
    incidents = IncidentSet(config.resolved_incidents())
    model = Model(config, incidents)
    truth = TruthBuilder(config.windows_ms, config.timeout_ms) if with_truth else None
    if truth is not None:
        model.hidden = truth.hidden = {}
    else:
        model.hidden = None
    delivery = Delivery(config.faults, config.seed, config.run_tag, truth)
    pacer = _Pacer(sink.write) if config.mode == "realtime" else None
    emit: Callable[[list[Out]], None] = pacer if pacer is not None else sink.write
    if batch_size is None:
        # Realtime: batches of about 0.1 s of traffic, so an interrupted run has little generated but unsent.
        batch_size = 256 if config.mode == "simulated" else max(1, int(config.effective_rate / 10))
    valid = 0
    last_time: int | None = None
    interrupted = False
    try:
        for events in model.batches(batch_size):
            if truth is not None:
                truth.add(events)
            valid += len(events)
            last_time = events[-1]["event_time_ms"]
            emit(delivery.process(events))
            if progress is not None:
                progress.update(valid, last_time)
        emit(delivery.flush())
    except KeyboardInterrupt:
        interrupted = True
        if pacer is not None:
            sink.write(pacer.unsent())
        sink.write(delivery.flush())
    report = sink.close()
    counts = delivery.counts
    by_kind = {
        "valid": counts[VALID] + counts[LATE],
        "late": counts[LATE],
        "duplicate": counts[DUPLICATE],
        "malformed": counts[MALFORMED],
    }
    messages = sum(counts)
    if progress is not None:
        progress.update(valid, last_time, final=True)
    doc = None
    if truth is not None:
        truth.messages = messages
        run_info = config.describe()
        run_info["interrupted"] = interrupted
        incidents_doc = []
        for inc in incidents.incidents:
            entry = inc.to_truth()
            entry["dropped_attempts"] = incidents.dropped_attempts[inc.name]
            incidents_doc.append(entry)
        delivery_report = report if "acked" in report else None
        doc = truth.document(run_info, incidents_doc, EXPECTED_REASON, delivery_report)
    return RunResult(valid, messages, by_kind, report, time.monotonic() - started, interrupted, doc)
