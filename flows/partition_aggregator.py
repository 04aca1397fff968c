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
second count. The memory this costs is one id string per event of the last
(coarse window + allowed lateness) of event time on the partition.
"""

from __future__ import annotations

from typing import Any, Protocol

from flows.partials import BatchSummary, Partials, PartitionState
from flows.windows import WindowConfig, resolution_name

NO_EVENT_YET = -1


class Folder(Protocol):
    """An event family's folding logic (flows/playback_metrics.py, flows/signup_metrics.py)."""

    @property
    def keys_held(self) -> int:
        """Per-key state held in memory (open sessions, open sign-up funnels)."""

    def fold(self, event: Any, window: int, acc: Partials, fine: Partials | None) -> None:
        """Add one valid, on-time, first-seen event to `acc` at `window`."""

    def forget(self, horizon_ms: int) -> None:
        """Free per-key state that can no longer change an open window."""


class PartitionAggregator:
    """Folds one partition's events, in partition order, into per-batch summaries."""

    def __init__(self, partition: str, windows: WindowConfig, folder: Folder, count_events: bool = True) -> None:
        """`count_events` keeps the per-window `events` aggregate (valid events by type); off only to benchmark."""
        self.partition = partition
        self.high_event_time_ms = NO_EVENT_YET
        self._fine_ms = windows.fine_ms
        self._coarse_ms = windows.coarse_ms
        self._lateness_ms = windows.allowed_lateness_ms
        self._fine_name = resolution_name(windows.fine_ms)
        self._coarse_name = resolution_name(windows.coarse_ms)
        self._folder = folder
        self._forgot_at = NO_EVENT_YET
        self._count_events = count_events
        # coarse window start -> ids seen in it on this partition
        self._seen_ids: dict[int, set[str]] = {}
        self._reset_batch()

    def _reset_batch(self) -> None:
        self._fine: Partials = {}
        self._coarse_only: Partials = {}
        self._late: dict[tuple[str, int, str], int] = {}
        self._duplicates = 0
        self._consumed = 0

    def add(self, event: Any) -> None:
        """Fold one decoded, valid event."""
        self._consumed += 1
        t: int = event.event_time_ms
        if t > self.high_event_time_ms:
            self.high_event_time_ms = t
        high = self.high_event_time_ms
        lateness = self._lateness_ms
        event_type: str = event.event_type
        coarse_start = t - t % self._coarse_ms
        fine_start = t - t % self._fine_ms
        if coarse_start + self._coarse_ms + lateness <= high:
            self._count_late(self._coarse_name, coarse_start, event_type)
            self._count_late(self._fine_name, fine_start, event_type)
            return
        seen = self._seen_ids.get(coarse_start)
        if seen is None:
            seen = self._seen_ids[coarse_start] = set()
        event_id: str = event.event_id
        if event_id in seen:
            self._duplicates += 1
            return
        seen.add(event_id)
        fine: Partials | None
        if fine_start + self._fine_ms + lateness <= high:
            self._count_late(self._fine_name, fine_start, event_type)
            acc, window, fine = self._coarse_only, coarse_start, None
        else:
            acc, window, fine = self._fine, fine_start, self._fine
        if self._count_events:
            key = (window, "events", event.country, event.device_type, event_type)
            acc[key] = acc.get(key, 0) + 1
        self._folder.fold(event, window, acc, fine)

    def _count_late(self, resolution: str, window: int, event_type: str) -> None:
        key = (resolution, window, event_type)
        self._late[key] = self._late.get(key, 0) + 1

    def summary(self, state: PartitionState) -> BatchSummary:
        """Hand over what the batch added, and forget ids whose windows closed."""
        horizon = self.high_event_time_ms - self._lateness_ms - self._coarse_ms
        for start in [s for s in self._seen_ids if s <= horizon]:
            del self._seen_ids[start]
        # Freeing per-key state scans it all: once per fine window of progress, not on every batch.
        if horizon >= self._forgot_at + self._fine_ms:
            self._forgot_at = horizon
            self._folder.forget(horizon)
        summary = BatchSummary(
            partition=self.partition,
            high_event_time_ms=self.high_event_time_ms,
            state=state,
            fine=self._fine,
            coarse_only=self._coarse_only,
            late=self._late,
            consumed=self._consumed,
            duplicates=self._duplicates,
        )
        self._reset_batch()
        return summary

    @property
    def keys_held(self) -> int:
        """Per-key state its folder holds (open sessions or sign-up funnels)."""
        return self._folder.keys_held

    @property
    def remembered_ids(self) -> int:
        """How many event ids are held for duplicate detection."""
        return sum(len(ids) for ids in self._seen_ids.values())
