"""The anomaly detector on synthetic windows: steps are caught, noise and drift are not, state stays small."""

from __future__ import annotations

import json
import math
import pickle
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.series import (
    ALL,
    CELL_FIELDS,
    FAILURES,
    PAYMENTS,
    PLAYED_MS,
    REBUFFERS,
    SERIES,
    STARTS,
    Cells,
    cell_inputs,
)
from flows.health import PipelineMetrics
from flows.windows.sketch import bucket_of
from loadgen.diurnal import local_curve

# A window's aggregates as the window store hands them over (sketch buckets are ints).
Values = dict[str, dict[tuple[Any, ...], int]]
T0 = 1_714_521_600_000
W = 10_000  # fine window, ms


def poisson(rng: random.Random, mean: float) -> int:
    """An exact Poisson draw (Knuth, in chunks so large means do not underflow)."""
    count = 0
    while mean > 0:
        chunk = min(mean, 500.0)
        mean -= chunk
        limit, product = math.exp(-chunk), rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
    return count


def binomial(rng: random.Random, n: int, q: float) -> int:
    return sum(1 for _ in range(n) if rng.random() < q)


def cell(**fields: int) -> list[int]:
    values = [0] * len(CELL_FIELDS)
    for name, value in fields.items():
        values[CELL_FIELDS.index(name)] = value
    return values


def run(
    detector: AnomalyDetector, windows: int, make: Callable[[int], Cells], first: int = 0
) -> tuple[list[AnomalyEvent], list[Detection]]:
    events: list[AnomalyEvent] = []
    detections: list[Detection] = []
    for w in range(first, first + windows):
        for detection in detector.observe_cells(T0 + w * W, T0 + (w + 1) * W, make(w)):
            events.extend(detection.events)
            detections.append(detection)
    return events, detections


def opened(events: Iterable[AnomalyEvent], series: str | None = None) -> list[AnomalyEvent]:
    return [e for e in events if e.state == "open" and (series is None or e.series == series)]


def window_of(event: AnomalyEvent) -> int:
    return (event.window_start_ms - T0) // W


def describe(events: Iterable[AnomalyEvent]) -> list[str]:
    return [f"{e.state} {e.series} {e.country}/{e.device_type} z={e.score} @{window_of(e)}" for e in events]


# --- steps are caught --------------------------------------------------------------------------------

STEP_AT, STEP_WINDOWS = 600, 60


def test_a_drop_in_stream_starts_opens_one_critical_down_anomaly_and_resolves() -> None:
    rng = random.Random(1)

    def make(w: int) -> Cells:
        mean = 10.0 if STEP_AT <= w < STEP_AT + STEP_WINDOWS else 50.0
        return {("BR", "tv"): cell(starts=poisson(rng, mean)), ("US", "tv"): cell(starts=poisson(rng, 50.0))}

    events, _ = run(AnomalyDetector(), STEP_AT + STEP_WINDOWS + 120, make)
    cell_events = [e for e in events if (e.country, e.device_type) == ("BR", "tv")]
    # Critical is judged with a margin of 2 standard errors on the opening horizon, which may still hold a window
    # from before the drop: then it opens as a warning and escalates with the next window.
    assert [e.state for e in cell_events if e.state != "escalated"] == ["open", "resolved"], describe(events)
    opening, resolving = cell_events[0], cell_events[-1]
    assert opening.series == "sps" and opening.direction == "down"
    assert window_of(next(e for e in cell_events if e.severity == "critical")) <= window_of(opening) + 1
    assert opening.score < -5
    # Two alarming windows of the last three open it: the step's second window, or the third at worst.
    assert STEP_AT + 1 <= window_of(opening) <= STEP_AT + 2
    # Starts per second over the horizon that opened it (which may still hold a window from before the drop).
    assert opening.expected == pytest.approx(5.0, rel=0.1)
    assert opening.observed is not None and opening.expected is not None
    assert opening.observed <= 0.5 * opening.expected
    # Quiet at the scale it was seen at (up to 6 windows here) for 12 windows: resolved within ~3 minutes of
    # the end, not only once the 30-window horizon has forgotten the drop.
    assert STEP_AT + STEP_WINDOWS + 12 <= window_of(resolving) <= STEP_AT + STEP_WINDOWS + 25
    # The country roll-up sees it too; the US and the device roll-up (half the traffic gone from one of two) too.
    assert {(e.country, e.device_type) for e in opened(events)} <= {("BR", "tv"), ("BR", ALL), (ALL, "tv"), (ALL, ALL)}
    assert not [e for e in events if e.country == "US"]


