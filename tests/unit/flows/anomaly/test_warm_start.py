"""A replay's detectors started from the live detectors' saved state judge its windows as the live ones did.

The live steps (flows/anomaly/steps.py, driven as the dataflow drives them: each shard its own cells, the
roll-ups once every shard has passed a window) save their state once per interval of event time; steps fed
only the windows from a saved boundary on, started from that state, must publish exactly the events the live
steps published from there. Started cold, they must not (so the test can fail): they spend the boundary's
first 30 windows warming up, and see the drop that starts within them late, if at all.
"""

from __future__ import annotations

import math
import random

import pytest

from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.steps import RollUpInput, RollUpLogic, ShardDetectorLogic, ShardOutput, StateSaving
from flows.anomaly.warm_start import (
    ROLL_UP_PART,
    DetectorSnapshot,
    ReshardError,
    SavedState,
    StateSchedule,
    WarmStart,
    is_whole,
    parts_of,
    reshard,
)
from flows.sharding import ShardRouter
from flows.windows.store import ShardProgress, WindowUpdate, WindowValues
from sinks.detector_state import decode_snapshot, encode_snapshot
from tests.unit.flows.anomaly.test_sharded_detection import FINE, T0, _key, _traffic

INTERVAL = 20 * FINE  # a state every 200 s of event time
# The boundary the "replay" starts at: 580 windows in, 20 windows before BR/tv's starts drop to a quarter (w 600).
BOUNDARY_WINDOW = 580
BOUNDARY_MS = T0 + BOUNDARY_WINDOW * FINE
DROP = ("sps", "BR", "tv")


def _run(
    traffic: list[WindowValues],
    first_window: int,
    shards: int,
    publish_every: int,
    saving: StateSaving | None = None,
    warm: WarmStart | None = None,
) -> tuple[list[AnomalyEvent], list[SavedState]]:
    """The events and saved states of the detector steps fed the windows from `first_window` on."""
    router = ShardRouter(shards)
    alone = shards == 1
    cell_logic = [ShardDetectorLogic(None, alone=alone, saving=saving, warm=warm) for _ in range(shards)]
    roll_ups = None if alone else RollUpLogic(None, saving=saving, warm=warm)
    outputs: list[ShardOutput] = []
    batches: list[list[WindowUpdate | ShardProgress]] = [[] for _ in range(shards)]
    for w in range(first_window, len(traffic)):
        start, end = T0 + w * FINE, T0 + (w + 1) * FINE
        for shard in range(shards):
            own = {
                aggregate: {dims: v for dims, v in rows.items() if router.shard_of(str(dims[0]), str(dims[1])) == shard}
                for aggregate, rows in traffic[w].items()
            }
            own = {aggregate: rows for aggregate, rows in own.items() if rows}
            if own:
                batches[shard].append(WindowUpdate("10s", start, end, True, own, own, {}, end, shard, shards))
            if w % publish_every == publish_every - 1 or w == len(traffic) - 1:
                batches[shard].append(ShardProgress(shard, shards, end, end))
                outputs += cell_logic[shard].on_batch(batches[shard])[0]
                batches[shard] = []
    rolled: list[Detection | SavedState] = []
    if roll_ups is not None:
        parts = sorted((p for p in outputs if isinstance(p, RollUpInput)), key=lambda p: (p.final_through_ms, p.shard))
        for part in parts:
            rolled += roll_ups.on_batch([part])[0]
    everything = [*outputs, *rolled]
    events = [e for d in everything if isinstance(d, Detection) for e in d.events]
    return events, [s for s in everything if isinstance(s, SavedState)]


def _drop_openings(events: list[AnomalyEvent]) -> list[int]:
    """When the anomalies on the dropping series opened, from the boundary on."""
    return [
        e.window_start_ms
        for e in events
        if (e.series, e.country, e.device_type) == DROP and e.state == "open" and e.window_start_ms >= BOUNDARY_MS
    ]


def _from(events: list[AnomalyEvent], start_ms: int) -> list[tuple[object, ...]]:
    return sorted(_key(e) for e in events if e.window_start_ms >= start_ms)


