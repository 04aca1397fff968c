"""The ground truth equals an independent recount of the produced file (plain json and simple loops here)."""

from __future__ import annotations

import argparse
import bisect
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from loadgen.truth_rows import iter_rows
from streampulse.loadgen_cli import add_arguments, run
from tests.unit.loadgen.test_loadgen_faults import classify

START_MS = 1_714_521_600_000
N = 40_000
WINDOWS = {"10s": 10_000, "1m": 60_000}
TIMEOUT_MS = 60_000
PLAYING = {"play_start", "heartbeat", "rebuffer", "bitrate_change", "pause", "resume"}
FAULTS = ["--jitter-ms", "3000", "--late-fraction", "0.01", "--late-by-ms", "90000"]
FAULTS += ["--duplicate-fraction", "0.02", "--malformed-fraction", "0.01"]
GENERATOR_ONLY = {"start_failures_by_cdn"}  # facts the events do not carry: not recountable from the file


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("truth")
    out, truth = tmp / "e.jsonl", tmp / "t.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--seed", "13", "--events", str(N), "--start", str(START_MS), "--span", "2h", "--signup-share", "0.2"]
    argv += ["--out", str(out), "--truth", str(truth), "--scenario", "cdn-outage-br", *FAULTS]
    assert run(parser.parse_args(argv)) == 0
    return out.read_bytes().splitlines(), json.loads(Path(truth).read_bytes())