def test_a_failure_spike_opens_a_critical_up_anomaly_on_vsf_within_two_windows() -> None:
    rng = random.Random(2)

    def make(w: int) -> Cells:
        q = 0.12 if STEP_AT <= w < STEP_AT + STEP_WINDOWS else 0.02
        attempts = poisson(rng, 200.0)
        failures = binomial(rng, attempts, q)
        return {("IN", "mobile"): cell(starts=attempts - failures, failures=failures)}

    events, _ = run(AnomalyDetector(), STEP_AT + STEP_WINDOWS + 120, make)
    vsf = opened(events, "vsf_rate")
    assert len(vsf) == 4, describe(events)  # the cell and its three roll-ups, the same data
    for event in vsf:
        assert event.direction == "up" and event.severity == "critical" and event.score >= 5
        assert STEP_AT + 1 <= window_of(event) <= STEP_AT + 2
        assert event.expected == pytest.approx(0.02, rel=0.25)
        assert event.observed is not None and event.observed > 0.08
    assert not [e for e in opened(events) if e.series != "vsf_rate"], describe(events)


def test_a_moderate_rise_is_a_warning() -> None:
    rng = random.Random(3)

    def make(w: int) -> Cells:
        mean = 80.0 if STEP_AT <= w < STEP_AT + STEP_WINDOWS else 50.0
        return {("DE", "web"): cell(starts=poisson(rng, mean))}

    events, _ = run(AnomalyDetector(), STEP_AT + STEP_WINDOWS + 120, make)
    sps = [e for e in opened(events, "sps") if (e.country, e.device_type) == ("DE", "web")]
    assert len(sps) == 1, describe(events)
    assert sps[0].direction == "up" and sps[0].severity == "warning"  # +60 %: worth a look, not a page
    assert STEP_AT + 1 <= window_of(sps[0]) <= STEP_AT + 6


def test_rebuffers_and_playback_errors_are_judged_per_played_time() -> None:
    rng = random.Random(4)
    played = 1500 * 10_000  # 1500 sessions playing: ~4 played hours per window

    def make(w: int) -> Cells:
        storm = STEP_AT <= w < STEP_AT + STEP_WINDOWS
        rebuffers = poisson(rng, (40.0 if storm else 4.0) / 3_600_000 * played)
        errors = poisson(rng, 0.05 / 3_600_000 * played)
        return {
            ("US", "tv"): cell(
                starts=poisson(rng, 20.0),
                played_ms=played,
                rebuffers=rebuffers,
                rebuffer_ms=rebuffers * 1500,
                errors=errors,
            )
        }

    events, _ = run(AnomalyDetector(), STEP_AT + STEP_WINDOWS + 120, make)
    rebuffer = [e for e in opened(events, "rebuffer_ratio") if (e.country, e.device_type) == ("US", "tv")]
    assert len(rebuffer) == 1, describe(events)
    assert rebuffer[0].severity == "critical" and STEP_AT + 1 <= window_of(rebuffer[0]) <= STEP_AT + 2
    assert rebuffer[0].observed is not None and rebuffer[0].expected is not None
    assert rebuffer[0].observed > 5 * rebuffer[0].expected  # the ratio itself, ~10x
    assert not [e for e in opened(events) if e.series != "rebuffer_ratio"], describe(events)


def test_slow_startup_is_caught_from_the_sketch() -> None:
    rng = random.Random(5)
    detector = AnomalyDetector()
    events: list[AnomalyEvent] = []
    for w in range(STEP_AT + STEP_WINDOWS + 60):
        factor = 3.0 if STEP_AT <= w < STEP_AT + STEP_WINDOWS else 1.0
        sketch: dict[tuple[str, str, int], int] = {}
        starts = poisson(rng, 30.0)
        for _ in range(starts):
            key = ("JP", "tv", bucket_of(int(rng.lognormvariate(math.log(2000), 0.5) * factor)))
            sketch[key] = sketch.get(key, 0) + 1
        values: Values = {"stream_starts": {("JP", "tv", "c1"): starts}, "startup_ms_sketch": sketch}
        for detection in detector.observe(T0 + w * W, T0 + (w + 1) * W, values):
            events.extend(detection.events)
    startup = [e for e in opened(events, "startup_ms") if e.country == "JP" and e.device_type == "tv"]
    assert len(startup) == 1, describe(events)
    assert STEP_AT + 1 <= window_of(startup[0]) <= STEP_AT + 2
    # Critical (x2) with its margin of 2 standard errors: at once, or with the next window.
    mine = [e for e in events if e.anomaly_id == startup[0].anomaly_id]
    assert window_of(next(e for e in mine if e.severity == "critical")) <= window_of(startup[0]) + 1, describe(mine)
    assert startup[0].expected == pytest.approx(2000, rel=0.1)  # geometric mean ≈ median
    assert not [e for e in opened(events) if e.series != "startup_ms"], describe(events)


# --- noise, drift and small numbers are not ------------------------------------------------------------


