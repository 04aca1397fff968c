"""How playback events add to the partial aggregates of their window.

Most additions go to the batch row of the event's (window, country,
device_type) (flows/partials.py); those with a further dimension (CDN,
error code, title, sketch bucket) to `(window, aggregate, *dims)` partials;
names and dims are those of flows/windows/catalog.py. Pure Python, no Kafka: unit
tests call these directly.

Concurrent streams are counted at each fine window's end: a session counts
at end `e` when it is playing (its start, or any playing event, is before
`e`), it has not stopped or errored before `e`, and its last event before
`e` is at most `session_timeout_ms` before `e`. A session already playing
when we start reading (heartbeats, no start seen) counts too: operations
would otherwise see concurrency climb from zero for hours after a restart.
So each session is counted over ranges of window ends, and what is sent is
the *change* at a range's first end (+1) and after its last (-1); the window
store adds the changes up in window order. A session playing on is one range
growing, and growing it costs nothing here: its -1 is sent only once its
last end has closed on the partition (`close`), or right away for the rare
out-of-order or stopped session. Every change lands at an end after the
event's own window, which is still open, so no change reaches a final
window. Sessions live in this partition's memory (their events share a key,
so a partition) and are freed when they end or fall silent past the
timeout — unlike bytewax's session windower, which never frees state for
unbounded keys (bytewax issue #577).
"""

from __future__ import annotations

from typing import Any

from xxhash import xxh3_64_intdigest

from flows.fold.event_ids import id_hash
from flows.fold.partition_aggregator import Handler
from flows.partials import CONCURRENCY_CHANGE, Partials, RowLayout, Rows
from flows.windows.sketch import bucket_of
from settings.windows import WindowConfig

NEVER = 2**62

EVENT_TYPES = (
    "play_attempt", "play_start", "start_failure", "heartbeat", "rebuffer",
    "bitrate_change", "pause", "resume", "play_error", "play_stop",
)  # fmt: skip
# Event types whose count is also an aggregate of its own (flows/windows/catalog.py), on the type's row slot.
_OWN_COUNT = {"play_attempt": "play_attempts", "rebuffer": "rebuffers", "pause": "pauses"}
# Row slots after one per event type.
PLAYED, HEARTBEAT_PLAYED, BITRATE_X_PLAYED, REBUFFER_MS, DOWNSHIFTS, CONCURRENCY = range(
    len(EVENT_TYPES), len(EVENT_TYPES) + 6
)
ROW_LAYOUT: RowLayout = (
    *(
        (("events", (t,)), *(((_OWN_COUNT[t], ()),) if t in _OWN_COUNT else ()))
        for t in EVENT_TYPES
    ),
    (("played_ms", ()),),
    (("heartbeat_played_ms", ()),),
    (("bitrate_x_played_ms", ()),),
    (("rebuffer_ms", ()),),
    (("bitrate_downshifts", ()),),
    ((CONCURRENCY_CHANGE, ()),),
)  # fmt: skip
WIDTH = len(ROW_LAYOUT)

# A session in memory takes one of two forms. Most sessions are playing on, counted over one range of
# window ends whose -1 is still to send, with no end seen: one int packs them (bit 0: the -1 is still to
# send; then the (country, device_type) index, the range's length and its last end, in windows). Any other
# session is a flat list: [country, device_type, end time or NEVER, whether the last range's -1 is still to
# send, then the window ends it is counted at, as inclusive ranges lo1, hi1, ... in order]. Every range but
# the last has both its changes sent. Sessions are keyed by a 60-bit hash of their id.
Session = list[Any]
_COUNTRY, _DEVICE, _END, _OPEN, _RANGES = 0, 1, 2, 3, 4
_DIMS_SHIFT, _DIMS_BITS = 1, 12
_SPAN_SHIFT, _SPAN_BITS = 13, 16
_HI_SHIFT = 29
_DIMS_MASK, _SPAN_MASK = (1 << _DIMS_BITS) - 1, (1 << _SPAN_BITS) - 1
_LOW_BITS = (1 << _SPAN_SHIFT) - 1  # open bit and dims index