def distinct_valid_events(lines: list[bytes]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    events = []
    for line in lines:
        if classify(line) != "valid":
            continue
        ev = json.loads(line)
        if ev["event_id"] not in seen:
            seen.add(ev["event_id"])
            events.append(ev)
    return events


def bump(cell: dict[str, Any], path: list[str], by: int = 1) -> None:
    node = cell
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = node.get(path[-1], 0) + by


def recount(
    events: list[dict[str, Any]], window_ms: int, every_event: list[dict[str, Any]] | None = None
) -> dict[tuple[int, str, str], dict[str, Any]]:
    """Every recountable truth metric, per (window start, country, device_type), from the events alone.

    A sign-up's plan and payment method are joined by signup_id from `every_event` (default: `events`).
    """
    method_of: dict[str, str] = {}
    plan_of: dict[str, str] = {}
    for ev in every_event if every_event is not None else events:
        if ev["event_type"] == "payment_submitted":
            method_of[ev["signup_id"]] = ev["payment_method"]
        if ev["event_type"] == "plan_selected":
            plan_of[ev["signup_id"]] = ev["plan"]
    cells: dict[tuple[int, str, str], dict[str, Any]] = defaultdict(dict)
    for ev in events:
        t = ev["event_time_ms"]
        cell = cells[(t - t % window_ms, ev["country"], ev["device_type"])]
        et = ev["event_type"]
        bump(cell, ["events", et])
        if et == "play_attempt":
            bump(cell, ["play_attempts"])
        elif et == "play_start":
            bump(cell, ["stream_starts", ev["cdn"]])
            bump(cell, ["title_starts", ev["title_id"]])
            bump(cell, ["startup_ms_sum"], ev["startup_ms"])
            bump(cell, ["startup_ms_count"])
        elif et == "start_failure":
            bump(cell, ["start_failures", ev["error_code"]])
        elif et == "play_error":
            bump(cell, ["playback_errors", ev["error_code"]])
        elif et == "rebuffer":
            bump(cell, ["rebuffers"])
            bump(cell, ["rebuffer_ms_sum"], ev["rebuffer_ms"])
        elif et == "heartbeat":
            bump(cell, ["played_ms_sum"], ev["played_ms"])
            bump(cell, ["heartbeat_played_ms_sum"], ev["played_ms"])
            bump(cell, ["heartbeat_bitrate_weighted_sum"], ev["played_ms"] * ev["bitrate_kbps"])
        elif et == "play_stop":
            bump(cell, ["played_ms_sum"], ev["played_ms"])
        elif et == "bitrate_change":
            if ev["bitrate_kbps"] < ev["previous_bitrate_kbps"]:
                bump(cell, ["bitrate_downshifts"])
        elif et == "signup_started":
            bump(cell, ["signups_started", ev["channel"]])
        elif et == "plan_selected":
            bump(cell, ["plans_selected", ev["channel"], ev["plan"]])
        elif et == "payment_submitted":
            bump(cell, ["payments_submitted", ev["payment_method"]])
        elif et == "signup_completed":
            bump(cell, ["signups_completed", ev["channel"], ev["plan"]])
            bump(cell, ["new_subscription_value_cents", ev["plan"], ev["currency"]], ev["price_cents"])
        elif et == "signup_failed":
            bump(cell, ["signups_failed", ev["channel"], ev["failure_reason"]])
            if ev["signup_id"] in plan_of:
                bump(cell, ["signups_failed_by_plan", plan_of[ev["signup_id"]]])
            if ev["failure_reason"] == "payment_declined":
                bump(cell, ["payment_declines", method_of[ev["signup_id"]]])
    # Zero sums are absent in the truth, like every zero.
    for cell in cells.values():
        for key in [k for k, v in cell.items() if v == 0]:
            del cell[key]
    return cells


def recount_concurrency(events: list[dict[str, Any]], window_ms: int) -> dict[tuple[int, str, str], int]:
    """Open sessions at each window end W: playing before W, not ended before W, last event within the timeout.

    Playing: its play_start, or (a session already playing when a warm start begins) any playing event.
    """
    sessions: dict[str, dict[str, Any]] = {}
    for ev in events:  # in event-time order
        if "session_id" not in ev:
            continue
        sid = ev["session_id"]
        if ev["event_type"] in PLAYING and sid not in sessions:
            sessions[sid] = {"times": [], "end": None, "where": (ev["country"], ev["device_type"])}
        if sid in sessions:
            sessions[sid]["times"].append(ev["event_time_ms"])
            if ev["event_type"] in ("play_stop", "play_error"):
                sessions[sid]["end"] = ev["event_time_ms"]
    counts: dict[tuple[int, str, str], int] = defaultdict(int)
    for s in sessions.values():
        times = s["times"]
        w = (times[0] // window_ms + 1) * window_ms
        while w <= times[-1] + TIMEOUT_MS:
            if s["end"] is not None and s["end"] < w:
                break
            last = times[bisect.bisect_left(times, w) - 1]
            if w - last <= TIMEOUT_MS:
                counts[(w - window_ms, *s["where"])] += 1
            w += window_ms
    return dict(counts)


@pytest.mark.parametrize("label", list(WINDOWS))
def test_aggregates_equal_a_recount_of_the_file(produced: tuple[list[bytes], dict[str, Any]], label: str) -> None:
    lines, truth = produced
    events = sorted(distinct_valid_events(lines), key=lambda e: e["event_time_ms"])
    assert len(events) == N
    window_ms = WINDOWS[label]
    expected = recount(events, window_ms)
    concurrency = recount_concurrency(events, window_ms)
    resolution = truth["windows"][label]
    assert resolution["window_ms"] == window_ms
    seen: set[tuple[int, str, str]] = set()
    starts = [w["start_ms"] for w in resolution["windows"]]
    assert starts == sorted(starts)
    for window in resolution["windows"]:
        assert window["end_ms"] == window["start_ms"] + window_ms
        for cell in window["cells"]:
            key = (window["start_ms"], cell["country"], cell["device_type"])
            assert key not in seen
            seen.add(key)
            got = {k: v for k, v in cell.items() if k not in ("country", "device_type", "concurrent_streams")}
            failures_by_cdn = got.pop("start_failures_by_cdn", {})
            assert sum(failures_by_cdn.values()) == sum(got.get("start_failures", {}).values())
            assert got == expected.get(key, {}), key
            assert cell.get("concurrent_streams") == concurrency.get(key), key
    assert {k for k, v in expected.items() if v} | set(concurrency) == seen


def test_late_aggregates_are_the_late_events_only(produced: tuple[list[bytes], dict[str, Any]]) -> None:
    lines, truth = produced
    late_ids = {e["event_id"] for e in truth["late"]["events"]}
    assert len(late_ids) == truth["late"]["count"] > 300
    every_event = distinct_valid_events(lines)
    events = [ev for ev in every_event if ev["event_id"] in late_ids]
    expected = recount(sorted(events, key=lambda e: e["event_time_ms"]), 60_000, every_event)
    got = {
        (w["start_ms"], c["country"], c["device_type"]): {
            k: v for k, v in c.items() if k not in ("country", "device_type", *GENERATOR_ONLY)
        }
        for w in truth["late"]["windows"]["1m"]["windows"]
        for c in w["cells"]
    }
    assert got == expected


def test_totals_and_rows(produced: tuple[list[bytes], dict[str, Any]]) -> None:
    lines, truth = produced
    events = distinct_valid_events(lines)
    by_type: dict[str, int] = defaultdict(int)
    for ev in events:
        by_type[ev["event_type"]] += 1
    assert {k: v for k, v in truth["totals"]["by_event_type"].items() if v} == by_type
    assert truth["totals"]["first_event_time_ms"] == min(ev["event_time_ms"] for ev in events)
    assert truth["format"] == "streampulse-loadgen-truth" and truth["version"] == 1
    assert truth["incidents"][0]["name"] == "br-cdn2-failures"
    # The flattened rows carry every dimension and add up to the same totals.
    rows = list(iter_rows(truth, "1m"))
    starts = sum(r.value for r in rows if r.metric == "stream_starts")
    assert starts == by_type["play_start"]
    row = next(r for r in rows if r.metric == "stream_starts")
    assert set(row.dims) == {"country", "device_type", "cdn"} and row.window_end_ms - row.window_start_ms == 60_000
    value_rows = [r for r in rows if r.metric == "new_subscription_value_cents"]
    assert value_rows and set(value_rows[0].dims) == {"country", "device_type", "plan", "currency"}


def test_the_recount_can_disagree(produced: tuple[list[bytes], dict[str, Any]]) -> None:
    lines, truth = produced
    events = sorted(distinct_valid_events(lines), key=lambda e: e["event_time_ms"])
    heartbeat = next(ev for ev in events if ev["event_type"] == "heartbeat")
    heartbeat["played_ms"] += 1
    expected = recount(events, 10_000)
    t = heartbeat["event_time_ms"]
    key = (t - t % 10_000, heartbeat["country"], heartbeat["device_type"])
    window = next(w for w in truth["windows"]["10s"]["windows"] if w["start_ms"] == key[0])
    cell = next(c for c in window["cells"] if (c["country"], c["device_type"]) == key[1:])
    assert cell["played_ms_sum"] != expected[key]["played_ms_sum"]
