"""What every partition reader does, whatever it reads from: fold, replay feed, partition state, the summary.

A source (flows/sources/kafka.py, archive.py) adds only its `read_records`:
the next records of its partition, as the valid events to fold (in partition
order; a lazy iterable is fine, it is folded as it is decoded), how many
records that was, the offset after the last one and whether the partition is
at its end. `PartitionReader.next_batch` does the rest, once per batch:

- in a replay, events go through the partition's `ReplayFeed`
  (flows/sources/replay_range.py): events held back by the pace are released
  first and nothing new is read while some still wait; what the feed lets
  through is folded once per batch (`add_all`), as in a live run;
- the partition's state: *finished* past the replay's range, or at the end
  with `exit_at_end`; *idle* at the end and quiet for `idle_after_ms`, so it
  stops holding the watermark back; *active* otherwise;
- one `BatchSummary` when there is something to say (records, released
  events, a state other than active, or news of the source's own), an idle
  partition's at most every `IDLE_REPORT_INTERVAL_S`.

The hot path stays per batch: no object is made per event here.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from bytewax.inputs import StatefulSourcePartition

from flows.fold.native import Aggregator, make_aggregator
from flows.fold.partition_aggregator import Folder
from flows.partials import BatchSummary, PartitionState
from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayFeed, shared_progress

# An idle partition says it is still idle this often: enough for the window store, cheap for the flow.
IDLE_REPORT_INTERVAL_S = 5.0

SnapshotT = TypeVar("SnapshotT")


class Records(NamedTuple):
    """One read of a partition: what a source hands its reader."""

    events: Iterable[Any]  # the valid events, in partition order; may be lazy (decoded as they are folded)
    consumed: int  # records read, valid or not
    next_offset: int  # the offset after the last record read (unchanged if none)
    at_end: bool  # whether the partition has no record after these, as far as the source knows


class PartitionReader(StatefulSourcePartition[BatchSummary, SnapshotT]):
    """One partition's reader: folds what `read_records` returns into its aggregator, one summary per batch."""

    def __init__(
        self,
        name: str,
        family: str,
        folder: Folder,
        config: ReaderConfig,
        *,
        next_offset: int,
        exit_at_end: bool,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`name` is `topic#partition`; `clock` times idleness, `wall_clock` (epoch s) paces a replay."""
        self._name = name
        self._exit_at_end = exit_at_end
        self._idle_after_ms = config.idle_after_ms
        self._clock = clock
        self._wall_clock = wall_clock
        self._next_offset = next_offset
        self._aggregator: Aggregator = make_aggregator(name, config.windows, folder)
        # In a replay, events reach the aggregator through the feed: range filter, stop, pacing, progress. What it
        # lets through is folded once per batch (`add_all`), as in a live run, not once per event.
        self._replayed: list[Any] = []
        replay = config.replay
        self._feed = (
            ReplayFeed(replay, family, name, self._replayed.append, shared_progress(replay))
            if replay is not None
            else None
        )
        self._hold_until: float | None = None
        self._finished = False
        self._at_end = False
        self._last_record_at = clock()
        self._last_report_at = 0.0

    # What a source adds.

    @abstractmethod
    def read_records(self) -> Records:
        """The next records of the partition (none is fine: `Records((), 0, offset, at_end)`)."""

    def after_fold(self, now: float) -> None:
        """Called once per batch after the fold (`now` from `clock`): a source's own periodic reports."""

    def has_news(self) -> bool:
        """Whether the source has something to report even without records (a summary goes out)."""
        return False

    def complete(self, summary: BatchSummary) -> None:
        """Add the source's own fields (dead letters, lag, ...) to a summary about to be emitted."""

    def poll_again_at(self) -> datetime | None:
        """When to be called again if no replay holds events back; None: as soon as bytewax likes."""
        return None

    # The loop.

    def next_batch(self) -> list[BatchSummary]:
        """Read, fold and summarise one batch; [] when there is nothing to say."""
        if self._finished:
            raise StopIteration
        feed = self._feed
        released = 0
        if feed is not None:
            # Paced replay: events held back go first; nothing new is read while some still wait.
            self._hold_until = feed.release(self._wall_clock())
            released = feed.released
        held = self._hold_until is not None
        consumed = 0
        if not held:
            records = self.read_records()
            now = self._clock()
            consumed = records.consumed
            self._next_offset = records.next_offset
            self._at_end = records.at_end
            if consumed:
                self._last_record_at = now
            if feed is None:
                self._aggregator.add_all(records.events)
            else:
                add = feed.add
                for event in records.events:
                    add(event)
        else:
            now = self._clock()
        self.after_fold(now)
        if feed is not None and not held:
            self._hold_until = feed.release(self._wall_clock())
            released += feed.released
        if self._replayed:
            self._aggregator.add_all(self._replayed)
            self._replayed.clear()
        state = self.state(now)
        if feed is not None:
            feed.report(consumed, state == "finished")
        news = self.has_news()
        if not consumed and not released and state == "active" and not news:
            return []
        if state == "idle" and not consumed and not news and now - self._last_report_at < IDLE_REPORT_INTERVAL_S:
            return []
        self._last_report_at = now
        summary = self._aggregator.summary(state)
        summary.consumed = consumed
        self.complete(summary)
        if state == "finished":
            self._finished = True
        return [summary]

    def state(self, now: float) -> PartitionState:
        """The partition's state as of `now` (from `clock`); see the module docstring."""
        feed = self._feed
        if feed is not None:
            if feed.past_range:
                return "finished"
            if feed.holding:
                return "active"
        if not self._at_end:
            return "active"
        if self._exit_at_end:
            return "finished"
        quiet_ms = (now - self._last_record_at) * 1000
        return "idle" if quiet_ms >= self._idle_after_ms else "active"

    def next_awake(self) -> datetime | None:
        """When the paced replay releases held events, else the source's own wish."""
        if self._hold_until is not None:
            return datetime.fromtimestamp(self._hold_until, UTC)
        return self.poll_again_at()