def test_steady_poisson_and_binomial_noise_at_every_volume_raises_nothing() -> None:
    rng = random.Random(6)
    volumes = {"AA": 0.05, "BB": 0.5, "CC": 5.0, "DD": 50.0, "EE": 500.0}

    def make(w: int) -> Cells:
        cells: Cells = {}
        for country, mean in volumes.items():
            attempts = poisson(rng, mean)
            failures = binomial(rng, attempts, 0.03)
            played = int(mean * 300 * 10_000)
            payments = poisson(rng, mean / 10)
            cells[(country, "tv")] = cell(
                starts=attempts - failures,
                failures=failures,
                played_ms=played,
                rebuffers=poisson(rng, 3.0 / 3_600_000 * played),
                errors=poisson(rng, 0.05 / 3_600_000 * played),
                payments=payments,
                declines=binomial(rng, payments, 0.06),
                signups_started=poisson(rng, mean / 5),
                signups_completed=poisson(rng, mean / 10),
            )
        return cells

    events, detections = run(AnomalyDetector(), 4000, make)  # 11 hours of 10 s windows
    assert not events, describe(events)
    # ... and it was really judging: every series of the busy countries has a score.
    scored = {(s.series, s.country) for s in detections[-1].scores}
    assert {(spec.id, "EE") for spec in SERIES if spec.id != "startup_ms"} <= scored


