"""A gap in event time costs nothing in proportion to its length, and changes no aggregate.

Traffic with many sessions playing, then traffic a gap later (a device clock a
year ahead, a topic resumed after a holiday), some of it from the same
sessions. The work is counted as function calls (Python and C) made by the
fold and the window store, never timed: across a year it must stay what it is
across an hour, as must the windows held open and the updates published. The
values must equal a brute-force count of the definition (MISSION.md: sessions
open at a window's end whose last event is within the session timeout).
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from flows.playback_metrics import PlaybackFolder
from flows.window_store import WindowStore, WindowUpdate
from flows.windows import WindowConfig
from tests.unit.aggregators import PLAYBACK_AGGREGATORS, MakeAggregator

TIMEOUT = 60_000
HOUR = 3_600_000
YEAR = 365 * 24 * HOUR
BASE = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
PARTITIONS = ("p0", "p1")
PLAYING = {"play_start", "heartbeat", "rebuffer", "pause", "resume"}
WINDOW_CONFIGS = [
    pytest.param(WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000), id="10s-1m"),
    pytest.param(WindowConfig(fine_ms=1_000, coarse_ms=10_000, allowed_lateness_ms=5_000), id="1s-10s"),
    pytest.param(WindowConfig(fine_ms=60_000, coarse_ms=HOUR, allowed_lateness_ms=30_000), id="1m-1h"),
]


def _event(session: str, i: int, kind: str, t: int, country: str) -> SimpleNamespace:
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
        title_id="t", country=country, device_type="tv", **extra,
    )  # fmt: skip


def traffic(gap_ms: int, seed: int = 11) -> dict[str, list[SimpleNamespace]]:
    """Per partition, in event-time order: 20 min of sessions, most still playing at its end, then 5 min a gap later.

    After the gap, half the sessions are ones that were playing before it (same id, same partition).
    """
    rng = random.Random(seed)
    events: dict[str, list[SimpleNamespace]] = {p: [] for p in PARTITIONS}
    playing_at_end: list[tuple[str, str]] = []
    for s in range(300):
        sid, country = f"s{s}", rng.choice(["BR", "US", "DE"])
        partition = PARTITIONS[s % 2]
        t = BASE + rng.randrange(0, 15 * 60_000)
        kinds = ["play_attempt", "play_start"]
        stop = rng.random() < 0.3
        beats = rng.randrange(1, 12) if stop else (BASE + 20 * 60_000 - t) // 30_000
        kinds += [rng.choice(["heartbeat", "heartbeat", "rebuffer", "pause", "resume"]) for _ in range(beats)]
        if stop:
            kinds.append("play_stop")
        for i, kind in enumerate(kinds):
            events[partition].append(_event(sid, i, kind, t, country))
            t += 30_000 if i else rng.randrange(200, 3000)
        if not stop:
            playing_at_end.append((sid, country))
    later = BASE + 20 * 60_000 + gap_ms
    resumed = [(sid, country, 100) for sid, country in playing_at_end[::2]]
    fresh = [(f"n{s}", rng.choice(["BR", "US"]), 0) for s in range(100)]
    for sid, country, first in resumed + fresh:
        partition = PARTITIONS[int(sid[1:]) % 2]
        t = later + rng.randrange(0, 60_000)
        kinds = ["heartbeat"] * rng.randrange(1, 10) if first else ["play_attempt", "play_start", "heartbeat"]
        for i, kind in enumerate(kinds, start=first):
            events[partition].append(_event(sid, i, kind, t, country))
            t += 30_000
    for partition_events in events.values():
        partition_events.sort(key=lambda e: e.event_time_ms)
    return events


def brute_force_concurrency(events: list[SimpleNamespace], step: int) -> Counter[tuple[int, str]]:
    """Per fine window start: sessions with a playing event in the timeout before the window end, not ended."""
    sessions: dict[str, list[SimpleNamespace]] = {}
    for e in events:
        sessions.setdefault(e.session_id, []).append(e)
    counts: Counter[tuple[int, str]] = Counter()
    for session_events in sessions.values():
        ended = min((e.event_time_ms for e in session_events if e.event_type == "play_stop"), default=None)
        ends = {
            end
            for e in session_events
            if e.event_type in PLAYING
            for end in range(e.event_time_ms - e.event_time_ms % step + step, e.event_time_ms + TIMEOUT + 1, step)
            if ended is None or end <= ended
        }
        for end in ends:
            counts[(end - step, session_events[0].country)] += 1
    return counts


class _OverBudget(Exception):
    pass


@dataclass
class Work:
    """What one run cost: calls made, windows held open at most, updates published."""

    calls: int = 0
    most_open_windows: int = 0
    updates: int = 0


@contextmanager
def counting_calls(work: Work, budget: int | None) -> Iterator[None]:
    """Count every Python and C function call made inside; fail as soon as there are more than `budget`."""

    def count(_frame: FrameType, event: str, _arg: Any) -> None:
        if event in ("call", "c_call"):
            work.calls += 1
            if budget is not None and work.calls > budget:
                raise _OverBudget

    sys.setprofile(count)
    try:
        yield
    except _OverBudget:
        pytest.fail(f"more than {budget} calls: the work grows with the gap in event time")
    finally:
        sys.setprofile(None)


def run(
    make: MakeAggregator, windows: WindowConfig, gap_ms: int, budget: int | None = None
) -> tuple[list[WindowUpdate], Work]:
    """The flow's fold and store over `traffic(gap_ms)`: partitions take turns with batches of 40 events."""
    per_partition = traffic(gap_ms)
    aggregators = {p: make(p, windows, PlaybackFolder(windows, TIMEOUT)) for p in PARTITIONS}
    store = WindowStore(windows, PARTITIONS, TIMEOUT)
    updates: list[WindowUpdate] = []
    work = Work()
    batches = {p: [events[i : i + 40] for i in range(0, len(events), 40)] for p, events in per_partition.items()}
    with counting_calls(work, budget):
        for i in range(max(len(b) for b in batches.values())):
            for partition in PARTITIONS:
                if i < len(batches[partition]):
                    aggregators[partition].add_all(batches[partition][i])
                store.merge(aggregators[partition].summary("active"))
                updates += store.publish()
                work.most_open_windows = max(work.most_open_windows, store.open_windows)
        for partition in PARTITIONS:
            store.merge(aggregators[partition].summary("finished"))
        updates += store.finish()
    work.updates = len(updates)
    return updates, work


