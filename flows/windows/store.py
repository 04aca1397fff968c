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

Concurrent streams arrive as changes at fine window ends
(flows/fold/playback.py); a window's value is the sum of every change up
to its end. Changes of windows already final are summed in a running base,
and the open fine windows' values are recomputed from it when a change
arrives. A coarse window takes the value at the end of its last fine window.

A fine window with no data of its own can still end with sessions open, so
it is filled in — but only up to the session timeout after the last window
with data: a session counts at an end only within the timeout after one of
its events, so past that every session has timed out. The running sum alone
cannot tell, since a session's -1 is sent only once its last end has closed
on its partition: filling in while it is nonzero made a gap in event time (a
device clock a month ahead, a topic resumed after a holiday) cost a window
per fine step of the gap. Work and memory follow the windows with data.
A window filled in while a partition runs ahead may count sessions whose -1
is still to come, so a window once written is written again when it changes,
and final, even if nothing is left in it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flows.partials import CONCURRENCY_CHANGE, BatchSummary, RowLayout, expand_rows
from flows.sources.reader_config import ReaderConfig
from flows.windows.catalog import AT_WINDOW_END
from settings.windows import WindowConfig, resolution_name

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
    # Fine windows only: the change in open sessions at this window's end, per (country, device_type).
    concurrency_change: dict[tuple[str, ...], int] = field(default_factory=dict)
    # Row-counted aggregates, per row layout then (country, device_type); expanded into `values` on publish.
    rows: dict[int, dict[tuple[str, str], list[int]]] = field(default_factory=dict)
    rows_changed: bool = False
    # False for a fine window opened only to hold the sessions open at its end (filled in): no data of its own.
    has_data: bool = True
    # Written at least once: once emptied (its sessions' ends came in), it is written again, else what was written
    # stays (partial, with sessions that were not open).
    published: bool = False

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # A window snapshotted by an earlier version lacks the fields added since: the defaults that fill in and
        # write the most, so a restart from its recovery directory misses nothing.
        self.has_data, self.published = True, True
        for name, value in state[1].items():
            setattr(self, name, value)


@dataclass(frozen=True, slots=True)
class _LayoutInfo:
    index: int
    concurrency_slot: int  # -1: none
    event_slots: tuple[tuple[int, str], ...]  # (slot, event type) of the `events` counts, to count late ones


CONCURRENT = "concurrent_streams"
CLEAN = 2**62  # no concurrency change since the last publish


# How long the late counts of a closed window are remembered (in event time), so
# that a later straggler re-publishes an absolute count rather than an increment.
LATE_MEMORY_MS = 3_600_000


