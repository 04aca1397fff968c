"""The pipeline-health document the flow writes for `streampulse top`, from batch summaries, without Kafka."""

from __future__ import annotations

import orjson

from flows.partials import BatchSummary, DeadLetter
from flows.pipeline_health import HealthTracker, NewestWindow
from flows.windows.store import WindowUpdate

T0 = 1_700_000_000_000


def summary(partition: str, consumed: int, bad: tuple[str, ...] = (), lag: int = -1, error: str = "") -> BatchSummary:
    rejects = [DeadLetter("t", 0, i, T0, None, b"x", reason, "") for i, reason in enumerate(bad)]
    return BatchSummary(
        partition=partition,
        high_event_time_ms=T0,
        state="active",
        rejects=rejects,
        consumed=consumed,
        lag=lag,
        kafka_error=error,
    )


def update(start_ms: int, final: bool, resolution: str = "10s") -> WindowUpdate:
    return WindowUpdate(resolution, start_ms, start_ms + 10_000, final, {}, None, {}, start_ms)


def test_totals_and_last_minute_figures_come_from_the_summaries() -> None:
    tracker = HealthTracker(started_ms=T0)
    tracker.observe(summary("p#0", 600, bad=("malformed_json", "bad_enum"), lag=40))
    tracker.observe(summary("p#1", 400, bad=("bad_enum",), lag=2))
    first = tracker.document(T0 + 10_000, watermark_ms=T0 - 5_000, late_total=3, duplicates_total=1, updates=[])
    assert first.events_consumed_total == 1000
    assert first.events_per_second == 100.0  # 1000 messages in the 10 s since the start
    assert (first.bad_events_total, first.bad_events_last_minute) == (3, 3)
    assert first.bad_events_by_reason == {"malformed_json": 1, "bad_enum": 2}
    assert (first.late_events_total, first.late_events_last_minute) == (3, 3)
    assert first.consumer_lag == 42 and first.partitions == {"active": 2}
    assert first.kafka_reachable and first.watermark_ms == T0 - 5_000

    # Seventy seconds later only what came in the last minute counts as "last minute".
    tracker.observe(summary("p#0", 120, bad=("bad_enum",)))
    later = tracker.document(T0 + 80_000, watermark_ms=T0, late_total=5, duplicates_total=1, updates=[])
    assert later.events_consumed_total == 1120
    assert later.events_per_second == 1.7  # 120 since the publish at +10 s, 70 s ago (the newest a minute old)
    assert later.bad_events_last_minute == 1 and later.late_events_last_minute == 2
    assert later.consumer_lag == 42  # a summary without a new measurement keeps the last one


def test_a_kafka_error_is_reported_until_the_partition_reports_without_one() -> None:
    tracker = HealthTracker(started_ms=T0)
    tracker.observe(summary("p#0", 0, error="all brokers down"))
    down = tracker.document(T0 + 1000, -1, 0, 0, [])
    assert not down.kafka_reachable and down.kafka_errors == {"p#0": "all brokers down"}
    tracker.observe(summary("p#0", 10))
    assert tracker.document(T0 + 2000, -1, 0, 0, []).kafka_reachable


def test_the_newest_window_per_resolution_and_whether_it_is_final() -> None:
    tracker = HealthTracker(started_ms=T0)
    updates = [update(T0, True), update(T0 + 10_000, False), update(T0, False, "1m"), update(T0 + 60_000, False)]
    health = tracker.document(T0, T0 + 15_000, 0, 0, updates)  # the last is ahead of the watermark
    assert health.newest_windows == {
        "10s": NewestWindow(T0 + 10_000, T0 + 20_000, False),
        "1m": NewestWindow(T0, T0 + 10_000, False),
    }
    # An older window finalised later does not replace the newest.
    health = tracker.document(T0 + 1000, T0 + 15_000, 0, 0, [update(T0, True)])
    assert health.newest_windows["10s"].start_ms == T0 + 10_000


def test_a_restored_stores_late_events_are_not_last_minutes() -> None:
    tracker = HealthTracker(started_ms=T0, late_at_start=50)
    health = tracker.document(T0 + 1000, -1, late_total=52, duplicates_total=0, updates=[])
    assert health.late_events_last_minute == 2 and health.late_events_total == 52


def test_the_document_is_plain_json() -> None:
    health = HealthTracker(started_ms=T0).document(T0, T0, 0, 0, [update(T0, False)])
    document = orjson.loads(orjson.dumps(health.to_dict()))
    assert document["newest_windows"]["10s"] == {"start_ms": T0, "end_ms": T0 + 10_000, "final": False}
    assert document["kafka_reachable"] is True and document["consumer_lag"] is None


def test_rejects_split_off_the_summary_count_the_same_as_rejects_still_attached() -> None:
    attached, split = HealthTracker(started_ms=T0), HealthTracker(started_ms=T0)
    batch = summary("p#0", 50, bad=("malformed_json", "bad_enum", "bad_enum"))
    light = batch.without_rejects()
    assert light.rejects == [] and light.rejected_by_reason == {"malformed_json": 1, "bad_enum": 2}
    assert len(batch.rejects) == 3  # the original keeps its letters: the dead-letter branch reads them
    attached.observe(batch)
    split.observe(light)
    assert attached.document(T0 + 1000, -1, 0, 0, []) == split.document(T0 + 1000, -1, 0, 0, [])
