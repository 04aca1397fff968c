"""How playback events add to the partial aggregates of their window.

One method per event type adds to plain dict counters keyed by
`(window_start_ms, aggregate, *dims)`; names and dims are those of
flows/catalog.py. Pure Python, no Kafka: unit tests call these directly.

Concurrent streams are counted at each fine window's end: a session counts
at end `e` when it is playing (its start, or any playing event, is before
`e`), it has not stopped or errored before `e`, and its last event before
`e` is at most `session_timeout_ms` before `e`. A session already playing
when we start reading (heartbeats, no start seen) counts too: operations
would otherwise see concurrency climb from zero for hours after a restart. Each event therefore
adds the session to the ends it keeps it alive for; a stop or error takes it
back out of the ends after it. Sessions live in this partition's memory
(their events share a key, so a partition) and are freed when they end or
fall silent past the timeout — unlike bytewax's session windower, which
never frees state for unbounded keys (bytewax issue #577).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.partials import Partials
from flows.sketch import bucket_of
from flows.windows import WindowConfig

NEVER = 2**62

# A session in memory, one flat list to stay small: [country, device_type, end time or NEVER,
# then the window ends it is counted at, as inclusive ranges lo1, hi1, lo2, hi2, ... in order].
Session = list[Any]
_COUNTRY, _DEVICE, _END, _RANGES = 0, 1, 2, 3


class PlaybackFolder:
    """Folds one partition's playback events; holds its open sessions."""

    def __init__(self, windows: WindowConfig, session_timeout_ms: int) -> None:
        self._fine_ms = windows.fine_ms
        self._timeout_ms = session_timeout_ms
        self._sessions: dict[str, Session] = {}
        self._by_type: dict[str, Callable[[Any, int, Partials, Partials | None], None]] = {
            "play_attempt": self._play_attempt,
            "play_start": self._play_start,
            "start_failure": self._start_failure,
            "heartbeat": self._heartbeat,
            "rebuffer": self._rebuffer,
            "bitrate_change": self._bitrate_change,
            "pause": self._touch,
            "resume": self._touch,
            "play_error": self._play_error,
            "play_stop": self._play_stop,
        }

    def fold(self, event: Any, window: int, acc: Partials, fine: Partials | None) -> None:
        """Add `event` to `acc` at `window`; `fine` is the fine partials if the event is on time for its fine window."""
        self._by_type[event.event_type](event, window, acc, fine)

    @staticmethod
    def _add(acc: Partials, key: tuple[int | str, ...], value: int) -> None:
        acc[key] = acc.get(key, 0) + value

    def _play_attempt(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        self._add(acc, (w, "play_attempts", e.country, e.device_type), 1)

    def _play_start(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        country, device = e.country, e.device_type
        self._add(acc, (w, "stream_starts", country, device, e.cdn), 1)
        self._add(acc, (w, "startup_ms_sketch", country, device, bucket_of(e.startup_ms)), 1)
        self._add(acc, (w, "title_starts", country, device, e.title_id), 1)
        self._touch(e, w, acc, fine)

    def _start_failure(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        self._add(acc, (w, "start_failures", e.country, e.device_type, e.error_code), 1)

    def _heartbeat(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        # Most events are heartbeats: the additions are written out rather than calls to _add.
        country, device, played = e.country, e.device_type, e.played_ms
        key = (w, "played_ms", country, device)
        acc[key] = acc.get(key, 0) + played
        key = (w, "heartbeat_played_ms", country, device)
        acc[key] = acc.get(key, 0) + played
        key = (w, "bitrate_x_played_ms", country, device)
        acc[key] = acc.get(key, 0) + e.bitrate_kbps * played
        self._touch(e, w, acc, fine)

    def _rebuffer(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        self._add(acc, (w, "rebuffer_ms", e.country, e.device_type), e.rebuffer_ms)
        self._add(acc, (w, "rebuffers", e.country, e.device_type), 1)
        self._touch(e, w, acc, fine)

    def _bitrate_change(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        if e.bitrate_kbps < e.previous_bitrate_kbps:
            self._add(acc, (w, "bitrate_downshifts", e.country, e.device_type), 1)
        self._touch(e, w, acc, fine)

    def _play_error(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        self._add(acc, (w, "playback_errors", e.country, e.device_type, e.error_code), 1)
        self._end(e, fine)

    def _play_stop(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        self._add(acc, (w, "played_ms", e.country, e.device_type), e.played_ms)
        self._end(e, fine)

    def _touch(self, e: Any, w: int, acc: Partials, fine: Partials | None) -> None:
        """Count the session at the window ends this event keeps it alive for (not yet counted)."""
        if fine is None:
            return  # late for its fine window: the ends it would cover are being closed
        session = self._sessions.get(e.session_id)
        if session is None:
            session = self._sessions[e.session_id] = [e.country, e.device_type, NEVER]
        t, step = e.event_time_ms, self._fine_ms
        lo = t - t % step + step
        hi = min(t + self._timeout_ms, session[_END])
        hi -= hi % step
        if hi < lo:
            return
        if len(session) == _RANGES + 2 and session[_RANGES] <= lo <= session[_RANGES + 1] + step:
            # The common case, an in-order heartbeat: extend the one counted range forwards.
            counted_to = session[_RANGES + 1]
            if hi > counted_to:
                country, device = session[_COUNTRY], session[_DEVICE]
                for end in range(counted_to + step, hi + 1, step):
                    key = (end - step, "concurrent_streams", country, device)
                    fine[key] = fine.get(key, 0) + 1
                session[_RANGES + 1] = hi
            return
        counted = session[_RANGES:]
        new_ranges: list[int] = []
        cursor = lo
        for i in range(0, len(counted), 2):
            c_lo, c_hi = counted[i], counted[i + 1]
            if c_hi < cursor or c_lo > hi:
                continue
            self._count_ends(fine, session, cursor, min(hi, c_lo - step), 1)
            cursor = max(cursor, c_hi + step)
        self._count_ends(fine, session, cursor, hi, 1)
        # Merge [lo, hi] into the counted ranges.
        for i in range(0, len(counted), 2):
            c_lo, c_hi = counted[i], counted[i + 1]
            if c_hi + step < lo or c_lo > hi + step:
                new_ranges += (c_lo, c_hi)
            else:
                lo, hi = min(lo, c_lo), max(hi, c_hi)
        new_ranges += (lo, hi)
        session[_RANGES:] = new_ranges if len(new_ranges) == 2 else _sorted_pairs(new_ranges)

    def _count_ends(self, fine: Partials, session: Session, lo: int, hi: int, delta: int) -> None:
        step = self._fine_ms
        country, device = session[_COUNTRY], session[_DEVICE]
        for end in range(lo, hi + 1, step):
            key = (end - step, "concurrent_streams", country, device)
            fine[key] = fine.get(key, 0) + delta

    def _end(self, e: Any, fine: Partials | None) -> None:
        """The session stopped or errored at t: it no longer counts at window ends after t."""
        session = self._sessions.get(e.session_id)
        t = e.event_time_ms
        if session is None:
            # Remember it ended, so a straggler delivered after the stop cannot reopen it.
            self._sessions[e.session_id] = [e.country, e.device_type, t]
            return
        session[_END] = min(session[_END], t)
        counted = session[_RANGES:]
        kept: list[int] = []
        for i in range(0, len(counted), 2):
            c_lo, c_hi = counted[i], counted[i + 1]
            if c_hi <= t:
                kept += (c_lo, c_hi)
                continue
            first_after = max(c_lo, t - t % self._fine_ms + self._fine_ms)
            if fine is not None:
                self._count_ends(fine, session, first_after, c_hi, -1)
            if c_lo <= t:
                kept += (c_lo, first_after - self._fine_ms)
        session[_RANGES:] = kept

    def forget(self, horizon_ms: int) -> None:
        """Free sessions that can no longer count: ended, or last counted, before `horizon_ms`."""
        sessions = self._sessions
        stale = [s for s, state in sessions.items() if state[_END] < horizon_ms or _last_counted(state) < horizon_ms]
        for session_id in stale:
            del sessions[session_id]

    @property
    def open_sessions(self) -> int:
        """Sessions held in memory."""
        return len(self._sessions)

    keys_held = open_sessions


class StreamStartsFolder:
    """Counts stream starts only: the like-for-like configuration of the benchmarks (`--metric-set stream_starts`)."""

    def fold(self, event: Any, window: int, acc: Partials, fine: Partials | None) -> None:
        """Count `event` if it is a play_start."""
        if event.event_type == "play_start":
            key = (window, "stream_starts", event.country, event.device_type, event.cdn)
            acc[key] = acc.get(key, 0) + 1

    def forget(self, horizon_ms: int) -> None:
        """Nothing is held per key."""

    keys_held = 0


def _last_counted(session: Session) -> int:
    if len(session) > _RANGES:
        return int(session[-1])
    # Known only from its stop/error (kept so a straggler cannot reopen it): as old as its end.
    return int(session[_END]) if session[_END] != NEVER else -1


def _sorted_pairs(flat: list[int]) -> list[int]:
    """`flat` holds disjoint ranges lo, hi, ...; return them ordered by lo."""
    pairs = sorted(zip(flat[0::2], flat[1::2], strict=True))
    return [x for pair in pairs for x in pair]
