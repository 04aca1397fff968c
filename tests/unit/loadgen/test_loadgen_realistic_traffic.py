"""Realistic-noise traffic (issue 15): each option shows in the events, and the ground truth stays exact.

Every test here fails on a generator without the option: Poisson counts have a variance equal to their mean,
the standard curve's peak/trough is about 15x, and a plain run has no weekend, burst, premiere or persistent
incident.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from loadgen.api import generate
from loadgen.config import LoadgenConfig, ModelParams
from loadgen.diurnal import DAY_MS, DiurnalTable, local_curve
from loadgen.incidents import load_scenario
from loadgen.model import Model
from loadgen.realism import RealismError, RealismParams, parse_realism, scenario_realism
from loadgen.traffic_shape import TrafficShape, weekday
from loadgen.world import COUNTRIES, DEVICE_TYPES
from streampulse.loadgen_cli import add_arguments, build_config, run
from tests.unit.loadgen.test_loadgen_truth import distinct_valid_events, recount, recount_concurrency

FRIDAY_MS = 1_714_694_400_000  # 2024-05-03T00:00:00Z, a Friday
HOUR_MS = 3_600_000
# Short sessions (attempt, start, stop): many arrivals for few events, so the counts below are cheap.
SHORT = ModelParams(diurnal=False, warm_start=False, watch_median_ms=5_000, watch_sigma=0.1, signup_share=0.0)


def attempts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event_type"] == "play_attempt"]


# --- overdispersion ---------------------------------------------------------------------------------


def dispersion_estimates(dispersion: float) -> list[float]:
    """Per country x device type with 5+ attempts a 10 s window: (variance - mean) / mean², an estimate of d²."""
    span = 20 * 60_000
    out = generate(
        seed=3,
        start_ms=FRIDAY_MS + 20 * HOUR_MS,
        span_ms=span,
        rate=100.0,
        params=SHORT,
        realism=RealismParams(dispersion=dispersion),
        with_truth=False,
    )
    counts: Counter[tuple[str, str, int]] = Counter()
    for e in attempts(out.events()):
        counts[(e["country"], e["device_type"], (e["event_time_ms"] - FRIDAY_MS) // 10_000)] += 1
    windows = range((20 * HOUR_MS) // 10_000, (20 * HOUR_MS + span) // 10_000)
    estimates = []
    for country in (c.code for c in COUNTRIES):
        for device in DEVICE_TYPES:
            series = [counts[(country, device, w)] for w in windows]
            mean = statistics.fmean(series)
            if mean >= 5:
                estimates.append((statistics.variance(series) - mean) / mean**2)
    assert len(estimates) >= 8
    return estimates


def test_overdispersed_counts_have_the_configured_dispersion() -> None:
    # d = 0.5: a window's variance is mean + mean²/4, i.e. 2.5x to 10x the mean for these cells.
    estimates = dispersion_estimates(0.5)
    assert 0.25 * 0.6 < statistics.median(estimates) < 0.25 * 1.5, estimates


def test_poisson_counts_do_not_pass_the_dispersion_test() -> None:
    # The same measure on plain arrivals: d² about 0, far below what the test above requires.
    estimates = dispersion_estimates(0.0)
    assert abs(statistics.median(estimates)) < 0.05, estimates


# --- the multipliers, exactly -----------------------------------------------------------------------


def shape(realism: RealismParams, start_ms: int = FRIDAY_MS) -> TrafficShape:
    return TrafficShape(realism, 1, start_ms, DiurnalTable(), 1.0, ())


def test_local_curve_has_the_configured_peak_trough_ratio() -> None:
    for ratio in (5.0, 8.0, 10.0):
        curve = local_curve(ratio)
        assert max(curve) / min(curve) == pytest.approx(ratio)
        assert statistics.fmean(curve) == pytest.approx(1.0)
    standard = local_curve()
    assert max(standard) / min(standard) > 15


def test_weekends_top_of_hour_and_drift_multiply_the_rate() -> None:
    s = shape(RealismParams(weekend_boost=1.25, top_of_hour_boost=0.3, drift_per_day=0.04))
    us = next(i for i, c in enumerate(COUNTRIES) if c.code == "US")  # UTC-5
    col = us * len(DEVICE_TYPES)

    def factor(t_ms: int) -> float:
        s.load(t_ms // 10_000)
        return s.row[col]

    friday_noon_local = FRIDAY_MS + 17 * HOUR_MS + 5 * 60_000  # 12:05 in the US, no burst
    saturday = friday_noon_local + DAY_MS
    assert weekday(friday_noon_local - 5 * HOUR_MS) == 4
    assert factor(saturday) / factor(friday_noon_local) == pytest.approx(1.25 * 1.04)
    top = FRIDAY_MS + 17 * HOUR_MS + 60_000  # 12:01 local
    assert factor(top) / factor(friday_noon_local) == pytest.approx(1.3 * 1.04 ** (-4 / 1440))
    # The week's mean rate stays the configured one: 5 weekdays and 2 boosted days average to 1.
    times = [friday_noon_local + d * DAY_MS for d in range(7)]
    days = [factor(t) / 1.04 ** ((t - FRIDAY_MS) / DAY_MS) for t in times]
    assert statistics.fmean(days) == pytest.approx(1.0)


def test_gamma_factors_are_per_cell_and_redrawn_every_period() -> None:
    s = shape(RealismParams(dispersion=0.3, dispersion_every_ms=60_000))
    s.load(FRIDAY_MS // 10_000)
    first = list(s.row)
    s.load(FRIDAY_MS // 10_000 + 5)  # the same minute: the same factors
    assert s.row == first
    s.load(FRIDAY_MS // 10_000 + 6)  # the next minute: new ones
    assert s.row != first
    assert len(set(first)) == len(first) == len(COUNTRIES) * len(DEVICE_TYPES)
    assert statistics.fmean(first) == pytest.approx(1.0, abs=0.15)


# --- the day in the events ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_us_days() -> list[dict[str, Any]]:
    """Local Friday and Saturday in the US (UTC-5): 5x peak/trough, weekend x1.5, top of the hour +50 %."""
    params = ModelParams(warm_start=False, watch_median_ms=5_000, watch_sigma=0.1, signup_share=0.0)
    out = generate(
        seed=4,
        start_ms=FRIDAY_MS + 5 * HOUR_MS,
        span_ms=2 * DAY_MS,
        rate=3.0,
        params=params,
        realism=RealismParams(peak_trough=5.0, weekend_boost=1.5, top_of_hour_boost=0.5),
        with_truth=False,
    )
    return [e for e in attempts(out.events()) if e["country"] == "US"]


def local_ms(event: dict[str, Any]) -> int:
    return int(event["event_time_ms"]) - 5 * HOUR_MS


def test_the_day_swings_by_the_peak_trough_ratio(two_us_days: list[dict[str, Any]]) -> None:
    hourly = Counter((local_ms(e) % DAY_MS) // HOUR_MS for e in two_us_days)
    ratio = max(hourly.values()) / min(hourly.values())
    # Hourly sums flatten the 5x minute curve a little; the standard curve gives about 13x.
    assert 3.8 < ratio < 6.0, sorted(hourly.items())


def test_weekends_are_busier(two_us_days: list[dict[str, Any]]) -> None:
    by_day = Counter(weekday(local_ms(e)) for e in two_us_days)
    assert set(by_day) == {4, 5}
    assert by_day[5] / by_day[4] == pytest.approx(1.5, rel=0.05)


def test_the_top_of_every_hour_bursts(two_us_days: list[dict[str, Any]]) -> None:
    minute = Counter((local_ms(e) % HOUR_MS) // 60_000 for e in two_us_days)
    first_two = (minute[0] + minute[1]) / 2
    rest = sum(minute[m] for m in range(2, 60)) / 58
    assert first_two / rest == pytest.approx(1.5, rel=0.08)


# --- premiere and persistent incident -----------------------------------------------------------------

PREMIERE = {
    "name": "br-premiere",
    "benign": True,
    "start": "+20m",
    "duration": "20m",
    "where": {"country": "BR", "title_rank": 1},
    "effect": {"starts_multiplier": 5},
}
PERSISTENT = {
    "name": "de-cdn-degraded",
    "start": "+30m",
    "persistent": True,
    "where": {"country": "DE"},
    "effect": {"starts_drop": 0.5},
}


@pytest.fixture(scope="module")
def premiere_hour() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out = generate(
        seed=6, start_ms=FRIDAY_MS, span_ms=HOUR_MS, rate=40.0, params=SHORT, incidents=[PREMIERE, PERSISTENT]
    )
    return attempts(out.events()), out.truth


def test_a_premiere_multiplies_its_titles_starts_in_its_country(
    premiere_hour: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    events, truth = premiere_hour
    premiere = next(i for i in truth["incidents"] if i["name"] == "br-premiere")
    config = LoadgenConfig(start_ms=FRIDAY_MS, seed=6, params=SHORT)
    (title,) = premiere["where"]["title_id"]
    assert title == Model(config).catalogue.ids[0] == config.title_at_rank(1)  # the most popular title
    start, end = premiere["start_ms"], premiere["end_ms"]
    inside: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    for e in events:
        if e["country"] == "BR":
            key = "title" if e["title_id"] == title else "other"
            (inside if start <= e["event_time_ms"] < end else outside)[key] += 1
    # Per minute, inside (20 min) against outside (40 min): the title x5, every other title unchanged.
    assert inside["title"] / 20 / (outside["title"] / 40) == pytest.approx(5.0, rel=0.2)
    assert inside["other"] / 20 / (outside["other"] / 40) == pytest.approx(1.0, rel=0.1)


def test_a_premiere_is_benign_and_a_persistent_incident_lasts_to_the_end(
    premiere_hour: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    events, truth = premiere_hour
    by_name = {i["name"]: i for i in truth["incidents"]}
    assert by_name["br-premiere"]["benign"] is True
    assert "persistent" not in by_name["br-premiere"]
    persistent = by_name["de-cdn-degraded"]
    assert persistent["persistent"] is True and "benign" not in persistent
    assert persistent["end_ms"] == truth["run"]["end_ms"] == FRIDAY_MS + HOUR_MS
    de = Counter(e["event_time_ms"] >= persistent["start_ms"] for e in events if e["country"] == "DE")
    # Half the attempts dropped from +30 min to the end: the last 30 minutes have about half the first 30's.
    assert de[True] / de[False] == pytest.approx(0.5, rel=0.12)


# --- the ground truth and the options -----------------------------------------------------------------


def test_truth_equals_a_recount_with_the_realistic_day_scenario(tmp_path: Path) -> None:
    out, truth_path = tmp_path / "e.jsonl", tmp_path / "t.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--seed", "9", "--events", "30000", "--start", str(FRIDAY_MS), "--span", "1d", "--signup-share", "0.2"]
    argv += ["--scenario", "realistic-day", "--dispersion", "0.4", "--out", str(out), "--truth", str(truth_path)]
    assert run(parser.parse_args(argv)) == 0
    truth = json.loads(truth_path.read_bytes())
    assert truth["run"]["realism"]["dispersion"] == 0.4  # the flag wins over the scenario's 0.2
    assert truth["run"]["realism"]["peak_trough"] == 8.0  # the scenario's
    assert {i["name"] for i in truth["incidents"] if i.get("benign")} == {"br-premiere"}
    assert {i["name"] for i in truth["incidents"] if i.get("persistent")} == {"mx-c1-degraded"}
    events = sorted(distinct_valid_events(out.read_bytes().splitlines()), key=lambda e: e["event_time_ms"])
    expected = recount(events, 60_000)
    concurrency = recount_concurrency(events, 60_000)
    got: dict[tuple[int, str, str], dict[str, Any]] = defaultdict(dict)
    for window in truth["windows"]["1m"]["windows"]:
        for cell in window["cells"]:
            key = (window["start_ms"], cell["country"], cell["device_type"])
            got[key] = {k: v for k, v in cell.items() if k not in ("country", "device_type", "start_failures_by_cdn")}
            assert got[key].pop("concurrent_streams", None) == concurrency.get(key), key
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}


def test_bad_options_stop_at_start_with_what_to_fix() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv, message in (
        (["--dispersion-every", "15s"], "multiple of 10 s"),
        (["--peak-trough", "0.5"], "from 1 to 1000"),
        (["--dispersion", "9"], r"from 0 \(Poisson\) to 5"),
    ):
        with pytest.raises(Exception, match=message):
            build_config(parser.parse_args(argv), now=FRIDAY_MS)
    with pytest.raises(RealismError, match="unknown traffic options"):
        parse_realism({"dispersoin": 1}, "scenario x")


def test_the_realistic_day_scenario_sets_traffic_and_incidents() -> None:
    assert scenario_realism("realistic-day")["peak_trough"] == 8.0
    assert scenario_realism("incident-day") == {}
    incidents = load_scenario("realistic-day")
    assert [i.name for i in incidents if i.benign] == ["br-premiere"]
    assert [i.name for i in incidents if i.persistent] == ["mx-c1-degraded"]
