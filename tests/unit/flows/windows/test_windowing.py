"""The per-partition aggregator and the window store, without Kafka."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.fold.partition_aggregator import PartitionAggregator
from flows.fold.playback import PlaybackFolder, StreamStartsFolder
from flows.windows.store import WindowStore, WindowUpdate
from settings.windows import WindowConfig, resolution_name, window_start

WINDOWS = WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000)
BASE = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


def folder() -> PlaybackFolder:
    return PlaybackFolder(WINDOWS, session_timeout_ms=60_000)


def start(event_id: str, t: int, country: str = "BR", device: str = "tv", cdn: str = "c1") -> SimpleNamespace:
    return SimpleNamespace(
        event_id=event_id,
        event_type="play_start",
        event_time_ms=t,
        country=country,
        device_type=device,
        cdn=cdn,
        session_id=f"session-{event_id}",
        title_id="t1",
        startup_ms=1200,
    )


def run_partitions(partitions: dict[str, list[list[SimpleNamespace]]], order: list[str]) -> list[WindowUpdate]:
    """Feed batches to a store in the given interleaving of partitions, then finish."""
    aggregators = {p: PartitionAggregator(p, WINDOWS, folder()) for p in partitions}
    cursors = dict.fromkeys(partitions, 0)
    store = WindowStore(WINDOWS, partitions)
    updates: list[WindowUpdate] = []
    for p in order:
        batch = partitions[p][cursors[p]]
        cursors[p] += 1
        for event in batch:
            aggregators[p].add(event)
        last = cursors[p] == len(partitions[p])
        store.merge(aggregators[p].summary("finished" if last else "active"))
        updates.extend(store.publish())
    updates.extend(store.finish())
    return updates


def final_starts(updates: list[WindowUpdate], resolution: str) -> Counter[tuple[int, str, str, str]]:
    finals = [u for u in updates if u.final and u.resolution == resolution and u.complete is not None]
    starts: Counter[tuple[int, str, str, str]] = Counter()
    seen_windows: set[int] = set()
    for update in finals:
        assert update.window_start_ms not in seen_windows, "a window was published final twice with values"
        seen_windows.add(update.window_start_ms)
        assert update.complete is not None
        for key, value in update.complete.get("stream_starts", {}).items():
            starts[(update.window_start_ms, key[0], key[1], key[2])] += value
    return starts


def expected_starts(events: list[SimpleNamespace], size_ms: int) -> Counter[tuple[int, str, str, str]]:
    unique = {e.event_id: e for e in events}
    return Counter((window_start(e.event_time_ms, size_ms), e.country, e.device_type, e.cdn) for e in unique.values())


def test_out_of_order_within_lateness_is_all_counted() -> None:
    rng = random.Random(7)
    events = [start(f"e{i}", BASE + i * 700, rng.choice(["BR", "US"]), rng.choice(["tv", "web"])) for i in range(500)]
    shuffled = events[:]
    # Shuffle within blocks of 20 events (14 s of event time), well inside the 30 s lateness.
    for i in range(0, len(shuffled), 20):
        block = shuffled[i : i + 20]
        rng.shuffle(block)
        shuffled[i : i + 20] = block
    batches = [shuffled[i : i + 37] for i in range(0, len(shuffled), 37)]
    updates = run_partitions({"p0": batches}, ["p0"] * len(batches))
    assert final_starts(updates, "10s") == expected_starts(events, 10_000)
    assert final_starts(updates, "1m") == expected_starts(events, 60_000)


def test_duplicates_count_once() -> None:
    events = [start(f"e{i}", BASE + i * 1000) for i in range(50)]
    redelivered = [*events, events[3], events[10], events[10]]
    updates = run_partitions({"p0": [redelivered]}, ["p0"])
    assert final_starts(updates, "10s") == expected_starts(events, 10_000)


def test_event_behind_its_partition_by_more_than_lateness_is_late_not_counted() -> None:
    on_time = [start(f"e{i}", BASE + i * 1000) for i in range(200)]  # up to BASE + 199 s
    late = start("late", BASE + 5_000)  # fine [0,10) s and coarse [0,60) s long closed at 199 s
    updates = run_partitions({"p0": [on_time, [late]]}, ["p0", "p0"])
    assert final_starts(updates, "10s") == expected_starts(on_time, 10_000)
    late_counts = {
        (u.resolution, u.window_start_ms): u.late.get("play_start", 0) for u in updates if u.final and u.late
    }
    assert late_counts[("10s", BASE)] == 1
    assert late_counts[("1m", BASE)] == 1


def test_late_for_fine_but_not_coarse_counts_only_in_coarse() -> None:
    on_time = [start(f"e{i}", BASE + i * 1000) for i in range(55)]  # high = BASE + 54 s
    straggler = start("s", BASE + 12_000)  # fine [10,20) closed at 50 s; coarse [0,60) open until 90 s
    updates = run_partitions({"p0": [[*on_time, straggler]]}, ["p0"])
    assert final_starts(updates, "10s") == expected_starts(on_time, 10_000)
    assert final_starts(updates, "1m") == expected_starts([*on_time, straggler], 60_000)


def test_duplicate_after_window_closed_is_late_not_a_second_count() -> None:
    first = start("dup", BASE + 1_000)
    later = [start(f"e{i}", BASE + i * 1000) for i in range(2, 120)]
    updates = run_partitions({"p0": [[first], later, [first]]}, ["p0", "p0", "p0"])
    assert final_starts(updates, "1m") == expected_starts([first, *later], 60_000)
    total_late = sum(u.late.get("play_start", 0) for u in updates if u.final and u.resolution == "1m")
    assert total_late >= 1


def _fast_ahead_of_slow(seconds: int) -> tuple[WindowStore, PartitionAggregator, PartitionAggregator]:
    """A store over partitions "fast" and "slow"; "fast" holds a stream start a second for `seconds` s from BASE."""
    store = WindowStore(WINDOWS, ["fast", "slow"])
    fast, slow = PartitionAggregator("fast", WINDOWS, folder()), PartitionAggregator("slow", WINDOWS, folder())
    for i in range(seconds):
        fast.add(start(f"f{i}", BASE + i * 1000))
    return store, fast, slow


def test_watermark_is_the_slowest_active_partition() -> None:
    store, fast, slow = _fast_ahead_of_slow(300)
    slow.add(start("s0", BASE))
    store.merge(fast.summary("active"))
    store.merge(slow.summary("active"))
    updates = store.publish()
    assert store.watermark_ms == BASE
    assert not any(u.final for u in updates), "the slow partition must hold windows open"
    # Once the slow partition is idle (caught up), it no longer holds the watermark back.
    store.merge(slow.summary("idle"))
    updates = store.publish()
    assert store.watermark_ms == BASE + 299_000
    assert any(u.final and u.window_start_ms == BASE for u in updates)


def test_events_of_an_idle_partition_for_windows_already_final_are_late_not_added() -> None:
    store, fast, slow = _fast_ahead_of_slow(300)
    store.merge(fast.summary("active"))
    store.merge(slow.summary("idle"))
    updates = store.publish()
    assert any(u.final and u.window_start_ms == BASE and u.resolution == "10s" for u in updates)
    # The idle partition wakes up with an event of that final window: on time on its own partition, late here.
    slow.add(start("s0", BASE + 1_000))
    store.merge(slow.summary("active"))
    updates += store.publish() + store.finish()
    finals = [u for u in updates if u.final and u.window_start_ms == BASE and u.resolution == "10s"]
    assert final_starts(updates, "10s")[(BASE, "BR", "tv", "c1")] == 10, "never added to the final window"
    assert finals[-1].late == {"play_start": 1}
    assert store.late_by_resolution == {"10s": 1, "1m": 1}


def test_partial_windows_are_published_then_final_once() -> None:
    store = WindowStore(WINDOWS, ["p"])
    agg = PartitionAggregator("p", WINDOWS, folder())
    agg.add(start("a", BASE + 1_000))
    store.merge(agg.summary("active"))
    first = store.publish()
    assert {(u.resolution, u.final) for u in first} == {("10s", False), ("1m", False)}
    assert store.publish() == [], "unchanged windows are not re-published"
    agg.add(start("b", BASE + 200_000))
    store.merge(agg.summary("active"))
    closing = [u for u in store.publish() if u.window_start_ms == BASE]
    assert {(u.resolution, u.final) for u in closing} == {("10s", True), ("1m", True)}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), partitions=st.integers(1, 4))
def test_result_does_not_depend_on_how_partitions_interleave(seed: int, partitions: int) -> None:
    rng = random.Random(seed)
    events_by_partition: dict[str, list[list[SimpleNamespace]]] = {}
    all_events: list[SimpleNamespace] = []
    for p in range(partitions):
        events = [
            start(f"p{p}e{i}", BASE + i * 500 + rng.randrange(0, 20_000), rng.choice(["BR", "US", "DE"]))
            for i in range(rng.randrange(50, 300))
        ]
        all_events.extend(events)
        events_by_partition[f"p{p}"] = [events[i : i + 25] for i in range(0, len(events), 25)]
    order_a = [p for p, batches in events_by_partition.items() for _ in batches]
    order_b = order_a[:]
    rng.shuffle(order_b)  # run_partitions keeps each partition's own batch order
    a = final_starts(run_partitions(events_by_partition, order_a), "10s")
    b = final_starts(run_partitions(events_by_partition, order_b), "10s")
    assert a == b
    # Nothing here is later than the allowed lateness, so every event counts.
    assert a == expected_starts(all_events, 10_000)


def test_resolution_names() -> None:
    assert [resolution_name(ms) for ms in (10_000, 60_000, 3_600_000, 250)] == ["10s", "1m", "1h", "250ms"]


def test_stream_starts_only_counts_what_all_metrics_count() -> None:
    """`--metric-set stream_starts` folds only play_start; other event types pass through uncounted."""
    rng = random.Random(3)
    events: list[SimpleNamespace] = []
    for i in range(400):
        e = start(f"e{i}", BASE + i * 300 + rng.randrange(0, 20_000), rng.choice(["BR", "US"]))
        if i % 3:
            e.event_type, e.played_ms, e.bitrate_kbps = "heartbeat", 30_000, 3000
        events.append(e)
    totals = []
    for make in (folder, StreamStartsFolder):
        aggregator, store = PartitionAggregator("p", WINDOWS, make()), WindowStore(WINDOWS, ["p"])
        for e in events:
            aggregator.add(e)
        store.merge(aggregator.summary("finished"))
        totals.append(final_starts(store.finish(), "10s"))
    assert totals[0] == totals[1] == expected_starts([e for e in events if e.event_type == "play_start"], 10_000)


def test_a_partial_republish_carries_only_the_aggregates_that_changed() -> None:
    # Every aggregate an update carries is written to Redis and diffed for /metrics by its shard: a window whose
    # rows changed in one event type must not carry the aggregates of the others again.
    store = WindowStore(WINDOWS, ["p"])
    agg = PartitionAggregator("p", WINDOWS, folder())

    def playback(event_id: str, t: int, event_type: str, **fields: int) -> SimpleNamespace:
        # The same session as the start: no session opens, so concurrent streams stay as they are.
        return SimpleNamespace(
            **{**vars(start(event_id, t)), "session_id": "session-a", "event_type": event_type, **fields}
        )

    agg.add(start("a", BASE + 1_000))
    agg.add(playback("h", BASE + 2_000, "heartbeat", played_ms=1_000, bitrate_kbps=3_000))
    store.merge(agg.summary("active"))
    first = {u.resolution: u for u in store.publish()}
    assert {"played_ms", "stream_starts"} <= set(first["10s"].changes)
    agg.add(playback("r", BASE + 3_000, "rebuffer", rebuffer_ms=400))
    store.merge(agg.summary("active"))
    again = {u.resolution: u for u in store.publish()}
    for resolution in ("10s", "1m"):
        assert set(again[resolution].changes) == {"events", "rebuffers", "rebuffer_ms"}
        assert again[resolution].changes["rebuffer_ms"] == {("BR", "tv"): 400}


def test_windows_far_behind_the_newest_event_time_wait_for_their_final_write() -> None:
    # A catch-up: "fast" has read 10 minutes ahead of "slow", which holds every window since BASE open. Its
    # windows far behind the live edge change at every publish while "slow" sweeps through them; re-writing them
    # partial each time, in every shard, is what a catch-up cost. They are written once, final, with all of it.
    store, fast, slow = _fast_ahead_of_slow(600)
    store.merge(fast.summary("active"))
    edge = BASE + 599_000
    behind = edge - WINDOWS.allowed_lateness_ms - WINDOWS.coarse_ms  # the live edge's reach
    first = store.publish()
    assert first and not any(u.final for u in first)
    assert {u.window_end_ms >= behind for u in first} == {True}, "only windows at the live edge go out partial"
    # 10 s windows ending at or after 90 s before the newest event: from BASE + 500 s (it ends at 510 s >= 509 s).
    assert {u.window_start_ms for u in first if u.resolution == "10s"} == set(range(BASE + 500_000, edge, 10_000))
    published: list[WindowUpdate] = list(first)
    for step in range(60):  # "slow" catches up 10 s at a time
        slow.add(start(f"s{step}", BASE + step * 10_000 + 5_000, country="US"))
        store.merge(slow.summary("active"))
        published += store.publish()
    published += store.finish()
    old = [u for u in published if u.window_end_ms < behind]
    assert old and all(u.final for u in old), "a window behind the edge was re-written partial"
    assert len({(u.resolution, u.window_start_ms) for u in old}) == len(old), "written more than once"
    # Nothing is lost by waiting: every event is in the final windows.
    everything = [start(f"f{i}", BASE + i * 1000) for i in range(600)]
    everything += [start(f"s{s}", BASE + s * 10_000 + 5_000, country="US") for s in range(60)]
    assert final_starts(published, "10s") == expected_starts(everything, 10_000)
    assert final_starts(published, "1m") == expected_starts(everything, 60_000)


def test_windows_at_the_live_edge_are_published_partial_at_every_change() -> None:
    store = WindowStore(WINDOWS, ["p"])
    agg = PartitionAggregator("p", WINDOWS, folder())
    for i in range(5):
        agg.add(start(f"e{i}", BASE + i * 1000))
        store.merge(agg.summary("active"))
        partial = [u for u in store.publish() if u.resolution == "10s"]
        assert [(u.window_start_ms, u.final, u.changes["stream_starts"]) for u in partial] == [
            (BASE, False, {("BR", "tv", "c1"): i + 1})
        ]