@pytest.mark.parametrize(("shards", "publish_every"), [(1, 1), (2, 7), (4, 3)])
def test_a_warm_start_from_saved_state_publishes_the_live_events_and_a_cold_one_does_not(
    shards: int, publish_every: int
) -> None:
    traffic = _traffic()
    saving = StateSaving(INTERVAL, shards)
    live_events, states = _run(traffic, 0, shards, publish_every, saving)
    # Every part, once per boundary crossed (the first only once something was stepped), valid through it.
    boundaries = sorted({s.through_ms for s in states})
    assert boundaries == [T0 + w * FINE for w in range(20, len(traffic), 20)]
    for through in boundaries:
        assert {s.part for s in states if s.through_ms == through} == parts_of(shards)
    assert all(s.shards == shards for s in states)

    # The replay of [boundary, end) from the state through the boundary (through the store's encoding).
    at_boundary = {s.part: decode_snapshot(encode_snapshot(s.snapshot)) for s in states if s.through_ms == BOUNDARY_MS}
    warm = WarmStart(BOUNDARY_MS, shards, at_boundary, BOUNDARY_MS)
    warm_events, warm_states = _run(traffic, BOUNDARY_WINDOW, shards, publish_every, warm=warm)
    expected = _from(live_events, BOUNDARY_MS)
    assert any(key[1:4] == DROP and key[4] == "open" for key in expected)
    assert _from(warm_events, BOUNDARY_MS) == expected
    assert warm_states == []  # saving is the live run's: a replay leaves none

    cold_events, _ = _run(traffic, BOUNDARY_WINDOW, shards, publish_every)
    assert _from(cold_events, BOUNDARY_MS) != expected
    # Warming up over the drop's first windows, it sees the drop later than the live detector did, if at all.
    live_open = min(_drop_openings(live_events))
    cold_open = _drop_openings(cold_events)
    assert all(at > live_open for at in cold_open), (live_open, cold_open)


@pytest.mark.parametrize(("saved_by", "replayed_on"), [(2, 1), (1, 3), (4, 2)])
def test_a_state_cut_for_another_shard_count_publishes_the_live_events(saved_by: int, replayed_on: int) -> None:
    traffic = _traffic()
    live_events, states = _run(traffic, 0, saved_by, 5, StateSaving(INTERVAL, saved_by))
    at_boundary = {s.part: s.snapshot for s in states if s.through_ms == BOUNDARY_MS}
    parts = reshard(at_boundary, replayed_on, break_in_data=False)
    assert set(parts) == parts_of(replayed_on)
    series = sorted(tuple(entry[:3]) for part in parts.values() for entry in part["series"])
    assert series == sorted(tuple(entry[:3]) for part in at_boundary.values() for entry in part["series"])
    warm_events, _ = _run(
        traffic, BOUNDARY_WINDOW, replayed_on, 3, warm=WarmStart(BOUNDARY_MS, replayed_on, parts, BOUNDARY_MS)
    )
    assert _from(warm_events, BOUNDARY_MS) == _from(live_events, BOUNDARY_MS)


def test_parts_that_stepped_different_windows_are_not_cut_for_another_count_unless_after_a_break() -> None:
    traffic = _traffic()
    _events, states = _run(traffic, 0, 2, 1, StateSaving(INTERVAL, 2))
    at_boundary = {s.part: s.snapshot for s in states if s.through_ms == BOUNDARY_MS}
    at_boundary["0"] = {**at_boundary["0"], "next_start": BOUNDARY_MS - FINE}  # shard 0 had no data in the last
    with pytest.raises(ReshardError, match="different windows"):
        reshard(at_boundary, 1, break_in_data=False)
    assert set(reshard(at_boundary, 1, break_in_data=True)) == {"0"}


def test_a_state_older_than_the_replay_start_restarts_the_recent_windows_and_keeps_the_baselines() -> None:
    traffic = _traffic()
    _events, states = _run(traffic, 0, 1, 1, StateSaving(INTERVAL, 1))
    through = T0 + 540 * FINE  # 40 windows before the replay's start
    snapshot = next(s.snapshot for s in states if s.through_ms == through)
    live = AnomalyDetector.restore(snapshot)
    resumed = WarmStart(through, 1, {"0": snapshot}, BOUNDARY_MS).detector("0")
    assert resumed.next_window_start is None  # the windows in between are not stepped as empty
    resumed_state, live_state = resumed.snapshot()["series"], live.snapshot()["series"]
    assert len(resumed_state) == len(live_state) > 0
    for (*_id, record), (*_same, live_record) in zip(resumed_state, live_state, strict=True):
        assert record[:3] == live_record[:3]  # t and the levels: the baselines stay
        assert record[11] == 0  # filled: no recent windows
    assert any(live_record[11] > 0 for *_id, live_record in live_state)
    # Resumed at the boundary itself, nothing is cleared.
    exact = WarmStart(through, 1, {"0": snapshot}, through).detector("0")
    assert exact.next_window_start == through and exact.snapshot() == snapshot


