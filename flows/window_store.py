"""The open windows of every resolution, merged from all partitions, and when they close.

The watermark is the slowest *active* partition's highest event time: a
partition that has caught up with its log (idle) or reached its end
(finished) does not hold the others back. It never moves backwards. A window
is final once the watermark passes its end plus the allowed lateness; until
then it is published repeatedly, marked partial. Every partition is known
from the start, so one whose reader has not reported yet holds the watermark
at nothing rather than being ignored. A partial arriving for a
window that is already final (only possible after a partition was idle) is
counted as late, never added.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flows.catalog import AT_WINDOW_END
from flows.partials import BatchSummary
from flows.windows import WindowConfig, resolution_name

# aggregate -> (dims...) -> value, within one window
WindowValues = dict[str, dict[tuple[str, ...], int]]


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """What changed in one window since its last publish, as absolute values (idempotent to write)."""

    resolution: str
    window_start_ms: int
    window_end_ms: int
    final: bool
    # The aggregates that changed since this window was last published, each complete: what a writer writes.
    changes: WindowValues
    # On the final update only: the window's complete values (what /metrics exports).
    complete: WindowValues | None
    late: dict[str, int]
    watermark_ms: int


@dataclass(slots=True)
class _Partition:
    high_event_time_ms: int
    state: str


@dataclass(slots=True)
class _Window:
    values: WindowValues = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    dirty: bool = True


# How long the late counts of a closed window are remembered (in event time), so
# that a later straggler re-publishes an absolute count rather than an increment.
LATE_MEMORY_MS = 3_600_000


class WindowStore:
    """Merges batch summaries and decides which windows to publish, partial or final."""

    def __init__(self, windows: WindowConfig, partitions: Iterable[str]) -> None:
        """`partitions` are every partition that will report: one that has not yet holds the watermark."""
        self._sizes = windows.resolutions
        self._fine = resolution_name(windows.fine_ms)
        self._coarse = resolution_name(windows.coarse_ms)
        self._coarse_ms = windows.coarse_ms
        self._lateness_ms = windows.allowed_lateness_ms
        self._partitions: dict[str, _Partition] = {p: _Partition(-1, "active") for p in partitions}
        self._open: dict[tuple[str, int], _Window] = {}
        self.watermark_ms = -1
        # Late events per window, open or closed; closed ones are kept LATE_MEMORY_MS.
        self._late: dict[tuple[str, int], dict[str, int]] = {}
        self._late_changed_after_final: set[tuple[str, int]] = set()
        self.late_events = 0
        self.duplicates = 0

    def expect(self, partitions: Iterable[str]) -> None:
        """Add partitions that appeared since this store was snapshotted (the topic grew)."""
        for partition in partitions:
            self._partitions.setdefault(partition, _Partition(-1, "active"))

    def merge(self, summary: BatchSummary) -> None:
        """Add one partition batch's partials and progress."""
        self._partitions[summary.partition] = _Partition(summary.high_event_time_ms, summary.state)
        self.duplicates += summary.duplicates
        fine_ms, coarse_ms = self._sizes[self._fine], self._coarse_ms
        # Keys come grouped by window (a batch covers a few seconds): look each window up once per run.
        current_start: object = None
        fine: _Window | None = None
        coarse: _Window | None = None
        coarse_start = 0
        ends_coarse = False
        for key, value in summary.fine.items():
            start = key[0]
            assert isinstance(start, int)
            aggregate: str = key[1]  # type: ignore[assignment]
            dims: tuple[str, ...] = key[2:]  # type: ignore[assignment]  # dimension values are strings
            if start != current_start:
                current_start = start
                coarse_start = start - start % coarse_ms
                fine = self._open_window(self._fine, start)
                coarse = self._open_window(self._coarse, coarse_start)
                ends_coarse = start + fine_ms == coarse_start + coarse_ms
            if fine is None:
                self._add_to_final(self._fine, start, aggregate, dims, value)
            else:
                _add_to(fine, aggregate, dims, value)
            # A count at the window's end: the coarse window takes its last fine window's value.
            if ends_coarse or aggregate not in AT_WINDOW_END:
                if coarse is None:
                    self._add_to_final(self._coarse, coarse_start, aggregate, dims, value)
                else:
                    _add_to(coarse, aggregate, dims, value)
        for key, value in summary.coarse_only.items():
            start = key[0]
            assert isinstance(start, int)
            aggregate, dims = key[1], key[2:]  # type: ignore[assignment]
            window = self._open_window(self._coarse, start)
            if window is None:
                self._add_to_final(self._coarse, start, aggregate, dims, value)
            else:
                _add_to(window, aggregate, dims, value)
        for (resolution, start, event_type), count in summary.late.items():
            self._count_late(resolution, start, event_type, count)

    def _is_final(self, resolution: str, start: int) -> bool:
        return start + self._sizes[resolution] + self._lateness_ms <= self.watermark_ms

    def _open_window(self, resolution: str, start: int) -> _Window | None:
        """The open window, opened if need be; None if it is already final."""
        if self._is_final(resolution, start):
            return None
        return self._window(resolution, start)

    def _add_to_final(self, resolution: str, start: int, aggregate: str, dims: tuple[str, ...], value: int) -> None:
        # Only possible after a partition was idle: its events are late here, never added.
        if aggregate == "events":
            self._count_late(resolution, start, dims[-1], value)

    def _window(self, resolution: str, start: int) -> _Window:
        window = self._open.get((resolution, start))
        if window is None:
            window = self._open[(resolution, start)] = _Window()
        return window

    def _count_late(self, resolution: str, start: int, event_type: str, count: int) -> None:
        self.late_events += count
        late = self._late.setdefault((resolution, start), {})
        late[event_type] = late.get(event_type, 0) + count
        if self._is_final(resolution, start):
            self._late_changed_after_final.add((resolution, start))
        else:
            # Late on its partition but the window is still open here: publish its late count with it.
            self._window(resolution, start).dirty = True

    def _advance_watermark(self) -> None:
        active = [p.high_event_time_ms for p in self._partitions.values() if p.state == "active"]
        if active:
            candidate = min(active)
        elif self._partitions:
            candidate = max(p.high_event_time_ms for p in self._partitions.values())
        else:
            return
        self.watermark_ms = max(self.watermark_ms, candidate)

    def publish(self) -> list[WindowUpdate]:
        """Windows changed since the last call (partial) and windows that just closed (final)."""
        self._advance_watermark()
        updates: list[WindowUpdate] = []
        for (resolution, start), window in list(self._open.items()):
            final = self._is_final(resolution, start)
            if final or window.dirty:
                updates.append(self._update(resolution, start, window, final))
            if final:
                del self._open[(resolution, start)]
        for resolution, start in sorted(self._late_changed_after_final):
            if (resolution, start) not in self._open:
                updates.append(self._update(resolution, start, None, True))
        self._late_changed_after_final.clear()
        forget_before = self.watermark_ms - LATE_MEMORY_MS
        for resolution, start in [k for k in self._late if k[1] < forget_before and k not in self._open]:
            del self._late[(resolution, start)]
        return updates

    def finish(self) -> list[WindowUpdate]:
        """Close every window: the input has ended."""
        self.watermark_ms = max([self.watermark_ms, *(p.high_event_time_ms for p in self._partitions.values())])
        updates = self.publish()
        for (resolution, start), window in list(self._open.items()):
            updates.append(self._update(resolution, start, window, True))
        self._open.clear()
        return updates

    def _update(self, resolution: str, start: int, window: _Window | None, final: bool) -> WindowUpdate:
        if window is None:
            changes: WindowValues = {}
        else:
            values = window.values
            # Copies: the window keeps changing while the writer works on this update.
            changes = {aggregate: dict(values[aggregate]) for aggregate in window.changed}
            window.changed = set()
            window.dirty = False
        return WindowUpdate(
            resolution=resolution,
            window_start_ms=start,
            window_end_ms=start + self._sizes[resolution],
            final=final,
            changes=changes,
            complete=window.values if final and window is not None else None,
            late=dict(self._late.get((resolution, start), {})),
            watermark_ms=self.watermark_ms,
        )

    @property
    def open_windows(self) -> int:
        """How many windows are open, all resolutions."""
        return len(self._open)


def _add_to(window: _Window, aggregate: str, dims: tuple[str, ...], value: int) -> None:
    values = window.values.get(aggregate)
    if values is None:
        values = window.values[aggregate] = {}
    values[dims] = values.get(dims, 0) + value
    window.changed.add(aggregate)
    window.dirty = True
