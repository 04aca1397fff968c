"""What a replay reads, counts and writes: the time range, its margins, pacing and progress.

A replay re-runs the live analytics over the events whose event time is in
`[from_ms, to_ms)` and writes the windows that lie wholly inside that range.
It cannot start reading exactly at `from_ms`, because the live verdicts on
those events depend on what came before them on their partition:

- a concurrent stream at a window end counts sessions whose last event is up
  to the session timeout earlier; a sign-up failure takes its plan and
  payment method from its funnel's earlier events, remembered for up to the
  sign-up timeout (freed in batches, hence twice that). So each family reads
  a *lead* of event time before `from_ms` (`lead_ms`), and events older than
  that are dropped before the aggregator: they cannot change a window of the
  range (duplicates and lateness need no lead: an older event can neither be
  the first copy of an in-range event nor make one late);
- a Kafka record's timestamp can trail the event's time (a device clock
  ahead), by at most `timestamp_skew_ms`: the Kafka seek by timestamp goes
  that much further back, so every event of the lead is read.

A partition stops once one of its events is `tail_ms` (allowed lateness +
coarse window) past `to_ms`: from then on every event of the range's windows
is late on that partition, so nothing read later could change their values
(only their `late:*` counts). Windows that straddle `from_ms` or `to_ms`, and
those of the lead, hold only part of their events and are not written.

With a pace, an event of the range is folded once `from_ms + pace × (wall
time since the range began)` has reached its time; the lead is read as fast
as possible. Progress is counted per batch, never per event, and printed at
most once a second.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from settings.windows import WindowConfig

PROGRESS_INTERVAL_S = 1.0
UNBOUNDED = 2**62


@dataclass(frozen=True)
class ReplayRange:
    """The event-time range of a replay and the margins around it; all times epoch ms UTC."""

    from_ms: int
    to_ms: int
    # (family, event time read before from_ms so that state and verdicts match the live run's)
    lead_ms: tuple[tuple[str, int], ...]
    timestamp_skew_ms: int
    tail_ms: int
    # None: as fast as possible; 1.0: event time advances like wall time; N: N times faster.
    pace: float | None = None

    def __post_init__(self) -> None:
        if self.to_ms <= self.from_ms:
            raise ValueError(f"the range is empty: to ({self.to_ms}) must be after from ({self.from_ms})")
        if self.timestamp_skew_ms < 0 or self.tail_ms < 0 or any(lead < 0 for _, lead in self.lead_ms):
            raise ValueError("margins cannot be negative")
        if self.pace is not None and not self.pace > 0:
            raise ValueError("the pace must be greater than zero")

    def low_ms(self, family: str) -> int:
        """Events of `family` older than this cannot change a window of the range: they are dropped."""
        leads = dict(self.lead_ms)
        return self.from_ms - leads.get(family, max(leads.values(), default=0))

    def seek_ms(self, family: str) -> int:
        """The Kafka record timestamp to seek to: no event of the lead has an earlier one."""
        return self.low_ms(family) - self.timestamp_skew_ms

    @property
    def stop_ms(self) -> int:
        """A partition stops after its first event at or past this event time."""
        return self.to_ms + self.tail_ms

    def inside(self, window_start_ms: int, window_end_ms: int) -> bool:
        """Whether a window lies wholly inside the range (only those are written)."""
        return self.from_ms <= window_start_ms and window_end_ms <= self.to_ms


def replay_range(
    from_ms: int,
    to_ms: int,
    windows: WindowConfig,
    session_timeout_ms: int,
    signup_timeout_ms: int,
    timestamp_skew_ms: int,
    pace: float | None = None,
) -> ReplayRange:
    """The range with the margins the live run's settings call for (see the module docstring)."""
    settle = windows.allowed_lateness_ms + windows.coarse_ms
    return ReplayRange(
        from_ms=from_ms,
        to_ms=to_ms,
        lead_ms=(
            ("playback", max(settle, session_timeout_ms)),
            # A funnel is forgotten once silent for the timeout, but only at a batch's end: allow twice that.
            ("signup", 2 * signup_timeout_ms + settle),
        ),
        timestamp_skew_ms=timestamp_skew_ms,
        tail_ms=settle,
        pace=pace,
    )


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class ReplayProgress:
    """This process's replay readers together: what they read, how far in event time, at what rate.

    Readers report once per batch; a line goes to `out` at most once per
    `interval_s`. It also anchors pacing: the wall time at which the first
    reader reached the range.
    """

    def __init__(
        self,
        replay: ReplayRange,
        out: TextIO | None = None,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` times the progress lines; `wall_clock` (epoch s) starts the paced clock."""
        self._replay = replay
        self.wall_clock = wall_clock
        self._out = out
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._high: dict[str, int] = {}
        self._finished: set[str] = set()
        self.read = 0
        self.aggregated = 0
        self.in_range = 0
        self._started = clock()
        self._last_line_at = self._started
        self._aggregated_at_last_line = 0
        self._anchor_s: float | None = None

    def register(self, partition: str) -> None:
        """A reader of `partition` exists in this process: it holds progress back until it reports."""
        with self._lock:
            self._high.setdefault(partition, -1)

    def anchor_s(self, now_s: float) -> float:
        """Wall time (epoch seconds) at which the range began to be replayed; set by the first caller."""
        with self._lock:
            if self._anchor_s is None:
                self._anchor_s = now_s
            return self._anchor_s

    def update(self, partition: str, read: int, aggregated: int, in_range: int, high_ms: int, finished: bool) -> None:
        """Add one batch of `partition` (messages read, events aggregated, of them in the range).

        Prints a line if the last one is old enough.
        """
        with self._lock:
            self.read += read
            self.aggregated += aggregated
            self.in_range += in_range
            self._high[partition] = max(self._high.get(partition, -1), high_ms)
            if finished:
                self._finished.add(partition)
            now = self._clock()
            if self._out is None or now - self._last_line_at < self._interval_s:
                return
            line = self._line(now)
            self._last_line_at = now
            self._aggregated_at_last_line = self.aggregated
        print(line, file=self._out, flush=True)

    @property
    def reached_ms(self) -> int:
        """The event time every partition of this process has reached, within the range."""
        replay = self._replay
        pending = [high for p, high in self._high.items() if p not in self._finished]
        reached = min(pending) if pending else replay.to_ms
        return min(max(reached, replay.from_ms), replay.to_ms)

    @property
    def fraction(self) -> float:
        """How much of the range is behind every partition, 0..1."""
        replay = self._replay
        return (self.reached_ms - replay.from_ms) / (replay.to_ms - replay.from_ms)

    def _line(self, now: float) -> str:
        elapsed = max(now - self._last_line_at, 1e-9)
        rate = (self.aggregated - self._aggregated_at_last_line) / elapsed
        return (
            f"replay: {self.read:,} events read, {self.in_range:,} in range, event time {_utc(self.reached_ms)} "
            f"({self.fraction:.1%} of the range), {rate:,.0f} events/s aggregated"
        )

    def summary(self) -> str:
        """The closing line: totals and the average rate."""
        with self._lock:
            elapsed = max(self._clock() - self._started, 1e-9)
            return (
                f"replay: done: {self.read:,} events read, {self.in_range:,} in range, "
                f"in {elapsed:.1f} s ({self.aggregated / elapsed:,.0f} events/s aggregated)"
            )


_shared: dict[ReplayRange, ReplayProgress] = {}
_shared_lock = threading.Lock()


def shared_progress(replay: ReplayRange) -> ReplayProgress:
    """The one progress of this process for `replay`, printing on stderr; every reader reports to it."""
    with _shared_lock:
        progress = _shared.get(replay)
        if progress is None:
            progress = _shared[replay] = ReplayProgress(replay, out=sys.stderr)
        return progress


class ReplayFeed:
    """One partition's reader during a replay: drops what the range cannot need, stops past it, paces, reports.

    `add` stands in for the aggregator's `add`; events arrive in partition
    order. With a pace, an event of the range that is ahead of the paced
    clock waits in a backlog, and so does every event after it (order is
    kept); the reader calls `release` before reading anything new, and reads
    nothing new while it returns a wake-up time. The backlog is thus at most
    one batch. `report` goes once per batch.
    """

    __slots__ = (
        "_add",
        "_allowed_ms",
        "_backlog",
        "_from",
        "_low",
        "_pace",
        "_partition",
        "_progress",
        "_reported_aggregated",
        "_reported_in_range",
        "_stop",
        "_to",
        "aggregated",
        "high_ms",
        "in_range",
        "past_range",
        "released",
    )

    def __init__(
        self, replay: ReplayRange, family: str, partition: str, add: Callable[[Any], None], progress: ReplayProgress
    ) -> None:
        self._add = add
        self._from = replay.from_ms
        self._to = replay.to_ms
        self._low = replay.low_ms(family)
        self._stop = replay.stop_ms
        self._pace = replay.pace
        self._partition = partition
        self._progress = progress
        self._reported_in_range = 0
        self._reported_aggregated = 0
        self._backlog: list[Any] = []
        # Event time the pace lets through now; unbounded without a pace or before the range has begun.
        self._allowed_ms = UNBOUNDED
        self.high_ms = -1
        self.aggregated = 0
        self.in_range = 0
        self.past_range = False
        self.released = 0
        progress.register(partition)

    def add(self, event: Any) -> None:
        """Fold `event`, unless it is older than the lead, past the range, or (paced) ahead of the clock."""
        if self.past_range:
            return
        if self._backlog:
            self._backlog.append(event)
            return
        if self._pace is not None and event.event_time_ms >= self._from:
            if self._allowed_ms == UNBOUNDED:
                # The first event of the range starts the paced clock (shared by this process's partitions).
                self._allowed_ms = self._allowed_at(self._progress.wall_clock())
            if event.event_time_ms > self._allowed_ms:
                self._backlog.append(event)
                return
        self._fold(event)

    def _fold(self, event: Any) -> None:
        t: int = event.event_time_ms
        if t < self._low:
            return
        if t > self.high_ms:
            self.high_ms = t
        self.aggregated += 1
        if self._from <= t < self._to:
            self.in_range += 1
        self._add(event)
        if t >= self._stop:
            # Every later event of the range's windows would be late here: they cannot change.
            self.past_range = True

    def _allowed_at(self, now_s: float) -> int:
        assert self._pace is not None
        return self._from + int((now_s - self._progress.anchor_s(now_s)) * 1000 * self._pace)

    @property
    def holding(self) -> bool:
        """Whether events wait for the paced clock: the reader must not read on."""
        return bool(self._backlog)

    def release(self, now_s: float) -> float | None:
        """Fold the waiting events the paced clock now lets through; the wall time (epoch s) to come back, or None.

        `released` says how many were folded. Waiting events keep their order:
        the first one still ahead of the clock holds back all after it.
        """
        self.released = 0
        if self._allowed_ms == UNBOUNDED:
            return None  # no pace, or the range has not begun: nothing waits
        self._allowed_ms = self._allowed_at(now_s)
        if not self._backlog:
            return None
        waiting, self._backlog = self._backlog, []
        for i, event in enumerate(waiting):
            if self.past_range:
                break
            if event.event_time_ms >= self._from and event.event_time_ms > self._allowed_ms:
                self._backlog = waiting[i:]
                break
            self._fold(event)
            self.released += 1
        if not self._backlog:
            return None
        assert self._pace is not None
        due_ms: int = self._backlog[0].event_time_ms
        return self._progress.anchor_s(now_s) + (due_ms - self._from) / 1000 / self._pace

    def report(self, read: int, finished: bool) -> None:
        """Tell the progress about one batch of `read` consumed messages."""
        in_range, aggregated = self.in_range - self._reported_in_range, self.aggregated - self._reported_aggregated
        self._reported_in_range, self._reported_aggregated = self.in_range, self.aggregated
        self._progress.update(self._partition, read, aggregated, in_range, self.high_ms, finished)
