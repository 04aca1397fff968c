"""Per-partition folding of decoded events into window partials: lateness and duplicates.

Lateness is judged per Kafka partition: an event is late for a window once
the window's end plus the allowed lateness is at or behind the highest event
time already seen *on the same partition*. Partitions read at different
speeds (on replay they drift minutes apart), so judging against the
highest timestamp seen anywhere — what bytewax's own windowing does — drops
most of a replay as late; per partition, the verdict depends only on the
partition's own order and is the same for 1 or N workers. A far-future
timestamp cannot drag this watermark because the decoder rejects events more
than the allowed skew ahead of the wall clock.

A re-delivered event keeps its `event_id` and its key, so it lands on the
same partition: duplicates are caught here, remembering each id until its
coarse window is closed on this partition. After that a copy is late, never a
second count. The memory this costs is one id per event of the last
(coarse window + allowed lateness) of event time on the partition
(flows/fold/event_ids.py keeps them as 8-byte hashes).

Most aggregates have no dimension beyond `country` and `device_type`, so
within a batch they are counted in one row of integers per
(window, country, device_type) — a list slot per aggregate — rather than a
dict entry each: an event then costs one lookup, whatever it adds to. The
window store adds rows up as rows, and expands them into aggregates only
when it publishes.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flows.fold.event_ids import EventIds
from flows.partials import BatchSummary, Partials, PartitionState, RowLayout, Rows
from settings.windows import WindowConfig

NO_EVENT_YET = -1
SNAPSHOT_VERSION = 1
NO_ROW: list[int] = []  # for folders that count nothing per (window, country, device_type)
NOTHING: tuple[int, None] = (-1, None)  # an event type a folder neither counts nor handles

# handler(event, window, row of (window, country, device), fine rows, partials at window, on time for fine window)
Handler = Callable[[Any, int, list[int], Rows, Partials, bool], None]


class Folder(Protocol):
    """An event family's folding logic (flows/fold/playback.py, flows/fold/signup.py)."""

    @property
    def row_layout(self) -> RowLayout:
        """What each slot of a (window, country, device_type) row adds to."""

    @property
    def event_slots(self) -> dict[str, int]:
        """The row slot counting each event type (the `events` aggregate); empty when not counted."""

    @property
    def handlers(self) -> dict[str, Handler]:
        """Per event type, what it adds beyond its `events` count (types without an entry add nothing)."""

    @property
    def keys_held(self) -> int:
        """Per-key state held in memory (open sessions, open sign-up funnels)."""

    def snapshot(self) -> Any:
        """Its per-key state as plain data (for recovery snapshots)."""

    def restore(self, state: Any) -> None:
        """Take back the state `snapshot` returned."""

    def close(self, high_ms: int, everything: bool, fine_rows: Rows) -> None:
        """Settle per-key contributions to windows now closed on the partition (all of them if `everything`)."""

    def forget(self, horizon_ms: int) -> None:
        """Free per-key state that can no longer change an open window."""


