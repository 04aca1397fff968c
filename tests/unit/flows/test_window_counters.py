"""The window counters and the startup histogram on /metrics, fed by a real window store."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from flows.fold.partition_aggregator import PartitionAggregator
from flows.fold.playback import PlaybackFolder
from flows.health import PipelineMetrics
from flows.window_counters import STARTUP_BUCKETS_MS, WINDOW_COUNTERS
from flows.windows.catalog import AGGREGATES
from flows.windows.sketch import bucket_of, bucket_value
from flows.windows.store import WindowStore, WindowUpdate, WindowValues
from settings.windows import WindowConfig

WINDOWS = WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000)
BASE = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
FINE = "10s"


def play_start(event_id: str, t: int, rng: random.Random) -> SimpleNamespace:
    return SimpleNamespace(
        event_id=event_id,
        event_type="play_start",
        event_time_ms=t,
        country=rng.choice(["BR", "US", "DE"]),
        device_type=rng.choice(["tv", "web"]),
        cdn=rng.choice(["c1", "c2"]),
        session_id=f"s-{event_id}",
        account_id="a",
        title_id="t1",
        startup_ms=rng.choice([0, 180, 999, 1000, 1001, 2600, 4200, 90_000, int(rng.lognormvariate(7.5, 0.6))]),
    )


def counter_values(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels.values()): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


class Flow:
    """One partition folded into a store, every publish exported to a fresh registry."""

    def __init__(self) -> None:
        self.aggregator = PartitionAggregator("p0", WINDOWS, PlaybackFolder(WINDOWS, session_timeout_ms=60_000))
        self.store = WindowStore(WINDOWS, ["p0"])
        self.metrics = PipelineMetrics(CollectorRegistry())
        self.updates: list[WindowUpdate] = []

    def feed(self, events: list[SimpleNamespace]) -> None:
        self.aggregator.add_all(events)
        self.store.merge(self.aggregator.summary("active"))
        self.publish(self.store.publish())

    def publish(self, updates: list[WindowUpdate]) -> None:
        self.updates += updates
        self.metrics.observe_windows(updates, FINE, 10.0)

    def starts(self) -> dict[tuple[str, ...], float]:
        return counter_values(self.metrics.registry, "streampulse_stream_starts_total")

    def final_values(self, aggregate: str) -> Counter[tuple[str, ...]]:
        """What the store finalized: the ground truth the counters must add up to."""
        totals: Counter[tuple[str, ...]] = Counter()
        for update in self.updates:
            if update.final and update.resolution == FINE and update.complete is not None:
                for dims, value in update.complete.get(aggregate, {}).items():
                    totals[tuple(str(d) for d in dims)] += value
        return totals


def test_counters_advance_at_every_publish_and_end_at_the_final_windows_exactly() -> None:
    rng = random.Random(11)
    flow = Flow()
    events = [play_start(f"e{i}", BASE + i * 97, rng) for i in range(2_000)]
    seen: dict[tuple[str, ...], float] = {}
    for i in range(0, len(events), 50):
        batch = events[i : i + 50]
        # Re-deliveries of events already counted: never a second count.
        batch += [events[j] for j in rng.sample(range(i + len(batch)), 5)]
        flow.feed(batch)
        now = flow.starts()
        # Monotonic per series, and fresh: what the open windows hold is already exported, final or not.
        assert all(now.get(labels, 0) >= value for labels, value in seen.items())
        assert sum(now.values()) == i + len(batch) - 5
        seen = now
    # An event for a window closed long ago is late: counted as such, never exported.
    flow.feed([play_start("late", BASE + 10, rng)])
    assert sum(flow.starts().values()) == len(events)
    flow.aggregator.add_all([])
    flow.store.merge(flow.aggregator.summary("finished"))
    flow.publish(flow.store.finish())
    expected = flow.final_values("stream_starts")
    assert sum(expected.values()) == len(events)
    assert flow.starts() == {dims: float(n) for dims, n in expected.items()}
    # Every window is final: nothing is remembered any more.
    assert flow.metrics.window_counters.windows_remembered == 0


def test_startup_histogram_is_the_sketch_coarsened() -> None:
    rng = random.Random(5)
    flow = Flow()
    events = [play_start(f"e{i}", BASE + i * 53, rng) for i in range(1_500)]
    for i in range(0, len(events), 100):
        flow.feed(events[i : i + 100])
    flow.store.merge(flow.aggregator.summary("finished"))
    flow.publish(flow.store.finish())
    registry = flow.metrics.registry
    for country, device in {(e.country, e.device_type) for e in events}:
        mine = [e.startup_ms for e in events if (e.country, e.device_type) == (country, device)]
        labels = {"country": country, "device_type": device}
        assert registry.get_sample_value("streampulse_startup_seconds_count", labels) == len(mine)
        for bound in STARTUP_BUCKETS_MS:
            # A startup lands by its sketch bucket's representative, within 1 % of it.
            expected = sum(1 for ms in mine if bucket_value(bucket_of(ms)) <= bound)
            assert (
                registry.get_sample_value("streampulse_startup_seconds_bucket", {**labels, "le": f"{bound / 1000:g}"})
                == expected
            ), bound
        total = registry.get_sample_value("streampulse_startup_seconds_sum", labels)
        assert total is not None
        assert abs(total - sum(mine) / 1000) <= 0.01 * sum(mine) / 1000


def test_a_counter_adds_its_dimensions_up_to_its_labels() -> None:
    # Sign-up counters keep one bounded dimension beyond country and device type; the rest is summed.
    metrics = PipelineMetrics(CollectorRegistry())
    dims: tuple[str, ...] = ("BR", "tv", "organic", "premium", "card")
    update = WindowUpdate(FINE, BASE, BASE + 10_000, False, {"signups_completed": {dims: 3}}, None, {}, BASE)
    metrics.observe_windows([update], FINE, 10.0)
    grown: WindowValues = {"signups_completed": {dims: 5, ("BR", "tv", "social", "premium", "paypal"): 2}}
    metrics.observe_windows([WindowUpdate(FINE, BASE, BASE + 10_000, True, grown, grown, {}, BASE)], FINE, 10.0)
    # The coarse window holds the same events again: not exported twice.
    metrics.observe_windows([WindowUpdate("1m", BASE, BASE + 60_000, True, grown, grown, {}, BASE)], FINE, 10.0)
    assert counter_values(metrics.registry, "streampulse_signups_completed_total") == {("BR", "tv", "premium"): 7.0}


def test_every_counter_has_a_stored_aggregate_and_a_label_it_holds() -> None:
    for spec in WINDOW_COUNTERS:
        assert spec.name.startswith("streampulse_") and not spec.name.endswith("_total")
        assert set(spec.labels) <= set(AGGREGATES[spec.aggregate].dims), spec.name
        assert not AGGREGATES[spec.aggregate].at_window_end, "a level is not a counter"
