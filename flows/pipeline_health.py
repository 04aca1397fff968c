"""The pipeline's health as the flow sees it: one small document per publish, for `streampulse top`.

Every batch summary already meets the window store in one step, so that step
also sees everything the health document needs: messages consumed, rejects by
reason, each partition's lag, state and last Kafka error. `HealthTracker`
keeps running totals of them (per batch, never per event) and, at each
publish, turns them into a `PipelineHealth`: totals since the flow started,
figures over the last minute (from totals remembered for a minute), the
watermark and the newest window of each resolution. The document is absolute,
so writing it again changes nothing; `top` reads it from Redis and needs no
/metrics access.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from flows.partials import BatchSummary
from flows.windows.store import WindowUpdate

MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class NewestWindow:
    """The newest window published at one resolution that the watermark has reached."""

    start_ms: int
    end_ms: int
    final: bool


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    """What `top`'s header shows about the flow; fields are documented in docs/metrics.md."""

    updated_ms: int
    started_ms: int
    watermark_ms: int
    newest_windows: dict[str, NewestWindow]
    events_consumed_total: int
    events_per_second: float
    bad_events_total: int
    bad_events_last_minute: int
    bad_events_by_reason: dict[str, int]
    late_events_total: int
    late_events_last_minute: int
    duplicates_total: int
    consumer_lag: int | None
    partitions: dict[str, int]
    kafka_errors: dict[str, str] = field(default_factory=dict)

    @property
    def kafka_reachable(self) -> bool:
        """No partition reader has a Kafka error it has not got past yet."""
        return not self.kafka_errors

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what is stored)."""
        return {**asdict(self), "kafka_reachable": self.kafka_reachable}


@dataclass(frozen=True, slots=True)
class _Totals:
    at_ms: int
    consumed: int
    bad: int
    late: int


class HealthTracker:
    """Running totals of what the readers report, turned into a `PipelineHealth` at each publish."""

    def __init__(self, started_ms: int, late_at_start: int = 0) -> None:
        """`late_at_start`: late events a restored window store had already counted (not this run's)."""
        self._started_ms = started_ms
        self._consumed = 0
        self._bad = 0
        self._bad_by_reason: dict[str, int] = {}
        self._lag: dict[str, int] = {}
        self._states: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._newest: dict[str, NewestWindow] = {}
        # Totals at each publish of the last minute, oldest first; the first is at or before a minute ago.
        self._history: deque[_Totals] = deque([_Totals(started_ms, 0, 0, late_at_start)])

    def observe(self, summary: BatchSummary) -> None:
        """Count one partition batch (its size, rejects, lag, state, Kafka error)."""
        partition = summary.partition
        self._consumed += summary.consumed
        # Rejects still attached are counted one by one; those split off to the dead-letter sink, by reason.
        self._bad += len(summary.rejects)
        for letter in summary.rejects:
            self._bad_by_reason[letter.reason] = self._bad_by_reason.get(letter.reason, 0) + 1
        for reason, count in summary.rejected_by_reason.items():
            self._bad += count
            self._bad_by_reason[reason] = self._bad_by_reason.get(reason, 0) + count
        if summary.state == "finished":
            self._lag[partition] = 0  # read to its end: what the last measurement (seconds ago) said is past
        elif summary.lag >= 0:
            self._lag[partition] = summary.lag
        self._states[partition] = summary.state
        if summary.kafka_error:
            self._errors[partition] = summary.kafka_error
        else:
            self._errors.pop(partition, None)

    def document(
        self, now_ms: int, watermark_ms: int, late_total: int, duplicates_total: int, updates: list[WindowUpdate]
    ) -> PipelineHealth:
        """The health at `now_ms`, after publishing `updates`."""
        for update in updates:
            if update.window_start_ms > watermark_ms:
                continue  # ahead of the watermark: only sessions timing out there (concurrency changes) so far
            newest = self._newest.get(update.resolution)
            if newest is None or update.window_start_ms >= newest.start_ms:
                self._newest[update.resolution] = NewestWindow(
                    update.window_start_ms, update.window_end_ms, update.final
                )
        now = _Totals(now_ms, self._consumed, self._bad, late_total)
        history = self._history
        history.append(now)
        while len(history) > 1 and history[1].at_ms <= now_ms - MINUTE_MS:
            history.popleft()
        base = history[0]
        seconds = (now_ms - base.at_ms) / 1000
        states: dict[str, int] = {}
        for state in self._states.values():
            states[state] = states.get(state, 0) + 1
        return PipelineHealth(
            updated_ms=now_ms,
            started_ms=self._started_ms,
            watermark_ms=watermark_ms,
            newest_windows=dict(self._newest),
            events_consumed_total=self._consumed,
            events_per_second=round((now.consumed - base.consumed) / seconds, 1) if seconds > 0 else 0.0,
            bad_events_total=self._bad,
            bad_events_last_minute=now.bad - base.bad,
            bad_events_by_reason=dict(self._bad_by_reason),
            late_events_total=late_total,
            late_events_last_minute=now.late - base.late,
            duplicates_total=duplicates_total,
            consumer_lag=sum(self._lag.values()) if self._lag else None,
            partitions=states,
            kafka_errors=dict(self._errors),
        )