def test_the_schedule_saves_once_per_boundary_and_only_a_state_valid_through_it() -> None:
    detector = AnomalyDetector()
    schedule = StateSchedule(INTERVAL)
    assert schedule.due(detector, T0 + INTERVAL) is None  # nothing stepped yet: nothing worth saving
    rng = random.Random(3)
    saved: list[int] = []
    for w in range(50):
        start = T0 + w * FINE
        if w == 20:
            continue  # a window with no data: the next one past the boundary still finds the state valid
        through = schedule.due(detector, start)
        if through is not None:
            assert detector.next_window_start is not None and detector.next_window_start <= through <= start
            saved.append(through)
        values = {"stream_starts": {("US", "tv", "c"): rng.randint(40, 60)}}
        detector.observe(start, start + FINE, values)
    assert saved == [T0 + 20 * FINE, T0 + 40 * FINE]
    # A window already stepped (a re-delivery) never makes a state due: the detector is past it.
    assert schedule.due(detector, T0 + 45 * FINE) is None
    with pytest.raises(ValueError, match="positive"):
        StateSchedule(0)


def test_the_stored_form_keeps_every_number_exactly() -> None:
    snapshot = {"series": [["sps", "US", "tv", [1, 0.1 + 0.2, math.inf, -math.inf, None, 2**53 + 1]]]}
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot


def test_a_cluster_state_has_a_part_per_shard_but_the_last_whose_cells_step_with_the_roll_ups() -> None:
    assert parts_of(1) == {"0"}
    assert parts_of(3) == {"0", "1", ROLL_UP_PART}
    assert is_whole(["0", "1", ROLL_UP_PART], 3)
    assert is_whole(["0", "1", "2", ROLL_UP_PART], 3)  # as saved before the last shard forwarded its cells
    assert not is_whole(["0", ROLL_UP_PART], 3)
    assert not is_whole(["0", "1", "2"], 3)
    assert is_whole(["0"], 1) and not is_whole(["0", ROLL_UP_PART], 1)


def _earlier_layout(parts: dict[str, DetectorSnapshot], shards: int) -> dict[str, DetectorSnapshot]:
    """The same state as saved before the last shard's cells stepped with the roll-ups: every shard a part."""
    router = ShardRouter(shards)

    def part_of(country: str, device: str) -> str:
        return ROLL_UP_PART if "all" in (country, device) else str(router.shard_of(country, device))

    template = next(iter(parts.values()))
    cut: dict[str, DetectorSnapshot] = {
        name: {**template, "groups": [], "series": []} for name in [*map(str, range(shards)), ROLL_UP_PART]
    }
    for part in parts.values():
        for country, device in part["groups"]:
            cut[part_of(country, device)]["groups"].append([country, device])
        for series in part["series"]:
            cut[part_of(series[1], series[2])]["series"].append(series)
    return cut


@pytest.mark.parametrize("shards", [2, 4])
def test_a_state_saved_with_a_part_for_every_shard_is_cut_into_todays_and_publishes_the_live_events(
    shards: int,
) -> None:
    traffic = _traffic()
    live_events, states = _run(traffic, 0, shards, 5, StateSaving(INTERVAL, shards))
    at_boundary = {s.part: s.snapshot for s in states if s.through_ms == BOUNDARY_MS}
    earlier = _earlier_layout(at_boundary, shards)
    assert str(shards - 1) in earlier and is_whole(earlier, shards)
    parts = reshard(earlier, shards, break_in_data=False)
    assert set(parts) == parts_of(shards)
    warm_events, _ = _run(traffic, BOUNDARY_WINDOW, shards, 3, warm=WarmStart(BOUNDARY_MS, shards, parts, BOUNDARY_MS))
    assert _from(warm_events, BOUNDARY_MS) == _from(live_events, BOUNDARY_MS)
