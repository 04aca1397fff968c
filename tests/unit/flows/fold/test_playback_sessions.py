"""Concurrent streams and the other playback aggregates against brute-force counts."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.fold.playback import PlaybackFolder
from flows.windows.store import WindowStore, WindowUpdate
from settings.windows import WindowConfig
from tests.unit.aggregators import PLAYBACK_AGGREGATORS, MakeAggregator

WINDOWS = WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000)
TIMEOUT = 60_000
BASE = 1_800_000_000_000 - 1_800_000_000_000 % 60_000
PLAYING = {"play_start", "heartbeat", "rebuffer", "bitrate_change", "pause", "resume"}


def event(session: str, i: int, kind: str, t: int, country: str, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(
        event_id=f"{session}-{i}", event_type=kind, event_time_ms=t, session_id=session, account_id="a",
        title_id="t", country=country, device_type="tv", **extra,
    )  # fmt: skip


def make_sessions(seed: int, count: int) -> list[SimpleNamespace]:
    rng = random.Random(seed)
    events: list[SimpleNamespace] = []
    for s in range(count):
        sid, country = f"s{s}", rng.choice(["BR", "US"])
        t = BASE + rng.randrange(0, 300_000)
        i = 0
        events.append(event(sid, i, "play_attempt", t, country))
        t += rng.randrange(100, 3000)
        i += 1
        events.append(event(sid, i, "play_start", t, country, startup_ms=rng.randrange(100, 5000), cdn="c1"))
        for _ in range(rng.randrange(0, 8)):
            # Mostly 30 s heartbeats, sometimes a silence longer than the session timeout.
            t += rng.choice([30_000, 30_000, 30_000, 75_000, 5_000])
            i += 1
            kind = rng.choice(["heartbeat", "heartbeat", "rebuffer", "pause", "resume"])
            extra: dict[str, object] = {"played_ms": 30_000, "bitrate_kbps": 3000} if kind == "heartbeat" else {}
            if kind == "rebuffer":
                extra = {"rebuffer_ms": rng.randrange(0, 4000)}
            events.append(event(sid, i, kind, t, country, **extra))
        ending = rng.choice(["play_stop", "play_error", None])
        if ending:
            t += rng.randrange(1000, 40_000)
            i += 1
            extra = {"played_ms": 1000} if ending == "play_stop" else {"error_code": "E9"}
            events.append(event(sid, i, ending, t, country, **extra))
    return events


def brute_force_concurrency(events: list[SimpleNamespace]) -> Counter[tuple[int, str]]:
    """Per fine window start: sessions with a playing event in the timeout before the window end, not ended."""
    sessions: dict[str, list[SimpleNamespace]] = {}
    for e in events:
        sessions.setdefault(e.session_id, []).append(e)
    counts: Counter[tuple[int, str]] = Counter()
    step = WINDOWS.fine_ms
    for session_events in sessions.values():
        ended = min(
            (e.event_time_ms for e in session_events if e.event_type in ("play_stop", "play_error")), default=None
        )
        playing = [e.event_time_ms for e in session_events if e.event_type in PLAYING]
        ends = {
            end
            for t in playing
            for end in range(t - t % step + step, t + TIMEOUT + 1, step)
            if ended is None or end <= ended
        }
        for end in ends:
            counts[(end - step, session_events[0].country)] += 1
    return counts


def fine_values(make: MakeAggregator, events: list[SimpleNamespace], aggregate: str) -> Counter[tuple[int, str]]:
    aggregator = make("p", WINDOWS, PlaybackFolder(WINDOWS, TIMEOUT))
    store = WindowStore(WINDOWS, ["p"])
    updates = []
    for i in range(0, len(events), 50):
        for e in events[i : i + 50]:
            aggregator.add(e)
        store.merge(aggregator.summary("active"))
        updates += store.publish()
    store.merge(aggregator.summary("finished"))
    updates += store.finish()
    return final_fine_values(updates, aggregate)


def final_fine_values(updates: list[WindowUpdate], aggregate: str) -> Counter[tuple[int, str]]:
    """Per (fine window start, country): the final values of `aggregate`."""
    values: Counter[tuple[int, str]] = Counter()
    for update in updates:
        if update.final and update.resolution == "10s" and update.complete:
            for key, value in update.complete.get(aggregate, {}).items():
                if value:
                    values[(update.window_start_ms, key[0])] += value
    return values


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_concurrent_streams_equal_brute_force_in_order(make: MakeAggregator, seed: int) -> None:
    events = sorted(make_sessions(seed, 40), key=lambda e: e.event_time_ms)
    assert fine_values(make, events, "concurrent_streams") == +brute_force_concurrency(events)


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_concurrent_streams_equal_brute_force_out_of_order(make: MakeAggregator, seed: int) -> None:
    rng = random.Random(seed)
    events = sorted(make_sessions(seed, 40), key=lambda e: e.event_time_ms)
    # Deliver out of order within 20 s (under the 30 s allowed lateness).
    keyed = sorted(events, key=lambda e: e.event_time_ms + rng.randrange(0, 20_000))
    assert fine_values(make, keyed, "concurrent_streams") == +brute_force_concurrency(events)


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
def test_sums_and_counts(make: MakeAggregator) -> None:
    events = sorted(make_sessions(5, 60), key=lambda e: e.event_time_ms)
    step = WINDOWS.fine_ms
    rebuffer: Counter[tuple[int, str]] = Counter()
    starts: Counter[tuple[int, str]] = Counter()
    for e in events:
        window = (e.event_time_ms - e.event_time_ms % step, e.country)
        if e.event_type == "rebuffer" and e.rebuffer_ms:
            rebuffer[window] += e.rebuffer_ms
        if e.event_type == "play_start":
            starts[window] += 1
    assert fine_values(make, events, "rebuffer_ms") == rebuffer
    assert fine_values(make, events, "stream_starts") == starts


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
def test_sessions_are_freed_when_they_end_or_fall_silent(make: MakeAggregator) -> None:
    aggregator = make("p", WINDOWS, PlaybackFolder(WINDOWS, TIMEOUT))
    events = sorted(make_sessions(9, 200), key=lambda e: e.event_time_ms)
    for e in events:
        aggregator.add(e)
    aggregator.summary("active")
    assert aggregator.keys_held > 0
    aggregator.add(event("later", 0, "play_attempt", BASE + 3_600_000, "BR"))
    aggregator.summary("active")
    assert aggregator.keys_held == 0


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), cut=st.integers(1, 30))
def test_a_restored_snapshot_continues_as_if_never_stopped(make: MakeAggregator, seed: int, cut: int) -> None:
    """Recovery: an aggregator restored from a snapshot between batches judges the rest like the original."""
    rng = random.Random(seed)
    events = sorted(make_sessions(seed, 40), key=lambda e: e.event_time_ms + rng.randrange(0, 20_000))
    # Re-deliveries, some of which straddle the snapshot.
    events += [events[i] for i in rng.sample(range(len(events)), 10)]
    events.sort(key=lambda e: e.event_time_ms + rng.randrange(0, 5_000))
    batches = [events[i : i + 20] for i in range(0, len(events), 20)]
    aggregator = make("p", WINDOWS, PlaybackFolder(WINDOWS, TIMEOUT))
    store = WindowStore(WINDOWS, ["p"])
    updates = []
    for i, batch in enumerate(batches):
        if i == cut % len(batches):
            snapshot = aggregator.snapshot()
            aggregator = make("p", WINDOWS, PlaybackFolder(WINDOWS, TIMEOUT))
            aggregator.restore(snapshot)
        for e in batch:
            aggregator.add(e)
        store.merge(aggregator.summary("active"))
        updates += store.publish()
    store.merge(aggregator.summary("finished"))
    updates += store.finish()
    unique = list({e.event_id: e for e in events}.values())
    assert final_fine_values(updates, "concurrent_streams") == +brute_force_concurrency(unique)
