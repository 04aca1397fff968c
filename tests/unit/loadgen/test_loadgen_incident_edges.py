"""Incidents change the events whose event time is in [start, end), and nothing just before or just after.

One run with ten one-minute incidents of every effect kind (each kind on a
scope of its own, so they cannot interact) is compared with the same seed and
traffic without incidents. Effects that move, replace or remove the events of
an attempt or a funnel (start failures and their code, dropped starts,
startup slowdown, payment declines) must leave every such event outside the
incidents byte for byte as it was. Effects on playing sessions (rebuffers,
playback errors and their code) redraw the session's random numbers from the
first interval an incident cuts, so there the 10 s before each start and the
10 s after each end are compared statistically: the rate per playing session
must be the rate without incidents. The ground truth must say what the events
say.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

from loadgen.api import Generated, generate
from loadgen.config import ModelParams
from loadgen.incident_effects import place, rate_runs
from loadgen.incidents import parse_incidents
from loadgen.truth_rows import TruthRow, iter_rows

START_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z: fixed, and the traffic is flat (no diurnal curve) anyway
EDGE_MS = 10_000
HEARTBEAT_MS = 30_000
# Ten one-minute incidents a minute apart: the edges add up to enough events to tell a leak from noise.
FIRST_AT_MS, EVERY_MS, LASTS_MS, REPEATS = 60_000, 120_000, 60_000, 10
SPAN_MS = FIRST_AT_MS + REPEATS * EVERY_MS
RANGES = [
    (START_MS + FIRST_AT_MS + k * EVERY_MS, START_MS + FIRST_AT_MS + k * EVERY_MS + LASTS_MS) for k in range(REPEATS)
]

# Every effect kind, each on a scope of its own. Payment declines are scoped by payment method: playback
# events have none, so that incident cannot touch them.
REBUFFERS = ["US"]
PLAY_ERRORS = ["BR", "MX", "CA"]
KINDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "rebuffers": ({"country": REBUFFERS}, {"rebuffer_multiplier": 4}),
    "play-errors": ({"country": PLAY_ERRORS}, {"play_error_multiplier": 3, "play_error_code": "PE_EDGE"}),
    "start-failures": ({"country": "GB"}, {"start_failure_multiplier": 10, "start_failure_error_code": "SF_EDGE"}),
    "dropped-starts": ({"country": "IN"}, {"starts_drop": 0.8}),
    "slow-startup": ({"country": "JP"}, {"startup_ms_multiplier": 4}),
    "declines": ({"payment_method": "card"}, {"payment_decline_multiplier": 8}),
}
INCIDENTS = [
    {"name": f"{kind}-{k}", "start": start, "end": end, "where": where, "effect": effect}
    for kind, (where, effect) in KINDS.items()
    for k, (start, end) in enumerate(RANGES)
]
# Flat traffic; many sign-ups; rebuffers and playback errors common enough to count at the edges.
PARAMS = ModelParams(
    watch_median_ms=300_000, signup_share=0.5, rebuffers_per_hour=20.0, play_errors_per_hour=12.0, diurnal=False
)


@cache
def run(with_incidents: bool) -> Generated:
    return generate(
        seed=47,
        start_ms=START_MS,
        span_ms=SPAN_MS,
        rate=250.0,
        params=PARAMS,
        incidents=INCIDENTS if with_incidents else [],
        windows_ms=(EDGE_MS,),
    )


@cache
def events(with_incidents: bool) -> list[Event]:
    return run(with_incidents).events()


@pytest.fixture(scope="module")
def with_incidents() -> Generated:
    return run(True)


@pytest.fixture(scope="module")
def without_incidents() -> Generated:
    return run(False)


Event = dict[str, Any]


def inside(t: int) -> bool:
    return any(start <= t < end for start, end in RANGES)


def before_start(t: int, span_ms: int = EDGE_MS) -> bool:
    return any(start - span_ms <= t < start for start, _ in RANGES)


def after_end(t: int, span_ms: int = EDGE_MS) -> bool:
    return any(end <= t < end + span_ms for _, end in RANGES)


def select(with_incidents: bool, keep: Callable[[Event], bool]) -> list[Event]:
    return [e for e in events(with_incidents) if keep(e)]


ATTEMPT_TYPES = frozenset({"play_attempt", "play_start", "start_failure"})


def attempts_in(country: str) -> Callable[[Event], bool]:
    return lambda e: e["country"] == country and e["event_type"] in ATTEMPT_TYPES


def assert_unchanged_outside(keep: Callable[[Event], bool], at_least: int) -> None:
    """The kept events outside every incident are the same, field for field, with and without incidents."""
    a = select(True, lambda e: keep(e) and not inside(e["event_time_ms"]))
    b = select(False, lambda e: keep(e) and not inside(e["event_time_ms"]))
    assert len(b) >= at_least
    assert sorted(a, key=lambda e: e["event_id"]) == sorted(b, key=lambda e: e["event_id"])


def count_inside(with_incidents: bool, keep: Callable[[Event], bool]) -> int:
    return len(select(with_incidents, lambda e: keep(e) and inside(e["event_time_ms"])))


def test_start_failures_change_only_inside_and_carry_their_code_there() -> None:
    assert_unchanged_outside(attempts_in("GB"), at_least=500)

    def failure(e: Event) -> bool:
        return bool(e["country"] == "GB" and e["event_type"] == "start_failure")

    coded = select(True, lambda e: failure(e) and e["error_code"] == "SF_EDGE")
    assert coded and all(inside(e["event_time_ms"]) for e in coded)
    assert count_inside(True, failure) > 4 * count_inside(False, failure) > 0  # the incident is there


def test_dropped_starts_only_inside_and_the_truth_counts_them(with_incidents: Generated) -> None:
    assert_unchanged_outside(attempts_in("IN"), at_least=500)
    attempts = Counter(e["event_type"] for e in select(True, attempts_in("IN")))
    base = Counter(e["event_type"] for e in select(False, attempts_in("IN")))
    dropped = sum(i["dropped_attempts"] for i in with_incidents.truth["incidents"] if i["name"].startswith("dropped"))
    # Arrivals draw the same numbers with or without incidents: every missing attempt is a dropped one.
    assert dropped == base["play_attempt"] - attempts["play_attempt"] > 0
    assert count_inside(True, attempts_in("IN")) < 0.4 * count_inside(False, attempts_in("IN"))


def test_slow_startup_only_inside() -> None:
    assert_unchanged_outside(attempts_in("JP"), at_least=500)

    def mean_startup_inside(with_incidents: bool) -> float:
        starts = select(
            with_incidents,
            lambda e: e["country"] == "JP" and e["event_type"] == "play_start" and inside(e["event_time_ms"]),
        )
        return sum(int(e["startup_ms"]) for e in starts) / len(starts)

    assert mean_startup_inside(True) > 2.5 * mean_startup_inside(False)


def test_payment_declines_only_inside() -> None:
    assert_unchanged_outside(lambda e: "signup_id" in e, at_least=5000)

    def decline(e: Event) -> bool:
        return e.get("failure_reason") == "payment_declined"

    assert count_inside(True, decline) > 3 * count_inside(False, decline) > 0


Rates = dict[str, tuple[int, int]]


def edge_rates(truth: dict[str, Any], countries: list[str], count: Callable[[TruthRow], int]) -> Rates:
    """(occurrences, heartbeats) of some countries: in the 10 s before every start, after every end, and inside.

    Occurrences count over the 10 s; heartbeats over a full heartbeat interval there (the 30 s before each
    start, after each end), where every playing session sends one: they measure how many sessions play.
    """
    out = {"before": [0, 0], "after": [0, 0], "inside": [0, 0]}
    for row in iter_rows(truth, "10s"):
        if row.dims["country"] not in countries:
            continue
        t = row.window_start_ms
        if row.metric == "events" and row.dims["event_type"] == "heartbeat":
            where = "before" if before_start(t, HEARTBEAT_MS) else "after" if after_end(t, HEARTBEAT_MS) else None
            where = "inside" if inside(t) else where
            if where is not None:
                out[where][1] += row.value
        n = count(row)
        if n:
            where = "before" if before_start(t) else "after" if after_end(t) else "inside" if inside(t) else None
            if where is not None:
                out[where][0] += n
    return {k: (v[0], v[1]) for k, v in out.items()}


def like_no_incident(observed: tuple[int, int], base: tuple[int, int]) -> bool:
    """Whether a count per heartbeat is that of the run without incidents, within 4 standard deviations.

    Counts are Poisson-like: the expected count is the base rate times the observed heartbeats, and the
    difference's variance is at most the sum of both terms' variances.
    """
    n, heartbeats = observed
    n_base, hb_base = base
    scale = heartbeats / hb_base
    expected = n_base * scale
    return abs(n - expected) <= 4 * math.sqrt(expected + n_base * scale * scale) + 1


def rebuffers(row: TruthRow) -> int:
    return int(row.value) if row.metric == "rebuffers" else 0


def play_errors(row: TruthRow) -> int:
    return int(row.value) if row.metric == "playback_errors" else 0


SESSION_EFFECTS = [(REBUFFERS, rebuffers), (PLAY_ERRORS, play_errors)]


@pytest.mark.parametrize(("countries", "count"), SESSION_EFFECTS, ids=["rebuffers", "play-errors"])
def test_session_effects_look_like_no_incident_at_the_edges(
    with_incidents: Generated, without_incidents: Generated, countries: list[str], count: Callable[[TruthRow], int]
) -> None:
    edges = edge_rates(with_incidents.truth, countries, count)
    base = edge_rates(without_incidents.truth, countries, count)
    assert base["before"][0] > 100 and base["after"][0] > 100, base  # enough to tell a leak from noise
    assert like_no_incident(edges["before"], base["before"]), (edges, base)
    assert like_no_incident(edges["after"], base["after"]), (edges, base)
    # ... and the incident is there in between.
    rate_in, base_in = edges["inside"][0] / edges["inside"][1], base["inside"][0] / base["inside"][1]
    assert rate_in > 2 * base_in, (edges, base)


def test_extra_playback_errors_carry_their_code_only_inside() -> None:
    coded = select(True, lambda e: e.get("error_code") == "PE_EDGE")
    assert len(coded) > 50
    assert all(inside(e["event_time_ms"]) and e["country"] in PLAY_ERRORS for e in coded)


def test_the_truth_agrees_with_the_events_at_the_edges(with_incidents: Generated) -> None:
    for countries, event_type, count in ((REBUFFERS, "rebuffer", rebuffers), (PLAY_ERRORS, "play_error", play_errors)):
        truth = edge_rates(with_incidents.truth, countries, count)
        evs = [e for e in events(True) if e["country"] in countries and e["event_type"] == event_type]
        assert truth["before"][0] == sum(before_start(e["event_time_ms"]) for e in evs) > 0
        assert truth["after"][0] == sum(after_end(e["event_time_ms"]) for e in evs) > 0
    listed = [(i["start_ms"], i["end_ms"]) for i in with_incidents.truth["incidents"]]
    assert listed == [r for _ in KINDS for r in RANGES]


def test_attempt_and_signup_truth_is_unchanged_outside(with_incidents: Generated, without_incidents: Generated) -> None:
    """Outside the incidents, the truth of every attempt and sign-up metric is the truth without them."""
    metrics = {"play_attempts", "stream_starts", "start_failures", "startup_ms_sum", "startup_ms_count"}
    metrics |= {"payment_declines", "signups_failed", "signups_completed", "payments_submitted"}

    def outside_rows(g: Generated) -> list[Any]:
        return sorted(
            (r.metric, r.window_start_ms, sorted(r.dims.items()), r.value)
            for r in iter_rows(g.truth, "10s")
            if r.metric in metrics and r.dims["country"] in ("GB", "IN", "JP", "DE") and not inside(r.window_start_ms)
        )

    a, b = outside_rows(with_incidents), outside_rows(without_incidents)
    assert len(b) > 1000
    assert a == b


def test_runs_place_occurrences_by_their_rate() -> None:
    incidents = tuple(
        i.resolve(0)
        for i in parse_incidents(
            [
                {"name": "x", "start": 100, "end": 200, "effect": {"rebuffer_multiplier": 3}},
                {"name": "y", "start": 150, "end": 400, "effect": {"rebuffer_multiplier": 0}},
            ]
        )
    )
    runs = rate_runs(incidents, "rebuffer_multiplier", 0, 500)
    assert runs == ((0, 100, 1.0), (100, 150, 3.0), (150, 200, 0.0), (200, 400, 0.0), (400, 500, 1.0))
    n = 10_000
    placed = Counter(place(runs, (i + 0.5) / n)[0] // 50 for i in range(n))
    # Weights: 100 ms x 1, 50 ms x 3, 100 ms x 1 = 350; none where the multiplier is 0.
    assert set(placed) == {0, 1, 2, 8, 9}
    assert abs(placed[2] - n * 150 / 350) <= 1
    assert abs(placed[0] + placed[1] - n * 100 / 350) <= 1
    # No incident starts or ends inside: one run, the plain uniform placement.
    assert rate_runs(incidents, "rebuffer_multiplier", 500, 600) == ((500, 600, 1.0),)
    assert place(((500, 600, 1.0),), 0.999) == (599, 1.0)
