"""Scripted incidents show in the ground truth exactly where and when they were scripted, and nowhere else."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from loadgen.api import Generated, generate
from loadgen.config import LoadgenConfig, ModelParams
from loadgen.incidents import IncidentError, load_scenario, parse_incidents, scenario_description, scenario_names

START_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z
MIN_MS = 60_000
SPAN_MS = 60 * MIN_MS
INCIDENT_START, INCIDENT_END = START_MS + 20 * MIN_MS, START_MS + 40 * MIN_MS
INCIDENTS: list[dict[str, Any]] = [
    {
        "name": "br-cdn2-failures",
        "start": "+20m",
        "duration": "20m",
        "where": {"country": "BR", "cdn": "c2"},
        "effect": {"start_failure_multiplier": 10},
    },
    {
        "name": "us-tv-rebuffers",
        "start": "+20m",
        "duration": "20m",
        "where": {"country": "US", "device_type": "tv"},
        "effect": {"rebuffer_multiplier": 8},
    },
    {
        "name": "in-mobile-outage",
        "start": "+20m",
        "end": INCIDENT_END,
        "where": {"country": "IN", "device_type": "mobile"},
        "effect": {"starts_drop": 0.8},
    },
    {
        "name": "gb-licence-errors",
        "start": "+20m",
        "duration": "20m",
        "where": {"country": "GB"},
        "effect": {"play_error_multiplier": 300, "play_error_code": "PE_LICENCE_OUTAGE"},
    },
    {
        "name": "de-declines",
        "start": "2024-05-01T12:20:00Z",
        "duration": "20m",
        "where": {"country": "DE"},
        "effect": {"payment_decline_multiplier": 8},
    },
    {
        "name": "jp-slow-startup",
        "start": "+20m",
        "duration": "20m",
        "where": {"country": "JP"},
        "effect": {"startup_ms_multiplier": 3},
    },
]
# Short sessions, many sign-ups and more start failures: enough of each in an hour for a few events.
PARAMS = ModelParams(watch_median_ms=60_000, signup_share=0.3, start_failure_rate=0.05)


def run(incidents: list[dict[str, Any]]) -> Generated:
    return generate(
        seed=31, start_ms=START_MS, span_ms=SPAN_MS, rate=40.0, params=PARAMS, incidents=incidents, windows_ms=(60_000,)
    )


@pytest.fixture(scope="module")
def with_incidents() -> Generated:
    return run(INCIDENTS)


@pytest.fixture(scope="module")
def without_incidents() -> Generated:
    return run([])


Cell = dict[str, Any]


def totals(
    truth: dict[str, Any], select: Callable[[Cell], bool], metric: Callable[[Cell], float]
) -> tuple[float, float]:
    """Sum of `metric` over the selected 1-minute cells inside the incident, and outside it (no margin)."""
    inside = outside = 0.0
    for window in truth["windows"]["1m"]["windows"]:
        start, end = window["start_ms"], window["end_ms"]
        is_inside = start >= INCIDENT_START and end <= INCIDENT_END
        is_outside = end <= INCIDENT_START or start >= INCIDENT_END
        for cell in window["cells"]:
            if select(cell):
                value = metric(cell)
                if is_inside:
                    inside += value
                elif is_outside:
                    outside += value
    return inside, outside


def where(country: str, device: str | None = None) -> Callable[[Cell], bool]:
    return lambda c: c["country"] == country and (device is None or c["device_type"] == device)


def test_start_failures_x10_on_br_c2_only_while_it_lasts(with_incidents: Generated) -> None:
    t = with_incidents.truth
    br = where("BR")
    fail_in, fail_out = totals(t, br, lambda c: c.get("start_failures_by_cdn", {}).get("c2", 0))
    start_in, start_out = totals(t, br, lambda c: c.get("stream_starts", {}).get("c2", 0))
    rate_in, rate_out = fail_in / (fail_in + start_in), fail_out / (fail_out + start_out)
    assert fail_in > 50 and fail_out > 20
    assert 6 < rate_in / rate_out < 16, (rate_in, rate_out)
    # Other CDNs in Brazil are untouched.
    other_in, _ = totals(t, br, lambda c: sum(v for k, v in c.get("start_failures_by_cdn", {}).items() if k != "c2"))
    starts_other_in, _ = totals(t, br, lambda c: sum(v for k, v in c.get("stream_starts", {}).items() if k != "c2"))
    assert other_in / (other_in + starts_other_in) < 2 * rate_out


def test_rebuffers_x8_for_us_tvs(with_incidents: Generated) -> None:
    t = with_incidents.truth
    rb_in, rb_out = totals(t, where("US", "tv"), lambda c: c.get("rebuffers", 0))
    hb_in, hb_out = totals(t, where("US", "tv"), lambda c: c.get("events", {}).get("heartbeat", 0))
    assert 4 < (rb_in / hb_in) / (rb_out / hb_out) < 12
    mob_in, mob_out = totals(t, where("US", "mobile"), lambda c: c.get("rebuffers", 0))
    mhb_in, mhb_out = totals(t, where("US", "mobile"), lambda c: c.get("events", {}).get("heartbeat", 0))
    assert 0.5 < (mob_in / mhb_in) / (mob_out / mhb_out) < 2


def test_dropped_starts_for_in_mobile(with_incidents: Generated, without_incidents: Generated) -> None:
    t, base = with_incidents.truth, without_incidents.truth
    attempts_in, attempts_out = totals(t, where("IN", "mobile"), lambda c: c.get("play_attempts", 0))
    base_in, base_out = totals(base, where("IN", "mobile"), lambda c: c.get("play_attempts", 0))
    assert base_in > 100
    assert 0.1 < attempts_in / base_in < 0.3  # 80 % of the attempts never happened
    assert attempts_out == base_out
    dropped = next(i for i in t["incidents"] if i["name"] == "in-mobile-outage")["dropped_attempts"]
    assert dropped == base_in - attempts_in or abs(dropped - (base_in - attempts_in)) < 0.1 * dropped


def test_error_spike_with_its_code_in_gb_only(with_incidents: Generated) -> None:
    t = with_incidents.truth

    def spike(c: Cell) -> int:
        return int(c.get("playback_errors", {}).get("PE_LICENCE_OUTAGE", 0))

    inside, outside = totals(t, where("GB"), spike)
    assert inside > 20 and outside == 0
    elsewhere = sum(spike(c) for w in t["windows"]["1m"]["windows"] for c in w["cells"] if c["country"] != "GB")
    assert elsewhere == 0


def test_payment_declines_x8_in_germany(with_incidents: Generated) -> None:
    t = with_incidents.truth
    declines_in, declines_out = totals(t, where("DE"), lambda c: sum(c.get("payment_declines", {}).values()))
    paid_in, paid_out = totals(t, where("DE"), lambda c: sum(c.get("payments_submitted", {}).values()))
    assert declines_in > 20
    assert 4 < (declines_in / paid_in) / (declines_out / paid_out) < 14


def test_slower_startup_in_japan(with_incidents: Generated) -> None:
    t = with_incidents.truth
    sum_in, sum_out = totals(t, where("JP"), lambda c: c.get("startup_ms_sum", 0))
    n_in, n_out = totals(t, where("JP"), lambda c: c.get("startup_ms_count", 0))
    assert 2.4 < (sum_in / n_in) / (sum_out / n_out) < 3.6


def test_the_truth_lists_every_incident_as_scripted(with_incidents: Generated) -> None:
    listed = {i["name"]: i for i in with_incidents.truth["incidents"]}
    assert list(listed) == [i["name"] for i in INCIDENTS]
    for inc in listed.values():
        assert (inc["start_ms"], inc["end_ms"]) == (INCIDENT_START, INCIDENT_END)
    assert listed["br-cdn2-failures"]["where"] == {"cdn": ["c2"], "country": ["BR"]}
    assert listed["br-cdn2-failures"]["effect"] == {"start_failure_multiplier": 10}


def test_events_outside_every_scope_are_byte_identical(with_incidents: Generated, without_incidents: Generated) -> None:
    scoped_countries = {"BR", "US", "IN", "GB", "DE", "JP"}

    def outside(messages: Generated) -> list[bytes]:
        return [m.value for m in messages.messages if json.loads(m.value)["country"] not in scoped_countries]

    a, b = outside(with_incidents), outside(without_incidents)
    assert len(a) > 10_000
    assert a == b
    # Inside a scope but outside the incident's time, sessions are unchanged too.
    early = [m.value for m in with_incidents.messages if m.delivery_ms < INCIDENT_START - 5 * MIN_MS]
    assert early == [m.value for m in without_incidents.messages if m.delivery_ms < INCIDENT_START - 5 * MIN_MS]


def test_every_ready_scenario_loads() -> None:
    names = scenario_names()
    assert {"cdn-outage-br", "incident-day"} <= set(names)
    for name in names:
        incidents = load_scenario(name)
        assert incidents and scenario_description(name)
        titles = LoadgenConfig(start_ms=START_MS).title_at_rank  # a premiere names a title by popularity
        for inc in incidents:
            inc.resolve(START_MS, START_MS + 24 * 60 * MIN_MS, titles)
    day = [i.resolve(START_MS) for i in load_scenario("incident-day")]
    assert len(day) >= 5 and max(i.end_ms for i in day) <= START_MS + 24 * 60 * MIN_MS


@pytest.mark.parametrize(
    ("incident", "message"),
    [
        (
            {"start": "+1m", "duration": "1m", "effect": {"rebuffer_multiplier": 2}, "where": {"planet": "x"}},
            "dimension",
        ),
        ({"start": "+1m", "duration": "1m", "effect": {"rebuffer_multiplier": -1}}, ">= 0"),
        ({"start": "+1m", "duration": "1m", "effect": {"starts_drop": 2}}, "0..1"),
        ({"start": "+1m", "effect": {"starts_drop": 0.5}}, "exactly one of duration, end and persistent"),
        ({"start": "tomorrow", "duration": "1m", "effect": {"starts_drop": 0.5}}, "ISO 8601"),
        (
            {"start": "+1m", "duration": "1m", "effect": {"starts_drop": 0.5}, "where": {"device_type": "fridge"}},
            "not one of",
        ),
        ({"start": "+1m", "duration": "1m", "effect": {"starts_drop": 0.5}, "where": {"country": "br"}}, "upper-case"),
        ({"start": "+1m", "duration": "1m", "effect": {}}, "non-empty"),
    ],
)
def test_bad_incidents_are_rejected_with_a_reason(incident: dict[str, Any], message: str) -> None:
    with pytest.raises(IncidentError, match=message):
        parse_incidents([{"name": "x", **incident}])


def test_incident_dimensions_apply_to_their_family_only() -> None:
    incidents = parse_incidents(
        [
            {
                "name": "cards",
                "start": "+0m",
                "duration": "1h",
                "where": {"payment_method": "card"},
                "effect": {"start_failure_multiplier": 50},
            }
        ]
    )
    g = generate(seed=3, events=20_000, start_ms=START_MS, span_ms=SPAN_MS, incidents=incidents, with_truth=False)
    base = generate(seed=3, events=20_000, start_ms=START_MS, span_ms=SPAN_MS, with_truth=False)
    # Playback sessions have no payment method: a card-scoped incident cannot touch them.
    assert [m.value for m in g.messages] == [m.value for m in base.messages]
    assert Counter(m.kind for m in g.messages) == {"valid": 20_000}
