"""The open windows of every resolution, merged from all partitions, and when they close.

The watermark is the slowest *active* partition's highest event time: a
partition that has caught up with its log (idle) or reached its end
(finished) does not hold the others back. It never moves backwards. A window
is final once the watermark passes its end plus the allowed lateness; until
then it is published repeatedly, marked partial, while it is near the live edge
(its end at most the allowed lateness plus one coarse window behind the newest
event time any partition has read). Further back, where only a catch-up, a
replay or a lagging partition keeps windows open, a window's changes wait for
its final write: a catch-up's backlog is written once, not at every publish by
every shard. Every partition is known
from the start, so one whose reader has not reported yet holds the watermark
at nothing rather than being ignored. A partial arriving for a
window that is already final (only possible after a partition was idle) is
counted as late, never added.

Concurrent streams arrive as changes at fine window ends and are summed in
window order (flows/windows/concurrency.py, a base of the store); fine
windows without data of their own are filled in where sessions may be open.
A window filled in while a partition runs ahead may count sessions whose -1
is still to come, so a window once written is written again when it changes,
and final, even if nothing is left in it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flows.partials import CONCURRENCY_CHANGE, BatchSummary, RowLayout, expand_rows
from flows.sources.reader_config import ReaderConfig
from flows.windows.catalog import AT_WINDOW_END
from flows.windows.concurrency import CONCURRENT, ConcurrencyBook
from flows.windows.window import ShardProgress, Window, WindowUpdate, WindowValues, add_row, add_to
from settings.windows import WindowConfig

__all__ = [
    "CONCURRENT",
    "FINISHED_MS",
    "LATE_MEMORY_MS",
    "ShardProgress",
    "WindowStore",
    "WindowUpdate",
    "WindowValues",
]

# The name snapshots taken before flows/windows/window.py existed pickled the window class under.
_Window = Window


@dataclass(slots=True)
class _Partition:
    high_event_time_ms: int
    state: str


@dataclass(frozen=True, slots=True)
class _LayoutInfo:
    index: int
    concurrency_slot: int  # -1: none
    event_slots: tuple[tuple[int, str], ...]  # (slot, event type) of the `events` counts, to count late ones


# How long the late counts of a closed window are remembered (in event time), so
# that a later straggler re-publishes an absolute count rather than an increment.
LATE_MEMORY_MS = 3_600_000
# The progress of a store whose input has ended: every window is final.
FINISHED_MS = 2**62


class WindowStore(ConcurrencyBook):
    """Merges batch summaries and decides which windows to publish, partial or final."""

    def __init__(
        self,
        windows: WindowConfig,
        partitions: Iterable[str],
        session_timeout_ms: int = ReaderConfig.session_timeout_ms,
        shard: int = 0,
        shards: int = 1,
    ) -> None:
        """`partitions` are every partition that will report: one that has not yet holds the watermark.

        `session_timeout_ms` is the playback fold's: how long after the last window with data sessions may
        still be open, so how far windows without data of their own are filled in.
        """
        self._sizes = windows.resolutions
        self._fine = windows.fine_name
        self._coarse = windows.coarse_name
        self._coarse_ms = windows.coarse_ms
        self._lateness_ms = windows.allowed_lateness_ms
        self._partitions: dict[str, _Partition] = {p: _Partition(-1, "active") for p in partitions}
        self._open: dict[tuple[str, int], Window] = {}
        self.watermark_ms = -1
        # Late events per window, open or closed; closed ones are kept LATE_MEMORY_MS.
        self._late: dict[tuple[str, int], dict[str, int]] = {}
        self._late_changed_after_final: set[tuple[str, int]] = set()
        self.late_events = 0
        self.late_by_resolution: dict[str, int] = {}
        self.duplicates = 0
        self._init_concurrency(session_timeout_ms)
        self._layouts: dict[RowLayout, _LayoutInfo] = {}
        self._layout_list: list[RowLayout] = []
        # Which shard of the cluster's window state this store is (flows/sharding.py), of how many.
        self.shard = shard
        self.shards = shards
        self._finished = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"shard": 0, "shards": 1, "_finished": False, **state})
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
        fine: Window | None = None
        coarse: Window | None = None
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
                add_to(fine, aggregate, dims, value)
            # A count at the window's end: the coarse window takes its last fine window's value.
            if ends_coarse or aggregate not in AT_WINDOW_END:
                if coarse is None:
                    self._add_to_final(self._coarse, coarse_start, aggregate, dims, value)
                else:
                    add_to(coarse, aggregate, dims, value)
        for key, value in summary.coarse_only.items():
            start = key[0]
            assert isinstance(start, int)
            aggregate, dims = key[1], key[2:]  # type: ignore[assignment]
            window = self._open_window(self._coarse, start)
            if window is None:
                self._add_to_final(self._coarse, start, aggregate, dims, value)
            else:
                add_to(window, aggregate, dims, value)
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
                self._data_in_final(start)
                self._count_late_row(self._fine, start, info, row)
            else:
                add_row(fine_rows, dims, row)
            if coarse_rows is None:
                self._count_late_row(self._coarse, start - start % coarse_ms, info, row)
            else:
                add_row(coarse_rows, dims, list(row))
        current = -1
        for (start, country, device), row in summary.coarse_rows.items():
            if start != current:
                current = start
                coarse_rows = self._rows_of(self._coarse, start, info)
            if coarse_rows is None:
                self._count_late_row(self._coarse, start, info, row)
            else:
                add_row(coarse_rows, (country, device), row)

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

    def _is_final(self, resolution: str, start: int) -> bool:
        return start + self._sizes[resolution] + self._lateness_ms <= self.watermark_ms

    def _open_window(self, resolution: str, start: int) -> Window | None:
        """The open window, opened if need be; None if it is already final."""
        if self._is_final(resolution, start):
            return None
        return self._window(resolution, start)

    def _add_to_final(self, resolution: str, start: int, aggregate: str, dims: tuple[str, ...], value: int) -> None:
        # Only possible after a partition was idle: its events are late here, never added.
        if aggregate == "events":
            self._count_late(resolution, start, dims[-1], value)

    def _window(self, resolution: str, start: int) -> Window:
        window = self._open.get((resolution, start))
        if window is None:
            window = self._open[(resolution, start)] = Window()
            if resolution == self._fine:
                self._fine_window_opened(start)
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

    def _live_edge_ms(self) -> int:
        """The newest event time any partition has reported."""
        return max((p.high_event_time_ms for p in self._partitions.values()), default=-1)

    def publish(self) -> list[WindowUpdate]:
        """Windows changed since the last call (partial) and windows that just closed (final)."""
        self._advance_watermark()
        self._settle_concurrency()
        updates: list[WindowUpdate] = []
        behind_edge_ms = self._live_edge_ms() - self._lateness_ms - self._coarse_ms
        for (resolution, start), window in list(self._open.items()):
            final = self._is_final(resolution, start)
            # A window far behind the newest event time is open only while a catch-up, a replay or a lagging
            # partition sweeps through it: its changes wait for its final write rather than being re-written at
            # every publish by every shard (the windows at the live edge are published as they change), and so
            # does recomputing its row-counted aggregates.
            at_edge = start + self._sizes[resolution] >= behind_edge_ms
            if window.rows_changed and (final or at_edge):
                self._expand(window)
            partial = window.dirty and at_edge
            # A window holding nothing (only concurrency changes adding up to no session) is not written, unless
            # it was before: what was written must be overwritten.
            if (final or partial) and (window.values or window.published or (resolution, start) in self._late):
                updates.append(self._update(resolution, start, window, final))
            if final:
                del self._open[(resolution, start)]
                if resolution == self._fine:
                    self._fine_window_final(start, window)
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
        # What publish() left open ends after the newest event time less the lateness: at the live edge, so
        # publish() has already expanded its rows.
        updates = self.publish()
        for (resolution, start), window in list(self._open.items()):
            if window.values or window.published or (resolution, start) in self._late:
                updates.append(self._update(resolution, start, window, True))
        self._open.clear()
        self._finished = True
        return updates

    def progress(self) -> ShardProgress:
        """This shard's progress after the last publish (or finish): which windows are final here."""
        final_through = FINISHED_MS if self._finished else self.watermark_ms - self._lateness_ms
        return ShardProgress(self.shard, self.shards, self.watermark_ms, final_through)

    def _update(self, resolution: str, start: int, window: Window | None, final: bool) -> WindowUpdate:
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
            shard=self.shard,
            shards=self.shards,
        )

    def _expand(self, window: Window) -> None:
        """Recompute the row-counted aggregates of `window` from its rows (they only ever grow).

        Only the aggregates whose values differ are marked changed: a window's rows change as a whole, but a batch
        adds to a few event types, and every aggregate marked changed is written to Redis and diffed for /metrics
        by every shard at every publish.
        """
        expanded: WindowValues = {}
        for index, rows in window.rows.items():
            expand_rows(rows, self._layout_list[index], expanded)
        values, changed = window.values, window.changed
        for aggregate, new in expanded.items():
            if values.get(aggregate) != new:
                values[aggregate] = new
                changed.add(aggregate)
        window.rows_changed = False

    @property
    def open_windows(self) -> int:
        """How many windows are open, all resolutions."""
        return len(self._open)