def final_values(updates: list[WindowUpdate], resolution: str) -> Counter[tuple[int, str]]:
    values: Counter[tuple[int, str]] = Counter()
    for update in updates:
        if update.final and update.resolution == resolution and update.complete:
            for key, value in update.complete.get("concurrent_streams", {}).items():
                values[(update.window_start_ms, key[0])] += value
    return +values


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@pytest.mark.parametrize("windows", WINDOW_CONFIGS)
@pytest.mark.parametrize("gap_ms", [2 * 60_000, YEAR], ids=["2min", "1year"])
def test_concurrent_streams_across_a_gap_equal_brute_force(
    make: MakeAggregator, windows: WindowConfig, gap_ms: int
) -> None:
    events = [e for partition_events in traffic(gap_ms).values() for e in partition_events]
    updates, _ = run(make, windows, gap_ms, budget=2_000_000)
    expected = +brute_force_concurrency(events, windows.fine_ms)
    assert final_values(updates, resolutions(windows)[0]) == expected
    # A coarse window takes the value at the end of its last fine window.
    coarse_ms, fine_ms = windows.coarse_ms, windows.fine_ms
    expected_coarse = Counter(
        {
            (start + fine_ms - coarse_ms, country): n
            for (start, country), n in expected.items()
            if (start + fine_ms) % coarse_ms == 0
        }
    )
    assert final_values(updates, resolutions(windows)[1]) == expected_coarse
    # Sessions resumed after the gap count again, and none counts inside it.
    later = BASE + 20 * 60_000 + gap_ms
    assert any(start >= later for start, _ in expected)


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@pytest.mark.parametrize("windows", WINDOW_CONFIGS)
def test_a_year_long_gap_costs_what_an_hour_long_one_does(make: MakeAggregator, windows: WindowConfig) -> None:
    _, hour = run(make, windows, HOUR)
    # Today's work across an hour (3,600 to 60 fine windows of gap) with a margin: a year is 8,760 hours.
    _, year = run(make, windows, YEAR, budget=hour.calls * 11 // 10 + 10_000)
    assert year.most_open_windows <= hour.most_open_windows + 2
    assert year.updates <= hour.updates + 2


def resolutions(windows: WindowConfig) -> tuple[str, str]:
    names = list(windows.resolutions)
    return names[0], names[1]