def test_a_day_of_diurnal_drift_raises_nothing() -> None:
    rng = random.Random(7)
    curve = local_curve()  # per minute of the local day, mean 1: x6 from the 5 am trough to prime time

    def make(w: int) -> Cells:
        level = curve[(w * W // 60_000) % len(curve)]
        cells: Cells = {}
        for country, mean in (("BR", 20.0), ("MX", 2.0), ("US", 200.0)):
            attempts = poisson(rng, mean * level)
            failures = binomial(rng, attempts, 0.025)
            cells[(country, "tv")] = cell(starts=attempts - failures, failures=failures)
        return cells

    events, _ = run(AnomalyDetector(), 8640, make)
    assert not events, describe(events)


def test_small_denominators_never_flag() -> None:
    rng = random.Random(8)

    def make(w: int) -> Cells:
        # An attempt every few windows; in the "incident" every one of them fails, and a payment or two is
        # declined: no number of them within any horizon is enough to call it.
        attempts = 1 if rng.random() < 0.3 else 0
        failing = 300 <= w < 360
        failures = attempts if failing or rng.random() < 0.02 else 0
        payments = 1 if rng.random() < 0.05 else 0
        declines = payments if failing else 0
        return {
            ("ZA", "other"): cell(starts=attempts - failures, failures=failures, payments=payments, declines=declines)
        }

    events, _ = run(AnomalyDetector(), 1000, make)
    assert not opened(events, "vsf_rate") and not opened(events, "payment_failure_rate"), describe(events)


def test_nothing_is_judged_before_the_baseline_is_learned() -> None:
    rng = random.Random(9)
    detector = AnomalyDetector()
    # Failing from the very first window: with no baseline yet there is nothing to call it against.
    events, detections = run(
        detector,
        DetectorConfig().warmup_windows - 1,
        lambda w: {("FR", "tv"): cell(starts=10, failures=poisson(rng, 90))},
    )
    assert not events and not any(d.scores for d in detections)


# --- state ------------------------------------------------------------------------------------------


def _traffic(seed: int) -> Callable[[int], Cells]:
    rng = random.Random(seed)

    def make(w: int) -> Cells:
        cells: Cells = {}
        for country in ("BR", "US", "DE"):
            for device in ("tv", "mobile"):
                attempts = poisson(rng, 20.0)
                # A step in one cell, so there are open anomalies in the snapshot.
                q = 0.3 if country == "DE" and device == "tv" and 380 <= w < 450 else 0.02
                failures = binomial(rng, attempts, q)
                played = 200 * 10_000
                cells[(country, device)] = cell(
                    starts=attempts - failures, failures=failures, played_ms=played, rebuffers=poisson(rng, 0.5)
                )
        return cells

    return make


def test_state_is_one_small_record_per_series_and_does_not_grow() -> None:
    detector = AnomalyDetector()
    make = _traffic(10)
    run(detector, 600, make)
    size_early = len(pickle.dumps(detector.snapshot()))
    series_early = detector.series_count
    run(detector, 1400, make, first=600)
    # 3 countries x 2 devices + 3 + 2 + 1 roll-ups, 7 series each
    assert detector.series_count == series_early == 12 * len(SERIES)
    assert len(pickle.dumps(detector.snapshot())) <= size_early * 1.05
    # Bytes per series: ~1.6 KB, and each sps series' seasonal profiles (hour of the day and of the week,
    # minute of the hour: 252 bins x 3 numbers, ~7 KB; issue 15) spread over its group's 7 series.
    assert len(pickle.dumps(detector.snapshot())) / detector.series_count < 3500


def test_snapshot_restores_to_an_identical_continuation() -> None:
    make = _traffic(11)
    windows = [make(w) for w in range(800)]
    original = AnomalyDetector()
    run(original, 400, lambda w: windows[w])
    assert original.open_anomalies(), "the snapshot should be taken with anomalies open"
    # Plain data: it survives JSON (bytewax pickles it; JSON is the stricter test).
    restored = AnomalyDetector.restore(json.loads(json.dumps(original.snapshot())))
    assert restored.snapshot() == json.loads(json.dumps(original.snapshot()))
    events_a, detections_a = run(original, 400, lambda w: windows[w], first=400)
    events_b, detections_b = run(restored, 400, lambda w: windows[w], first=400)
    assert events_a == events_b
    assert [d.scores for d in detections_a] == [d.scores for d in detections_b]
    assert [e.state for e in events_a].count("resolved") >= 1


def test_windows_are_taken_in_order_and_gaps_are_empty_windows() -> None:
    detector = AnomalyDetector()
    first = detector.observe_cells(T0, T0 + W, {("BR", "tv"): cell(starts=5)})
    assert len(first) == 1
    assert detector.observe_cells(T0, T0 + W, {("BR", "tv"): cell(starts=5)}) == []  # a re-delivery: ignored
    # Three windows without a single event are never published: they count as empty.
    detections = detector.observe_cells(T0 + 4 * W, T0 + 5 * W, {("BR", "tv"): cell(starts=5)})
    assert [(d.window_start_ms - T0) // W for d in detections] == [1, 2, 3, 4]
    # Windows with none of the inputs (the tail of a backfill: only open sessions) are not zero traffic.
    assert detector.observe(T0 + 5 * W, T0 + 6 * W, {"concurrent_streams": {("BR", "tv"): 40}}) == []
    assert detector.observe_cells(T0 + 6 * W, T0 + 7 * W, {}) == []


def test_cell_inputs_sum_each_aggregate_over_its_extra_dimensions() -> None:
    values: Values = {
        "stream_starts": {("BR", "tv", "c1"): 3, ("BR", "tv", "c2"): 4},
        "start_failures": {("BR", "tv", "SF_X"): 1},
        "played_ms": {("BR", "tv"): 30_000},
        "rebuffers": {("BR", "tv"): 2},
        "payments_submitted": {("BR", "tv", "organic", "basic", "card"): 2},
        "payment_declines": {("BR", "tv", "organic", "basic", "card"): 1},
        "startup_ms_sketch": {("BR", "tv", bucket_of(1000)): 2},
        "title_starts": {("BR", "tv", "tt1"): 7},
    }
    cells = cell_inputs(values)
    assert list(cells) == [("BR", "tv")]
    got = cells[("BR", "tv")]
    assert (got[STARTS], got[FAILURES], got[PLAYED_MS], got[REBUFFERS], got[PAYMENTS]) == (7, 1, 30_000, 2, 2)
    assert got[CELL_FIELDS.index("startup_b")] == 2 * bucket_of(1000)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(horizons=(3, 1))
    with pytest.raises(ValueError):
        DetectorConfig(confirm_n=3, confirm_m=2)
    with pytest.raises(ValueError):
        DetectorConfig(z_resolve=6.0)


# --- /metrics ---------------------------------------------------------------------------------------


def test_prometheus_shows_scores_counts_and_open_anomalies() -> None:
    metrics = PipelineMetrics(CollectorRegistry())
    events, detections = run(
        AnomalyDetector(), STEP_AT + 3, lambda w: {("BR", "tv"): cell(starts=2 if w >= STEP_AT else 50, failures=1)}
    )
    for detection in detections:
        metrics.observe_detection(detection)
    registry = metrics.registry
    labels = {"series": "sps", "country": "BR", "device_type": "tv"}
    assert registry.get_sample_value("streampulse_anomaly_active", {**labels, "severity": "critical"}) == 1
    assert registry.get_sample_value("streampulse_anomalies_total", {"series": "sps", "severity": "critical"}) == 4
    score = registry.get_sample_value("streampulse_anomaly_score", labels)
    assert score is not None and score < -5
    assert registry.get_sample_value("streampulse_anomaly_score", {**labels, "series": "vsf_rate"}) is not None
    # Resolving removes the active sample.
    resolved = next(e for e in opened(events) if (e.country, e.device_type) == ("BR", "tv"))
    metrics.observe_detection(
        Detection(0, 1, [AnomalyEvent(**{**resolved.to_dict(), "state": "resolved", "resolved_ms": 1})])
    )
    assert registry.get_sample_value("streampulse_anomaly_active", {**labels, "severity": "critical"}) is None
