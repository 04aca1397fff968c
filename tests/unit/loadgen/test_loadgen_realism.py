"""The generated traffic looks like a streaming service: checked from the events alone, with plain loops."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from typing import Any

import pytest

from loadgen.api import generate
from loadgen.config import ModelParams
from loadgen.world import COUNTRIES

START_MS = 1_714_521_600_000  # a UTC midnight
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
OFFSET_MIN = {c.code: c.utc_offset_min for c in COUNTRIES}


@pytest.fixture(scope="module")
def many_sessions() -> list[dict[str, Any]]:
    """A day of short sessions: many attempts and funnels for few events (distributions per attempt)."""
    params = ModelParams(watch_median_ms=60_000, signup_share=0.1)
    return generate(
        seed=21, events=200_000, start_ms=START_MS, span_ms=DAY_MS, params=params, with_truth=False
    ).events()


@pytest.fixture(scope="module")
def default_traffic() -> list[dict[str, Any]]:
    """The default model for an hour (session lifecycles)."""
    return generate(seed=22, events=60_000, start_ms=START_MS, span_ms=HOUR_MS, rate=25.0, with_truth=False).events()


def by_session(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        if "session_id" in ev:
            sessions[ev["session_id"]].append(ev)
    return sessions


def test_start_failures_are_a_few_percent(many_sessions: list[dict[str, Any]]) -> None:
    counts = Counter(ev["event_type"] for ev in many_sessions)
    assert counts["play_attempt"] > 20_000
    share = counts["start_failure"] / (counts["start_failure"] + counts["play_start"])
    assert 0.015 < share < 0.04, share


def test_every_started_session_follows_the_lifecycle(default_traffic: list[dict[str, Any]]) -> None:
    ended = {"play_stop", "play_error"}
    checked = 0
    for events in by_session(default_traffic).values():
        types = [ev["event_type"] for ev in events]
        if types[0] != "play_attempt" or len(types) < 2:
            continue  # warm start (already playing when the run began) or cut off by the end of the run
        checked += 1
        assert types[1] in ("play_start", "start_failure"), types[:3]
        if types[1] == "start_failure":
            assert len(types) == 2
            continue
        assert "play_attempt" not in types[1:] and types.count("play_start") == 1
        for ev_type in types[2:-1]:
            assert ev_type not in ended  # nothing after the end
        # Pauses and resumes alternate.
        pr = [t for t in types if t in ("pause", "resume")]
        assert pr == ["pause", "resume"] * (len(pr) // 2) + (["pause"] if len(pr) % 2 else [])
        times = [ev["event_time_ms"] for ev in events]
        assert times == sorted(times)
    assert checked > 500


def test_sessions_end_in_stop_error_or_silence(many_sessions: list[dict[str, Any]]) -> None:
    last_types: Counter[str] = Counter()
    for events in by_session(many_sessions).values():
        types = [ev["event_type"] for ev in events]
        if (
            types[0] == "play_attempt"
            and "play_start" in types
            and events[-1]["event_time_ms"] < START_MS + DAY_MS - HOUR_MS
        ):
            last_types[types[-1] if types[-1] in ("play_stop", "play_error") else "silence"] += 1
    total = sum(last_types.values())
    assert last_types["play_stop"] / total > 0.85
    assert 0.01 < last_types["silence"] / total < 0.08
    assert last_types["play_error"] > 0


def test_heartbeats_every_30_seconds_within_a_session(default_traffic: list[dict[str, Any]]) -> None:
    gaps: Counter[int] = Counter()
    for events in by_session(default_traffic).values():
        beats = [ev["event_time_ms"] for ev in events if ev["event_type"] in ("play_start", "heartbeat")]
        gaps.update(b - a for a, b in itertools.pairwise(beats))
    assert sum(gaps.values()) > 10_000
    assert set(gaps) == {30_000}


def test_heartbeats_carry_played_time_and_bitrate(default_traffic: list[dict[str, Any]]) -> None:
    beats = [ev for ev in default_traffic if ev["event_type"] == "heartbeat"]
    played = [ev["played_ms"] for ev in beats]
    assert statistics.median(played) == 30_000  # most intervals are plain playback
    assert min(played) >= 0 and max(played) <= 30_000
    # Bitrates come from device ladders: TVs stream more than phones.
    tv = statistics.mean(ev["bitrate_kbps"] for ev in beats if ev["device_type"] == "tv")
    mobile = statistics.mean(ev["bitrate_kbps"] for ev in beats if ev["device_type"] == "mobile")
    assert tv > 2 * mobile


def test_bitrate_changes_move_along_the_ladder(default_traffic: list[dict[str, Any]]) -> None:
    for events in by_session(default_traffic).values():
        current = None
        for ev in events:
            if ev["event_type"] == "bitrate_change":
                assert ev["bitrate_kbps"] != ev["previous_bitrate_kbps"]
                if current is not None:
                    assert ev["previous_bitrate_kbps"] == current
                current = ev["bitrate_kbps"]
            elif ev["event_type"] == "heartbeat" and current is not None:
                assert ev["bitrate_kbps"] == current


def test_title_popularity_is_zipf(many_sessions: list[dict[str, Any]]) -> None:
    starts = Counter(ev["title_id"] for ev in many_sessions if ev["event_type"] == "play_start")
    counts = sorted(starts.values(), reverse=True)[:100]
    xs = [math.log(rank) for rank in range(1, len(counts) + 1)]
    ys = [math.log(c) for c in counts]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    assert -1.2 < slope < -0.8, slope


def test_more_viewing_in_the_local_evening_than_early_morning(many_sessions: list[dict[str, Any]]) -> None:
    per_hour: Counter[int] = Counter()
    per_country: dict[str, Counter[int]] = defaultdict(Counter)
    for ev in many_sessions:
        if ev["event_type"] == "play_attempt":
            local_hour = ((ev["event_time_ms"] // 60_000 + OFFSET_MIN[ev["country"]]) // 60) % 24
            per_hour[local_hour] += 1
            per_country[ev["country"]][local_hour] += 1
    evening = sum(per_hour[h] for h in (19, 20, 21, 22))
    early = sum(per_hour[h] for h in (3, 4, 5, 6))
    assert evening > 4 * early
    for country in ("US", "BR", "IN", "JP"):  # each country in its own time zone
        c = per_country[country]
        assert sum(c[h] for h in (19, 20, 21, 22)) > 2 * sum(c[h] for h in (3, 4, 5, 6)), country


def test_device_mix_and_startup_times(many_sessions: list[dict[str, Any]]) -> None:
    devices = Counter(ev["device_type"] for ev in many_sessions if ev["event_type"] == "play_attempt")
    total = sum(devices.values())
    assert len(devices) >= 5 and devices.most_common(1)[0][0] == "tv"
    assert all(n / total < 0.6 for n in devices.values())
    startup: dict[str, list[int]] = defaultdict(list)
    for ev in many_sessions:
        if ev["event_type"] == "play_start":
            startup[ev["device_type"]].append(ev["startup_ms"])
    assert statistics.median(startup["tv"]) > statistics.median(startup["mobile"])
    # Log-normal: the logs are symmetric (mean ~ median), the values are skewed (mean > median).
    logs = [math.log(v) for v in startup["tv"]]
    assert abs(statistics.mean(logs) - statistics.median(logs)) < 0.05
    assert statistics.mean(startup["tv"]) > 1.05 * statistics.median(startup["tv"])


def test_several_cdns_and_rebuffer_durations(default_traffic: list[dict[str, Any]]) -> None:
    cdns = Counter(ev["cdn"] for ev in default_traffic if ev["event_type"] == "play_start")
    assert len(cdns) >= 3
    stalls = [ev["rebuffer_ms"] for ev in default_traffic if ev["event_type"] == "rebuffer"]
    assert len(stalls) > 100
    assert 500 < statistics.median(stalls) < 3000 and max(stalls) > 3 * statistics.median(stalls)


def test_signup_funnel_drops_off_at_every_step(many_sessions: list[dict[str, Any]]) -> None:
    funnels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in many_sessions:
        if "signup_id" in ev:
            funnels[ev["signup_id"]].append(ev)
    steps: Counter[str] = Counter()
    for events in funnels.values():
        types = {ev["event_type"] for ev in events}
        if "signup_started" not in types or events[0]["event_time_ms"] > START_MS + DAY_MS - 2 * HOUR_MS:
            continue  # warm start, or too close to the end to have finished
        steps.update(types)
    started = steps["signup_started"]
    assert started > 1500
    assert 0.65 < steps["plan_selected"] / started < 0.80
    assert 0.72 < steps["payment_submitted"] / steps["plan_selected"] < 0.88
    assert 0.85 < steps["signup_completed"] / steps["payment_submitted"] < 0.97
    assert steps["signup_failed"] > 0


def test_signups_have_prices_in_local_currency(many_sessions: list[dict[str, Any]]) -> None:
    currency = {c.code: c.currency for c in COUNTRIES}
    prices: dict[tuple[str, str], set[int]] = defaultdict(set)
    reasons: Counter[str] = Counter()
    for ev in many_sessions:
        if ev["event_type"] == "signup_completed":
            assert ev["currency"] == currency[ev["country"]]
            prices[(ev["country"], ev["plan"])].add(ev["price_cents"])
        if ev["event_type"] == "signup_failed":
            reasons[ev["failure_reason"]] += 1
    assert all(len(p) == 1 for p in prices.values())  # a list price per country and plan
    assert prices[("US", "premium")] != prices[("US", "basic")]
    assert {"payment_declined", "abandoned"} <= set(reasons)
