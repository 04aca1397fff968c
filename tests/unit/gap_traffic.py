"""Playback traffic with a gap in event time, and its concurrent streams counted by brute force.

Shared by tests/unit/flows/fold/test_event_time_gaps.py and tests/integration/test_event_time_gaps.py.
"""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

TIMEOUT_MS = 60_000
PLAYING = {"play_start", "heartbeat", "rebuffer", "pause", "resume"}
PHASE_MS = 20 * 60_000  # the traffic before the gap


def playback_event(session: str, i: int, kind: str, t: int, country: str, device: str) -> SimpleNamespace:
    """A valid playback event (event contract v1) of `session`, as the decoder would make it."""
    extra: dict[str, object] = {}
    if kind == "play_start":
        extra = {"startup_ms": 800, "cdn": "c1"}
    elif kind == "heartbeat":
        extra = {"played_ms": 30_000, "bitrate_kbps": 3000}
    elif kind == "rebuffer":
        extra = {"rebuffer_ms": 700}
    elif kind == "play_stop":
        extra = {"played_ms": 1000}
    return SimpleNamespace(
        event_id=f"{session}-{i}", event_type=kind, event_time_ms=t, session_id=session, account_id="a",
        title_id="t", country=country, device_type=device, schema_version=1, **extra,
    )  # fmt: skip


def gap_traffic(
    gap_ms: int,
    base_ms: int,
    partitions: int = 2,
    sessions: int = 300,
    countries: tuple[str, ...] = ("BR", "US", "DE"),
    devices: tuple[str, ...] = ("tv",),
    seed: int = 11,
    ahead: int | None = None,
) -> list[list[SimpleNamespace]]:
    """Per partition, in event-time order: 20 min of sessions, most still playing at its end, then 5 min `gap_ms` later.

    After the gap, half the sessions that were playing before it go on (same id, so same partition), with as
    many new ones: a device clock jumping ahead, a topic resumed after a pause. With `ahead`, that partition
    holds only new sessions after the gap, so its reader reaches the gap long before the others do.
    """
    rng = random.Random(seed)
    events: list[list[SimpleNamespace]] = [[] for _ in range(partitions)]
    before = [p for p in range(partitions) if p != ahead]
    playing_at_end: list[tuple[int, str, str, str]] = []
    for s in range(sessions):
        sid, country, device = f"s{s}", rng.choice(countries), rng.choice(devices)
        partition = before[s % len(before)]
        t = base_ms + rng.randrange(0, PHASE_MS * 3 // 4)
        kinds = ["play_attempt", "play_start"]
        stop = rng.random() < 0.3
        beats = rng.randrange(1, 12) if stop else (base_ms + PHASE_MS - t) // 30_000
        kinds += [rng.choice(["heartbeat", "heartbeat", "rebuffer", "pause", "resume"]) for _ in range(beats)]
        if stop:
            kinds.append("play_stop")
        for i, kind in enumerate(kinds):
            events[partition].append(playback_event(sid, i, kind, t, country, device))
            t += 30_000 if i else rng.randrange(200, 3000)
        if not stop:
            playing_at_end.append((partition, sid, country, device))
    later = base_ms + PHASE_MS + gap_ms
    resumed = [(p, sid, country, device, 100) for p, sid, country, device in playing_at_end[::2]]
    fresh = [
        (s % partitions if ahead is None else ahead, f"n{s}", rng.choice(countries), rng.choice(devices), 0)
        for s in range(len(resumed))
    ]
    for partition, sid, country, device, first in resumed + fresh:
        t = later + rng.randrange(0, 60_000)
        kinds = ["heartbeat"] * rng.randrange(1, 10) if first else ["play_attempt", "play_start", "heartbeat"]
        for i, kind in enumerate(kinds, start=first):
            events[partition].append(playback_event(sid, i, kind, t, country, device))
            t += 30_000
    for partition_events in events:
        partition_events.sort(key=lambda e: e.event_time_ms)
    return events


def brute_force_concurrency(
    events: list[SimpleNamespace], step_ms: int, timeout_ms: int = TIMEOUT_MS
) -> Counter[tuple[int, str, str]]:
    """Per (fine window start, country, device_type): sessions with a playing event in the timeout before the
    window's end and not stopped before it (MISSION.md's definition, counted end by end)."""
    sessions: dict[str, list[SimpleNamespace]] = {}
    for e in events:
        sessions.setdefault(e.session_id, []).append(e)
    counts: Counter[tuple[int, str, str]] = Counter()
    for session_events in sessions.values():
        ended = min((e.event_time_ms for e in session_events if e.event_type == "play_stop"), default=None)
        ends = {
            end
            for e in session_events
            if e.event_type in PLAYING
            for end in range(
                e.event_time_ms - e.event_time_ms % step_ms + step_ms, e.event_time_ms + timeout_ms + 1, step_ms
            )
            if ended is None or end <= ended
        }
        for end in ends:
            counts[(end - step_ms, session_events[0].country, session_events[0].device_type)] += 1
    return +counts


def at_coarse_ends(fine: Counter[tuple[int, str, str]], fine_ms: int, coarse_ms: int) -> Counter[tuple[int, str, str]]:
    """The coarse windows' values: each takes the value at the end of its last fine window."""
    return Counter(
        {
            (start + fine_ms - coarse_ms, country, device): n
            for (start, country, device), n in fine.items()
            if (start + fine_ms) % coarse_ms == 0
        }
    )