class WindowStore:
    """Merges batch summaries and decides which windows to publish, partial or final."""

    def __init__(
        self,
        windows: WindowConfig,
        partitions: Iterable[str],
        session_timeout_ms: int = ReaderConfig.session_timeout_ms,
    ) -> None:
        """`partitions` are every partition that will report: one that has not yet holds the watermark.

        `session_timeout_ms` is the playback fold's: how long after the last window with data sessions may
        still be open, so how far windows without data of their own are filled in.
        """
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
        self.late_by_resolution: dict[str, int] = {}
        self.duplicates = 0
        # Sum of the concurrency changes of fine windows already final, and the first window changed since.
        self._concurrency_base: dict[tuple[str, ...], int] = {}
        self._concurrency_dirty_from = CLEAN
        self._fine_settled_to: int | None = None  # the first fine window start not yet final
        # The playback fold's session timeout: how far after a window with data windows are filled in.
        self.session_timeout_ms = session_timeout_ms
        # The start of the newest fine window with data among those already final (or changed once final).
        self._last_final_data: int | None = None
        self._layouts: dict[RowLayout, _LayoutInfo] = {}
        self._layout_list: list[RowLayout] = []

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "session_timeout_ms" not in state:
            # Snapshotted by an earlier version, which filled in windows as far as sessions could be open: treat
            # the newest final window as having data (the flow sets the configured timeout when it resumes).
            self.session_timeout_ms = ReaderConfig.session_timeout_ms
            settled = self._fine_settled_to
            self._last_final_data = None if settled is None else settled - self._sizes[self._fine]

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
            if aggregate == CONCURRENCY_CHANGE:
                self._change_concurrency(start, dims, value)
                continue
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
        if summary.fine_rows or summary.coarse_rows:
            self._merge_rows(summary)

    def _layout_info(self, layout: RowLayout) -> _LayoutInfo:
        info = self._layouts.get(layout)
        if info is None:
            info = self._layouts[layout] = _LayoutInfo(
                index=len(self._layout_list),
                concurrency_slot=next(
                    (i for i, entries in enumerate(layout) if any(a == CONCURRENCY_CHANGE for a, _ in entries)), -1
                ),
                event_slots=tuple(
                    (i, extra[0]) for i, entries in enumerate(layout) for a, extra in entries if a == "events"
                ),
            )
            self._layout_list.append(layout)
        return info

    def _merge_rows(self, summary: BatchSummary) -> None:
        info = self._layout_info(summary.layout)
        concurrency_slot = info.concurrency_slot
        coarse_ms = self._coarse_ms
        # Rows come grouped by window: find each window's rows (None: already final) once per run of rows.
        current = -1
        fine_rows: dict[tuple[str, str], list[int]] | None = None
        coarse_rows: dict[tuple[str, str], list[int]] | None = None
        for (start, country, device), row in summary.fine_rows.items():
            if concurrency_slot >= 0 and row[concurrency_slot]:
                self._change_concurrency(start, (country, device), row[concurrency_slot])
                row[concurrency_slot] = 0
                if not any(row):
                    continue  # a row only for a session's -1 or +1 at a later window's end
            if start != current:
                current = start
                fine_rows = self._rows_of(self._fine, start, info)
                coarse_rows = self._rows_of(self._coarse, start - start % coarse_ms, info)
            dims = (country, device)
            if fine_rows is None:
                # Its events may keep sessions open past windows not final yet: they are filled in from here.
                self._last_final_data = max(start, self._last_final_data or start)
                self._count_late_row(self._fine, start, info, row)
            else:
                _add_row(fine_rows, dims, row)
            if coarse_rows is None:
                self._count_late_row(self._coarse, start - start % coarse_ms, info, row)
            else:
                _add_row(coarse_rows, dims, list(row))
        current = -1
        for (start, country, device), row in summary.coarse_rows.items():
            if start != current:
                current = start
                coarse_rows = self._rows_of(self._coarse, start, info)
            if coarse_rows is None:
                self._count_late_row(self._coarse, start, info, row)
            else:
                _add_row(coarse_rows, (country, device), row)

    def _rows_of(self, resolution: str, start: int, info: _LayoutInfo) -> dict[tuple[str, str], list[int]] | None:
        """The rows of one layout in an open window, marked changed; None if the window is already final."""
        window = self._open_window(resolution, start)
        if window is None:
            return None
        window.rows_changed = True
        window.dirty = True
        rows = window.rows.get(info.index)
        if rows is None:
            rows = window.rows[info.index] = {}
        return rows

    def _count_late_row(self, resolution: str, start: int, info: _LayoutInfo, row: list[int]) -> None:
        # Only possible after a partition was idle: its events are late here, never added.
        for slot, event_type in info.event_slots:
            if row[slot]:
                self._count_late(resolution, start, event_type, row[slot])

    def _change_concurrency(self, start: int, dims: tuple[str, ...], change: int) -> None:
        window = self._open_window(self._fine, start)
        if window is None:
            # Only possible after a partition was idle: the final windows keep their value, later ones change.
            self._last_final_data = max(start, self._last_final_data or start)
            changes, start = self._concurrency_base, -1
        else:
            changes = window.concurrency_change
        changes[dims] = changes.get(dims, 0) + change
        self._concurrency_dirty_from = min(self._concurrency_dirty_from, start)

    def _settle_concurrency(self) -> None:
        """Recompute concurrent streams of the open fine windows changed, and open those missing.

        A fine window without data of its own still has the sessions open at its end: from the first not yet
        final up to the newest open one, each is filled in if it has any and starts within the session timeout
        after the last window with data (module docstring). The work is per open window, not per fine step.
        """
        dirty_from, self._concurrency_dirty_from = self._concurrency_dirty_from, CLEAN
        fine, fine_ms, timeout = self._fine, self._sizes[self._fine], self.session_timeout_ms
        starts = sorted(start for resolution, start in self._open if resolution == fine)
        if not starts:
            return
        running = dict(self._concurrency_base)
        # Windows starting before `reach` may still end with a session open.
        reach = -1 if self._last_final_data is None else self._last_final_data + timeout
        cursor = starts[0] if self._fine_settled_to is None else min(starts[0], self._fine_settled_to)
        for start in starts:
            if cursor < start and cursor < reach and any(running.values()):
                value = {dims: count for dims, count in running.items() if count}
                for missing in range(cursor, min(start, reach), fine_ms):
                    window = self._open[(fine, missing)] = _Window(has_data=False)
                    self._set_concurrency(missing, window, dict(value))
            window = self._open[(fine, start)]
            for dims, change in window.concurrency_change.items():
                running[dims] = running.get(dims, 0) + change
            if window.has_data:
                reach = max(reach, start + timeout)
            cursor = start + fine_ms
            if start >= dirty_from:
                self._set_concurrency(start, window, {dims: count for dims, count in running.items() if count})

    def _set_concurrency(self, start: int, window: _Window, value: dict[tuple[str, ...], int]) -> None:
        """Set a fine window's concurrent streams, and its coarse window's if it is the last fine one of it."""
        _set_value(window, CONCURRENT, value)
        end = start + self._sizes[self._fine]
        coarse_ms = self._coarse_ms
        if end % coarse_ms == 0:
            coarse = self._open.get((self._coarse, end - coarse_ms))
            if coarse is None and value and not self._is_final(self._coarse, end - coarse_ms):
                coarse = self._window(self._coarse, end - coarse_ms)
            if coarse is not None:
                _set_value(coarse, CONCURRENT, value)

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
            if resolution == self._fine:
                # Its concurrent streams are those open at its end so far: computed at the next publish.
                self._concurrency_dirty_from = min(self._concurrency_dirty_from, start)
        else:
            window.has_data = True  # a window filled in has data now: sessions may be open a timeout after it
        return window

    def _count_late(self, resolution: str, start: int, event_type: str, count: int) -> None:
        self.late_events += count
        self.late_by_resolution[resolution] = self.late_by_resolution.get(resolution, 0) + count
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
        self._settle_concurrency()
        for window in self._open.values():
            if window.rows_changed:
                self._expand(window)
        updates: list[WindowUpdate] = []
        base = self._concurrency_base
        for (resolution, start), window in list(self._open.items()):
            final = self._is_final(resolution, start)
            # A window holding nothing (only concurrency changes adding up to no session) is not written, unless
            # it was before: what was written must be overwritten.
            if (final or window.dirty) and (window.values or window.published or (resolution, start) in self._late):
                updates.append(self._update(resolution, start, window, final))
            if final:
                del self._open[(resolution, start)]
                if resolution == self._fine:
                    for dims, change in window.concurrency_change.items():
                        base[dims] = base.get(dims, 0) + change
                    self._fine_settled_to = max(self._fine_settled_to or 0, start + self._sizes[resolution])
                    if window.has_data:
                        self._last_final_data = max(start, self._last_final_data or start)
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
            if window.values or window.published or (resolution, start) in self._late:
                updates.append(self._update(resolution, start, window, True))
        self._open.clear()
        return updates

    def _update(self, resolution: str, start: int, window: _Window | None, final: bool) -> WindowUpdate:
        if window is None:
            changes: WindowValues = {}
        else:
            values = window.values
            # Copies: the window keeps changing while the writer works on this update.
            changes = {aggregate: dict(values.get(aggregate, {})) for aggregate in window.changed}
            window.changed = set()
            window.dirty = False
            window.published = True
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

    def _expand(self, window: _Window) -> None:
        """Recompute the row-counted aggregates of `window` from its rows (they only ever grow)."""
        expanded: WindowValues = {}
        for index, rows in window.rows.items():
            expand_rows(rows, self._layout_list[index], expanded)
        window.values.update(expanded)
        window.changed.update(expanded)
        window.rows_changed = False

    @property
    def open_windows(self) -> int:
        """How many windows are open, all resolutions."""
        return len(self._open)


def _set_value(window: _Window, aggregate: str, values: dict[tuple[str, ...], int]) -> None:
    if window.values.get(aggregate, {}) == values:
        return
    if values:
        window.values[aggregate] = values
    else:
        window.values.pop(aggregate, None)
    window.changed.add(aggregate)
    window.dirty = True


def _add_row(rows: dict[tuple[str, str], list[int]], dims: tuple[str, str], row: list[int]) -> None:
    held = rows.get(dims)
    if held is None:
        rows[dims] = row
    else:
        held[:] = map(operator.add, held, row)


def _add_to(window: _Window, aggregate: str, dims: tuple[str, ...], value: int) -> None:
    values = window.values.get(aggregate)
    if values is None:
        values = window.values[aggregate] = {}
    values[dims] = values.get(dims, 0) + value
    window.changed.add(aggregate)
    window.dirty = True