class PlaybackFolder:
    """Folds one partition's playback events; holds its open sessions."""

    def __init__(self, windows: WindowConfig, session_timeout_ms: int) -> None:
        self.row_layout = ROW_LAYOUT
        self.event_slots = {t: i for i, t in enumerate(EVENT_TYPES)}
        self._step = windows.fine_ms
        self._lateness_ms = windows.allowed_lateness_ms
        self._timeout_ms = session_timeout_ms
        self._sessions: dict[int, int | Session] = {}
        # (country, device_type) <-> the index a packed session holds
        self._dims_index: dict[tuple[str, str], int] = {}
        self._dims: list[tuple[str, str]] = []
        self.handlers: dict[str, Handler] = {
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

    @property
    def session_timeout_ms(self) -> int:
        """How long after its last event a session stops counting as open."""
        return self._timeout_ms

    @staticmethod
    def _add(acc: Partials, key: tuple[int | str, ...], value: int) -> None:
        acc[key] = acc.get(key, 0) + value

    def _play_start(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        country, device = e.country, e.device_type
        self._add(acc, (w, "stream_starts", country, device, e.cdn), 1)
        self._add(acc, (w, "startup_ms_sketch", country, device, bucket_of(e.startup_ms)), 1)
        self._add(acc, (w, "title_starts", country, device, e.title_id), 1)
        self._touch(e, w, row, rows, acc, on_time)

    def _start_failure(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        self._add(acc, (w, "start_failures", e.country, e.device_type, e.error_code), 1)

    def _heartbeat(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        played = e.played_ms
        row[PLAYED] += played
        row[HEARTBEAT_PLAYED] += played
        row[BITRATE_X_PLAYED] += e.bitrate_kbps * played
        if on_time:
            self._touch(e, w, row, rows, acc, on_time)

    def _rebuffer(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        row[REBUFFER_MS] += e.rebuffer_ms
        self._touch(e, w, row, rows, acc, on_time)

    def _bitrate_change(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        if e.bitrate_kbps < e.previous_bitrate_kbps:
            row[DOWNSHIFTS] += 1
        self._touch(e, w, row, rows, acc, on_time)

    def _play_error(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        self._add(acc, (w, "playback_errors", e.country, e.device_type, e.error_code), 1)
        self._end(e, rows, on_time)

    def _play_stop(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        row[PLAYED] += e.played_ms
        self._end(e, rows, on_time)

    def _change(self, rows: Rows, session: Session, end: int, delta: int) -> None:
        """Send `delta` open sessions at window end `end`."""
        key = (end - self._step, session[_COUNTRY], session[_DEVICE])
        row = rows.get(key)
        if row is None:
            row = rows[key] = [0] * WIDTH
        row[CONCURRENCY] += delta

    def _unpack(self, packed: int) -> Session:
        step = self._step
        last = packed >> _HI_SHIFT
        span = (packed >> _SPAN_SHIFT) & _SPAN_MASK
        country, device = self._dims[(packed >> _DIMS_SHIFT) & _DIMS_MASK]
        return [country, device, NEVER, bool(packed & 1), (last - span) * step, last * step]

    def _store(self, key: int, session: Session) -> None:
        """Keep `session`, packed if it has the common form."""
        step = self._step
        if len(session) == _RANGES + 2 and session[_END] == NEVER:
            dims = (session[_COUNTRY], session[_DEVICE])
            index = self._dims_index.get(dims)
            if index is None and len(self._dims) <= _DIMS_MASK:
                index = self._dims_index[dims] = len(self._dims)
                self._dims.append(dims)
            lo, hi = session[_RANGES] // step, session[_RANGES + 1] // step
            if index is not None and hi - lo <= _SPAN_MASK:
                packed = (hi << _HI_SHIFT) | ((hi - lo) << _SPAN_SHIFT) | (index << _DIMS_SHIFT) | session[_OPEN]
                self._sessions[key] = packed
                return
        self._sessions[key] = session

    def _session(self, key: int) -> Session | None:
        session = self._sessions.get(key)
        if type(session) is int:
            return self._unpack(session)
        return session  # type: ignore[return-value]

    def _touch(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        """Count the session at the window ends this event keeps it alive for."""
        if not on_time:
            return  # late for its fine window: the ends it would cover are being closed
        t, step = e.event_time_ms, self._step
        key = xxh3_64_intdigest(e.session_id.encode()) >> 4  # id_hash, inlined: this runs for most events
        packed = self._sessions.get(key)
        if type(packed) is int and packed & 1:
            # Most events belong to a session playing on (packed): its range grows, nothing is sent.
            last = packed >> _HI_SHIFT
            span = (packed >> _SPAN_SHIFT) & _SPAN_MASK
            if last - span <= t // step + 1 <= last + 1:
                hi = (t + self._timeout_ms) // step
                if hi > last and span + hi - last <= _SPAN_MASK:
                    self._sessions[key] = (hi << _HI_SHIFT) | ((span + hi - last) << _SPAN_SHIFT) | (packed & _LOW_BITS)
                    return
                if hi <= last:
                    return
        lo = t - t % step + step
        session = self._session(key)
        if session is None:
            hi = t + self._timeout_ms
            hi -= hi % step
            if hi >= lo:
                session = [e.country, e.device_type, NEVER, True, lo, hi]
                self._change(rows, session, lo, 1)
                self._store(key, session)
            return
        hi = min(t + self._timeout_ms, session[_END])
        hi -= hi % step
        if hi < lo:
            return
        if session[_OPEN] and session[-2] <= lo <= session[-1] + step:
            if hi > session[-1]:
                session[-1] = hi
        else:
            self._count_range(rows, session, lo, hi)
        self._store(key, session)

    def _count_range(self, rows: Rows, session: Session, lo: int, hi: int) -> None:
        """The general case: count the session at the ends in [lo, hi] it is not counted at yet."""
        step = self._step
        self._close(rows, session)
        counted = session[_RANGES:]
        cursor = lo
        for i in range(0, len(counted), 2):
            c_lo, c_hi = counted[i], counted[i + 1]
            if c_hi < cursor or c_lo > hi:
                continue
            if cursor <= c_lo - step:
                self._change(rows, session, cursor, 1)
                self._change(rows, session, c_lo, -1)
            cursor = max(cursor, c_hi + step)
        if cursor <= hi:
            self._change(rows, session, cursor, 1)
            self._change(rows, session, hi + step, -1)
        # Merge [lo, hi] into the counted ranges.
        merged: list[int] = []
        for i in range(0, len(counted), 2):
            c_lo, c_hi = counted[i], counted[i + 1]
            if c_hi + step < lo or c_lo > hi + step:
                merged += (c_lo, c_hi)
            else:
                lo, hi = min(lo, c_lo), max(hi, c_hi)
        merged += (lo, hi)
        if len(merged) > 2:
            merged = _sorted_pairs(merged)
        session[_RANGES:] = merged
        if merged[-1] == hi:
            # The range just counted is the last one, so its end is still open here: let it grow for free again.
            self._change(rows, session, hi + step, 1)
            session[_OPEN] = True

    def _close(self, rows: Rows, session: Session) -> None:
        """Send the -1 after the last range, if it is still to send."""
        if session[_OPEN]:
            self._change(rows, session, session[-1] + self._step, -1)
            session[_OPEN] = False

    def _end(self, e: Any, rows: Rows, on_time: bool) -> None:
        """The session stopped or errored at t: it no longer counts at window ends after t."""
        key = id_hash(e.session_id)
        session = self._session(key)
        t = e.event_time_ms
        if session is None:
            # Remember it ended, so a straggler delivered after the stop cannot reopen it.
            self._sessions[key] = [e.country, e.device_type, t, False]
            return
        session[_END] = min(session[_END], t)
        self._sessions[key] = session
        if not on_time:
            return  # the ends after t are being closed: they keep their count
        step = self._step
        first_after = t - t % step + step
        self._close(rows, session)
        counted = session[_RANGES:]
        kept: list[int] = []
        for i in range(0, len(counted), 2):
            c_lo, c_hi = counted[i], counted[i + 1]
            if c_hi < first_after:
                kept += (c_lo, c_hi)
                continue
            cut = max(c_lo, first_after)
            self._change(rows, session, cut, -1)
            self._change(rows, session, c_hi + step, 1)
            if c_lo < first_after:
                kept += (c_lo, first_after - step)
        session[_RANGES:] = kept

    def close(self, high_ms: int, everything: bool, fine_rows: Rows) -> None:
        """Send the -1 of every session whose last counted end has closed on the partition (or of all)."""
        limit = high_ms - self._lateness_ms - self._step
        last_packed = NEVER if everything else limit // self._step
        closing = [
            key
            for key, s in self._sessions.items()
            if (s & 1 and s >> _HI_SHIFT <= last_packed if type(s) is int else _closes(s, everything, limit))
        ]
        for key in closing:
            session = self._session(key)
            assert session is not None
            self._close(fine_rows, session)
            self._store(key, session)

    def forget(self, horizon_ms: int) -> None:
        """Free sessions that can no longer count: ended, or last counted, before `horizon_ms`."""
        sessions = self._sessions
        last_packed = horizon_ms // self._step
        stale = [
            key
            for key, s in sessions.items()
            if (not s & 1 and s >> _HI_SHIFT < last_packed if type(s) is int else _stale(s, horizon_ms))
        ]
        for key in stale:
            del sessions[key]

    def snapshot(self) -> tuple[dict[int, int | Session], list[tuple[str, str]]]:
        """The open sessions, copied, and the (country, device_type) index packed sessions refer to."""
        return {key: s if type(s) is int else list(s) for key, s in self._sessions.items()}, list(self._dims)  # type: ignore[arg-type]

    def restore(self, state: tuple[dict[int, int | Session], list[tuple[str, str]]]) -> None:
        """Take back what `snapshot` returned."""
        self._sessions, dims = state
        self._dims = [tuple(d) for d in dims]  # type: ignore[misc]
        self._dims_index = {d: i for i, d in enumerate(self._dims)}

    @property
    def open_sessions(self) -> int:
        """Sessions held in memory."""
        return len(self._sessions)

    keys_held = open_sessions


class StreamStartsFolder:
    """Counts stream starts only: the like-for-like configuration of the benchmarks (`--metric-set stream_starts`)."""

    def __init__(self) -> None:
        self.row_layout: RowLayout = ()
        self.event_slots: dict[str, int] = {}
        self.handlers: dict[str, Handler] = {"play_start": self._play_start}

    @staticmethod
    def _play_start(e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        key = (w, "stream_starts", e.country, e.device_type, e.cdn)
        acc[key] = acc.get(key, 0) + 1

    def snapshot(self) -> None:
        """Nothing is held per key."""

    def restore(self, state: None) -> None:
        """Nothing is held per key."""

    def close(self, high_ms: int, everything: bool, fine_rows: Rows) -> None:
        """Nothing is held per key."""

    def forget(self, horizon_ms: int) -> None:
        """Nothing is held per key."""

    keys_held = 0


def _closes(session: Any, everything: bool, limit: int) -> bool:
    return bool(session[_OPEN]) and (everything or session[-1] <= limit)


def _stale(session: Any, horizon_ms: int) -> bool:
    last = session[-1] if len(session) > _RANGES else NEVER
    return not session[_OPEN] and (session[_END] < horizon_ms or last < horizon_ms)


def _sorted_pairs(flat: list[int]) -> list[int]:
    """`flat` holds disjoint ranges lo, hi, ...; return them ordered by lo."""
    pairs = sorted(zip(flat[0::2], flat[1::2], strict=True))
    return [x for pair in pairs for x in pair]
