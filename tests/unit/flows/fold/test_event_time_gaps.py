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

import pickle
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, SimpleNamespace
from typing import Any

import pytest

from flows.fold.partition_aggregator import PartitionAggregator
from flows.fold.playback import PlaybackFolder
from flows.fold.signup import SignupFolder
from flows.windows.store import WindowStore, WindowUpdate, _Window
from settings.windows import WindowConfig
from tests.unit.aggregators import PLAYBACK_AGGREGATORS, MakeAggregator
from tests.unit.gap_traffic import PHASE_MS, TIMEOUT_MS, at_coarse_ends, brute_force_concurrency, gap_traffic

HOUR = 3_600_000
YEAR = 365 * 24 * HOUR
BASE = 1_700_000_000_000 - 1_700_000_000_000 % HOUR
PARTITIONS = ("p0", "p1")
WINDOW_CONFIGS = [
    pytest.param(WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000), id="10s-1m"),
    pytest.param(WindowConfig(fine_ms=1_000, coarse_ms=10_000, allowed_lateness_ms=5_000), id="1s-10s"),
    pytest.param(WindowConfig(fine_ms=60_000, coarse_ms=HOUR, allowed_lateness_ms=30_000), id="1m-1h"),
]


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
    make: MakeAggregator,
    windows: WindowConfig,
    gap_ms: int,
    budget: int | None = None,
    ahead: int | None = None,
    timeout_ms: int = TIMEOUT_MS,
) -> tuple[list[WindowUpdate], Work]:
    """The flow's fold and store over `gap_traffic`: partitions take turns with batches of 40 events.

    With `ahead`, that partition holds only traffic after the gap, so it gets there while the other still has
    sessions open before it.
    """
    per_partition = dict(zip(PARTITIONS, gap_traffic(gap_ms, BASE, ahead=ahead), strict=True))
    aggregators = {p: make(p, windows, PlaybackFolder(windows, timeout_ms)) for p in PARTITIONS}
    store = WindowStore(windows, PARTITIONS, timeout_ms)
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


def last_written(updates: list[WindowUpdate]) -> dict[tuple[str, int], WindowUpdate]:
    """Per window, its last update: what Redis holds in the end."""
    return {(u.resolution, u.window_start_ms): u for u in updates}


