"""Ground truth of concurrent streams: the sessions open at each window end, by the flows' rule."""

from __future__ import annotations

from typing import Any

from schemas.contract import families

Event = dict[str, Any]

_PLAYBACK_TYPES = frozenset(families()["playback"].event_types)
# Events that show a session is playing: its start, or for a session already playing at a warm start, these.
_PLAYING_TYPES = frozenset({"play_start", "heartbeat", "rebuffer", "bitrate_change", "pause", "resume"})


class SessionConcurrency:
    """Open sessions at each window end.

    A session is open at window end W when it is playing before W (its play_start, or for a session already
    playing when the run began, its first heartbeat, rebuffer, bitrate change, pause or resume), it has neither
    stopped nor errored before W, and its last event before W is at most the session timeout before W. This
    is the flows' rule (flows/fold/playback.py): a consumer that starts reading mid-stream counts the sessions
    it finds playing, so concurrency is right from the first window instead of climbing from zero.
    """

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        # session_id -> [open-run start, last event time, country, device_type, ended]
        self.open: dict[str, list[Any]] = {}
        self.runs: list[tuple[int, int, str, str]] = []  # (a, b, country, device): open at window ends in (a, b]

    def add(self, events: list[Event]) -> None:
        timeout = self.timeout_ms
        sessions = self.open
        runs = self.runs
        for ev in events:
            et = ev["event_type"]
            if et not in _PLAYBACK_TYPES:
                continue
            t = ev["event_time_ms"]
            sid = ev["session_id"]
            rec = sessions.get(sid)
            if rec is None:
                if et in _PLAYING_TYPES:
                    sessions[sid] = [t, t, ev["country"], ev["device_type"], False]
                elif et == "play_stop" or et == "play_error":
                    # Ended before anything showed it playing: it never counts.
                    sessions[sid] = [t, t, ev["country"], ev["device_type"], True]
                continue
            if rec[4]:
                continue
            if t - rec[1] > timeout:
                runs.append((rec[0], rec[1] + timeout, rec[2], rec[3]))
                rec[0] = t
                if et == "play_stop" or et == "play_error":
                    rec[4] = True  # timed out just before its end: no run after it
                    continue
            if et == "play_stop" or et == "play_error":
                runs.append((rec[0], t, rec[2], rec[3]))
                rec[4] = True
            rec[1] = t

    def windows(self, window_ms: int) -> dict[tuple[int, str, str], int]:
        """Open sessions per (window start, country, device_type), for windows whose end count is non-zero."""
        runs = list(self.runs)
        for a, last, country, device, ended in self.open.values():
            if not ended:
                runs.append((a, last + self.timeout_ms, country, device))
        diff: dict[tuple[str, str], dict[int, int]] = {}
        for a, b, country, device in runs:
            first_end = (a // window_ms + 1) * window_ms
            last_end = (b // window_ms) * window_ms
            if last_end < first_end:
                continue
            d = diff.setdefault((country, device), {})
            d[first_end] = d.get(first_end, 0) + 1
            d[last_end + window_ms] = d.get(last_end + window_ms, 0) - 1
        out: dict[tuple[int, str, str], int] = {}
        for (country, device), changes in diff.items():
            level = 0
            points = sorted(changes)
            for p, nxt in zip(points, [*points[1:], points[-1]], strict=True):
                level += changes[p]
                if level > 0:
                    for end in range(p, nxt, window_ms):
                        out[(end - window_ms, country, device)] = level
        return out
