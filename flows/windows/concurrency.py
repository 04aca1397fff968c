"""Concurrent streams in the window store: the sessions open at each fine window's end, from changes.

The playback fold sends concurrent streams as changes at fine window ends
(flows/fold/playback.py); a window's value is the sum of every change up to
its end. Changes of windows already final are summed in a running base, and
the open fine windows' values are recomputed from it when a change arrives.
A coarse window takes the value at the end of its last fine window.

A fine window with no data of its own can still end with sessions open, so
it is filled in, but only up to the session timeout after the last window
with data: a session counts at an end only within the timeout after one of
its events, so past that every session has timed out. The running sum alone
cannot tell, since a session's -1 is sent only once its last end has closed
on its partition: filling in while it is nonzero made a gap in event time (a
device clock a month ahead, a topic resumed after a holiday) cost a window
per fine step of the gap. Work and memory follow the windows with data.

`ConcurrencyBook` is a base of `WindowStore` rather than an object of its
own so that the store's snapshot state (bytewax recovery) keeps its layout:
stores snapshotted before this module existed resume as they are.
"""

from __future__ import annotations

from flows.windows.window import Window, set_value

__all__ = ["CLEAN", "CONCURRENT", "ConcurrencyBook"]

CONCURRENT = "concurrent_streams"
CLEAN = 2**62  # no concurrency change since the last publish


class ConcurrencyBook:
    """The concurrency bookkeeping of the window store: changes in, concurrent streams of each window out.

    The store owns the open windows; this base reads and fills in its fine ones and sets the coarse windows
    their last fine window ends.
    """

    # The store's, read here.
    _open: dict[tuple[str, int], Window]
    _sizes: dict[str, int]
    _fine: str
    _coarse: str
    _coarse_ms: int
    # The playback fold's session timeout: how far after a window with data windows are filled in.
    session_timeout_ms: int
    # Sum of the concurrency changes of fine windows already final, and the first window changed since.
    _concurrency_base: dict[tuple[str, ...], int]
    _concurrency_dirty_from: int
    _fine_settled_to: int | None  # the first fine window start not yet final
    # The start of the newest fine window with data among those already final (or changed once final).
    _last_final_data: int | None

    def _init_concurrency(self, session_timeout_ms: int) -> None:
        self._concurrency_base = {}
        self._concurrency_dirty_from = CLEAN
        self._fine_settled_to = None
        self.session_timeout_ms = session_timeout_ms
        self._last_final_data = None

    def _is_final(self, resolution: str, start: int) -> bool:
        raise NotImplementedError

    def _open_window(self, resolution: str, start: int) -> Window | None:
        raise NotImplementedError

    def _window(self, resolution: str, start: int) -> Window:
        raise NotImplementedError

    def _data_in_final(self, start: int) -> None:
        """Data arrived for a fine window already final: sessions may be open a timeout after it."""
        self._last_final_data = max(start, self._last_final_data or start)

    def _change_concurrency(self, start: int, dims: tuple[str, ...], change: int) -> None:
        window = self._open_window(self._fine, start)
        if window is None:
            # Only possible after a partition was idle: the final windows keep their value, later ones change.
            self._data_in_final(start)
            changes, start = self._concurrency_base, -1
        else:
            changes = window.concurrency_change
        changes[dims] = changes.get(dims, 0) + change
        self._concurrency_dirty_from = min(self._concurrency_dirty_from, start)

    def _fine_window_opened(self, start: int) -> None:
        # Its concurrent streams are those open at its end so far: computed at the next publish.
        self._concurrency_dirty_from = min(self._concurrency_dirty_from, start)

    def _fine_window_final(self, start: int, window: Window) -> None:
        """Fold a fine window that just closed into the running base."""
        base = self._concurrency_base
        for dims, change in window.concurrency_change.items():
            base[dims] = base.get(dims, 0) + change
        self._fine_settled_to = max(self._fine_settled_to or 0, start + self._sizes[self._fine])
        if window.has_data:
            self._data_in_final(start)

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
                    window = self._open[(fine, missing)] = Window(has_data=False)
                    self._set_concurrency(missing, window, dict(value))
            window = self._open[(fine, start)]
            for dims, change in window.concurrency_change.items():
                running[dims] = running.get(dims, 0) + change
            if window.has_data:
                reach = max(reach, start + timeout)
            cursor = start + fine_ms
            if start >= dirty_from:
                self._set_concurrency(start, window, {dims: count for dims, count in running.items() if count})

    def _set_concurrency(self, start: int, window: Window, value: dict[tuple[str, ...], int]) -> None:
        """Set a fine window's concurrent streams, and its coarse window's if it is the last fine one of it."""
        set_value(window, CONCURRENT, value)
        end = start + self._sizes[self._fine]
        coarse_ms = self._coarse_ms
        if end % coarse_ms == 0:
            coarse = self._open.get((self._coarse, end - coarse_ms))
            if coarse is None and value and not self._is_final(self._coarse, end - coarse_ms):
                coarse = self._window(self._coarse, end - coarse_ms)
            if coarse is not None:
                set_value(coarse, CONCURRENT, value)