class PartitionAggregator:
    """Folds one partition's events, in partition order, into per-batch summaries."""

    def __init__(self, partition: str, windows: WindowConfig, folder: Folder) -> None:
        self.partition = partition
        self.high_event_time_ms = NO_EVENT_YET
        self._fine_ms = windows.fine_ms
        self._coarse_ms = windows.coarse_ms
        self._lateness_ms = windows.allowed_lateness_ms
        self._fine_name = windows.fine_name
        self._coarse_name = windows.coarse_name
        self._folder = folder
        self._layout = folder.row_layout
        self._width = len(self._layout)
        # event type -> (its `events` row slot or -1, its handler or None): one lookup per event
        self._by_type: dict[str, tuple[int, Handler | None]] = {
            event_type: (folder.event_slots.get(event_type, -1), folder.handlers.get(event_type))
            for event_type in {*folder.event_slots, *folder.handlers}
        }
        self._closed_to = NO_EVENT_YET
        self._forgot_at = NO_EVENT_YET
        self._ids = EventIds()
        self._first_time = self._ids.first_time
        self._reset_batch()

    def _reset_batch(self) -> None:
        self._fine: Partials = {}
        self._fine_rows: Rows = {}
        self._coarse_only: Partials = {}
        self._coarse_rows: Rows = {}
        self._late: dict[tuple[str, int, str], int] = {}
        self._duplicates = 0

    def add(self, event: Any) -> None:
        """Fold one decoded, valid event."""
        self.add_all((event,))

    def add_all(self, events: Iterable[Any]) -> None:
        """Fold decoded, valid events, in partition order.

        One call per batch: what every event needs is read into locals once, which is most of what a per-event
        call would cost.
        """
        high = self.high_event_time_ms
        lateness, coarse_ms, fine_ms, width = self._lateness_ms, self._coarse_ms, self._fine_ms, self._width
        by_type, count_late, first_time = self._by_type, self._count_late, self._first_time
        fine, fine_rows, coarse_only, coarse_rows = self._fine, self._fine_rows, self._coarse_only, self._coarse_rows
        fine_name, coarse_name = self._fine_name, self._coarse_name
        for event in events:
            t: int = event.event_time_ms
            if t > high:
                high = t
            event_type: str = event.event_type
            slot, handler = by_type.get(event_type, NOTHING)
            if slot < 0 and handler is None:
                # A type no enabled metric counts (`--metric-set stream_starts`) only moves the watermark: it is
                # neither late nor a duplicate of anything counted, so its id need not be checked or remembered.
                continue
            coarse_start = t - t % coarse_ms
            fine_start = t - t % fine_ms
            if coarse_start + coarse_ms + lateness <= high:
                count_late(coarse_name, coarse_start, event_type)
                count_late(fine_name, fine_start, event_type)
                continue
            if not first_time(coarse_start, event.event_id):
                self._duplicates += 1
                continue
            if fine_start + fine_ms + lateness <= high:
                count_late(fine_name, fine_start, event_type)
                acc, rows, window, on_time = coarse_only, coarse_rows, coarse_start, False
            else:
                acc, rows, window, on_time = fine, fine_rows, fine_start, True
            if slot >= 0:
                row_key = (window, event.country, event.device_type)
                row = rows.get(row_key)
                if row is None:
                    row = rows[row_key] = [0] * width
                row[slot] += 1
            else:
                row = NO_ROW
            if handler is not None:
                handler(event, window, row, fine_rows, acc, on_time)
        self.high_event_time_ms = high

    def _count_late(self, resolution: str, window: int, event_type: str) -> None:
        key = (resolution, window, event_type)
        self._late[key] = self._late.get(key, 0) + 1

    def summary(self, state: PartitionState) -> BatchSummary:
        """Hand over what the batch added, and forget ids whose windows closed."""
        high, fine_ms = self.high_event_time_ms, self._fine_ms
        # Per-key contributions to windows that just closed here are settled before the store can finalize
        # them: once per fine window of progress, and all of them when the partition stops holding the
        # watermark (idle or finished), since windows may then close without it.
        closed_to = high - self._lateness_ms
        closed_to -= closed_to % fine_ms
        if state != "active" or closed_to > self._closed_to:
            self._closed_to = closed_to
            self._folder.close(high, state != "active", self._fine_rows)
        horizon = high - self._lateness_ms - self._coarse_ms
        self._ids.forget_before(horizon)
        # Freeing per-key state scans it all: once per coarse window of progress, not on every batch.
        if horizon >= self._forgot_at + self._coarse_ms:
            self._forgot_at = horizon
            self._folder.forget(horizon)
        summary = BatchSummary(
            partition=self.partition,
            high_event_time_ms=high,
            state=state,
            fine=self._fine,
            coarse_only=self._coarse_only,
            late=self._late,
            fine_rows=self._fine_rows,
            coarse_rows=self._coarse_rows,
            layout=self._layout,
            duplicates=self._duplicates,
        )
        self._reset_batch()
        return summary

    def snapshot(self) -> bytes:
        """Everything it remembers between batches, pickled: what a restart needs to judge the next events alike.

        Taken between batches (bytewax snapshots at the end of an epoch), so nothing of a batch is in it.
        """
        return pack_snapshot(
            (self.high_event_time_ms, self._closed_to, self._forgot_at, self._ids.snapshot(), self._folder.snapshot())
        )

    def restore(self, snapshot: bytes) -> None:
        """Continue from a `snapshot` of an aggregator of the same partition (this one or flows/fold/native.py's)."""
        high, closed_to, forgot_at, ids, folder = unpack_snapshot(self.partition, snapshot)
        self.high_event_time_ms, self._closed_to, self._forgot_at = high, closed_to, forgot_at
        self._ids.restore(ids)
        self._folder.restore(folder)

    @property
    def keys_held(self) -> int:
        """Per-key state its folder holds (open sessions or sign-up funnels)."""
        return self._folder.keys_held

    @property
    def remembered_ids(self) -> int:
        """How many event ids are held for duplicate detection."""
        return len(self._ids)


# What an aggregator remembers: (high event time, closed-to, forgot-at, duplicate ids, folder state). Both
# aggregators (this one and flows/fold/native.py's) write and read it, so either resumes from the other's.
AggregatorState = tuple[int, int, int, Any, Any]


def pack_snapshot(state: AggregatorState) -> bytes:
    """An aggregator's state as a recovery snapshot."""
    return pickle.dumps((SNAPSHOT_VERSION, *state), protocol=pickle.HIGHEST_PROTOCOL)


def unpack_snapshot(partition: str, snapshot: bytes) -> AggregatorState:
    """The state in a recovery snapshot of `partition`, if this version reads its format."""
    version, *state = pickle.loads(snapshot)  # noqa: S301  # our own snapshot
    if version != SNAPSHOT_VERSION:
        raise ValueError(
            f"recovery snapshot of {partition} has format {version}, this version reads {SNAPSHOT_VERSION}: "
            "start with a fresh recovery directory"
        )
    high, closed_to, forgot_at, ids, folder = state
    return high, closed_to, forgot_at, ids, folder