def final_values(updates: list[WindowUpdate], resolution: str) -> Counter[tuple[int, str, str]]:
    values: Counter[tuple[int, str, str]] = Counter()
    for update in updates:
        if update.final and update.resolution == resolution and update.complete:
            for (country, device), value in update.complete.get("concurrent_streams", {}).items():
                values[(update.window_start_ms, country, device)] += value
    return +values


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@pytest.mark.parametrize("windows", WINDOW_CONFIGS)
@pytest.mark.parametrize("gap_ms", [2 * 60_000, YEAR], ids=["2min", "1year"])
@pytest.mark.parametrize("ahead", [None, 0], ids=["together", "one-ahead"])
def test_concurrent_streams_across_a_gap_equal_brute_force(
    make: MakeAggregator, windows: WindowConfig, gap_ms: int, ahead: int | None
) -> None:
    events = [e for partition_events in gap_traffic(gap_ms, BASE, ahead=ahead) for e in partition_events]
    updates, _ = run(make, windows, gap_ms, budget=2_000_000, ahead=ahead)
    # A window published partial while sessions whose end was not known yet counted in it is written again,
    # final, even once nothing is left in it: otherwise Redis keeps the partial value.
    assert all(update.final for update in last_written(updates).values())
    fine, coarse = resolutions(windows)
    expected = brute_force_concurrency(events, windows.fine_ms)
    assert final_values(updates, fine) == expected
    assert final_values(updates, coarse) == at_coarse_ends(expected, windows.fine_ms, windows.coarse_ms)
    # Sessions go on after the gap, and count there.
    assert any(start >= BASE + PHASE_MS + gap_ms for start, _, _ in expected)


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@pytest.mark.parametrize("timeout_ms", [45_000, 61_000, 5_000])
def test_a_timeout_not_a_whole_number_of_windows_fills_in_exactly_as_far(make: MakeAggregator, timeout_ms: int) -> None:
    """Windows are filled in up to the last end a session can count at, however the timeout falls in a window."""
    windows = WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000)
    events = [e for partition_events in gap_traffic(YEAR, BASE, ahead=0) for e in partition_events]
    updates, _ = run(make, windows, YEAR, budget=2_000_000, ahead=0, timeout_ms=timeout_ms)
    assert final_values(updates, "10s") == brute_force_concurrency(events, windows.fine_ms, timeout_ms)


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
@pytest.mark.parametrize("windows", WINDOW_CONFIGS)
def test_a_year_long_gap_costs_what_an_hour_long_one_does(make: MakeAggregator, windows: WindowConfig) -> None:
    _, hour = run(make, windows, HOUR, ahead=0)
    # The work across an hour (3,600 to 60 fine windows of gap) with a margin: a year is 8,760 hours.
    _, year = run(make, windows, YEAR, budget=hour.calls * 11 // 10 + 10_000, ahead=0)
    assert year.most_open_windows <= hour.most_open_windows + 2
    assert year.updates <= hour.updates + 2


def resolutions(windows: WindowConfig) -> tuple[str, str]:
    names = list(windows.resolutions)
    return names[0], names[1]


def test_a_store_snapshotted_by_the_previous_version_resumes_exactly() -> None:
    """A recovery directory written before this change: the store and its windows lack the fields added since."""
    windows = WindowConfig()
    events = gap_traffic(YEAR, BASE, ahead=0)
    aggregators = {p: PartitionAggregator(p, windows, PlaybackFolder(windows, TIMEOUT_MS)) for p in PARTITIONS}
    store = WindowStore(windows, PARTITIONS, TIMEOUT_MS)
    updates: list[WindowUpdate] = []
    halves = [{p: evs[: len(evs) // 2] for p, evs in zip(PARTITIONS, events, strict=True)}]
    halves.append({p: evs[len(evs) // 2 :] for p, evs in zip(PARTITIONS, events, strict=True)})
    for half, batch in enumerate(halves):
        if half == 1:
            old = {k: v for k, v in store.__dict__.items() if k not in ("session_timeout_ms", "_last_final_data")}
            for key, window in old["_open"].items():
                fields = {f: getattr(window, f) for f in window.__slots__ if f not in ("has_data", "published")}
                old["_open"][key] = restored = _Window.__new__(_Window)
                restored.__setstate__((None, fields))
            store = WindowStore.__new__(WindowStore)
            store.__setstate__(pickle.loads(pickle.dumps(old)))
        for partition in PARTITIONS:
            aggregators[partition].add_all(batch[partition])
            store.merge(aggregators[partition].summary("active"))
            updates += store.publish()
    for partition in PARTITIONS:
        store.merge(aggregators[partition].summary("finished"))
    updates += store.finish()
    expected = brute_force_concurrency([e for evs in events for e in evs], windows.fine_ms)
    assert final_values(updates, "10s") == expected
    assert all(update.final for update in last_written(updates).values())


def _signup_run(gap_ms: int, budget: int | None) -> tuple[Work, int, int]:
    """Sign-up funnels started before the gap, half of them failing after it: (work, most funnels, most ids held)."""
    windows = WindowConfig()
    aggregator = PartitionAggregator("s", windows, SignupFolder(signup_timeout_ms=30 * 60_000))
    events = []
    for n in range(400):
        common = {"signup_id": f"u{n}", "channel": "organic", "country": "BR", "device_type": "web"}
        t = BASE + n * 3_000
        events.append(SimpleNamespace(event_id=f"u{n}-0", event_type="signup_started", event_time_ms=t, **common))
        events.append(
            SimpleNamespace(
                event_id=f"u{n}-1", event_type="plan_selected", event_time_ms=t + 500, plan="basic", **common
            )
        )
        if n % 2:
            failed = {"failure_reason": "abandoned"}
            events.append(
                SimpleNamespace(
                    event_id=f"u{n}-2", event_type="signup_failed", event_time_ms=t + gap_ms, **failed, **common
                )
            )
    events.sort(key=lambda e: e.event_time_ms)
    work, funnels, ids = Work(), 0, 0
    with counting_calls(work, budget):
        for i in range(0, len(events), 50):
            aggregator.add_all(events[i : i + 50])
            aggregator.summary("active")
            funnels, ids = max(funnels, aggregator.keys_held), max(ids, aggregator.remembered_ids)
        aggregator.summary("finished")
    return work, funnels, ids


def test_sign_up_funnels_and_event_ids_across_a_year_cost_what_they_do_across_an_hour() -> None:
    hour, hour_funnels, hour_ids = _signup_run(HOUR, None)
    _, year_funnels, year_ids = _signup_run(YEAR, hour.calls * 11 // 10 + 1_000)  # fails past the budget
    assert (year_funnels, year_ids) == (hour_funnels, hour_ids)
