"""How playback events add to the partial aggregates of their window.

One method per event type adds to plain dict counters keyed by
`(window_start_ms, aggregate, *dims)`; names and dims are those of
flows/catalog.py. Pure Python, no Kafka: unit tests call these directly.

Concurrent streams are counted at each fine window's end: a session counts
at end `e` when it has started, has not stopped or errored before `e`, and
has an event in the `session_timeout_ms` before `e`. Each event therefore
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

# A session in memory: [country, device_type, last window end counted, end time or NEVER].
Session = list[Any]


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
        country, device, played = e.country, e.device_type, e.played_ms
        self._add(acc, (w, "played_ms", country, device), played)
        self._add(acc, (w, "heartbeat_played_ms", country, device), played)
        self._add(acc, (w, "bitrate_x_played_ms", country, device), e.bitrate_kbps * played)
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
        """Keep the session counted at the window ends this event keeps it alive for."""
        if fine is None:
            return  # late for its fine window: the ends it would cover are being closed
        session = self._sessions.get(e.session_id)
        if session is None:
            session = self._sessions[e.session_id] = [e.country, e.device_type, 0, NEVER]
        t, step = e.event_time_ms, self._fine_ms
        first = max(t - t % step + step, session[2] + step)
        last = min(t + self._timeout_ms - 1, session[3])
        for end in range(first, last + 1, step):
            key = (end - step, "concurrent_streams", session[0], session[1])
            fine[key] = fine.get(key, 0) + 1
        if last >= first:
            session[2] = last - last % step
        # An event delivered before an earlier one (out of order) cannot move the counted ends back.

    def _end(self, e: Any, fine: Partials | None) -> None:
        session = self._sessions.get(e.session_id)
        if session is None:
            # Ended without our having seen it play (started before we began reading): remember it ended.
            t = e.event_time_ms
            self._sessions[e.session_id] = [e.country, e.device_type, t - t % self._fine_ms, t]
            return
        t, step = e.event_time_ms, self._fine_ms
        if fine is not None:
            # Ends after the stop were counted ahead by earlier events: take the session back out of them.
            for end in range(t - t % step + step, session[2] + 1, step):
                key = (end - step, "concurrent_streams", session[0], session[1])
                fine[key] = fine.get(key, 0) - 1
        session[2] = min(session[2], t - t % step)
        session[3] = t

    def forget(self, horizon_ms: int) -> None:
        """Free sessions that can no longer count: ended, or silent, before `horizon_ms`."""
        sessions = self._sessions
        for session_id in [s for s, state in sessions.items() if state[2] < horizon_ms or state[3] < horizon_ms]:
            del sessions[session_id]

    @property
    def open_sessions(self) -> int:
        """Sessions held in memory."""
        return len(self._sessions)
