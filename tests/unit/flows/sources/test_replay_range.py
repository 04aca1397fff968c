"""Replay: time and pace parsing, validation at start, the range's margins, the per-partition feed, progress."""

from __future__ import annotations

import argparse
import io
from types import SimpleNamespace
from typing import Any

import pytest

from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayFeed, ReplayProgress, ReplayRange, replay_range
from settings.errors import ConfigError
from settings.windows import WindowConfig
from streampulse.cli import main
from streampulse.processes import free_port
from streampulse.replay import pace, replay_of, time_ms

T0 = 1_795_420_800_000  # 2026-11-23T08:00:00Z
MINUTE = 60_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (str(T0), T0),
        ("2026-11-23T08:00:00Z", T0),
        ("2026-11-23T08:00:00.001Z", T0 + 1),
        ("2026-11-23T09:30:00+01:30", T0),
        ("2026-11-23 08:01:00+00:00", T0 + MINUTE),
    ],
)
def test_times_are_epoch_ms_or_iso_8601_with_a_zone(text: str, expected: int) -> None:
    assert time_ms(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("2026-11-23T08:00:00", "no time zone"),
        ("1795431600", "epoch seconds"),
        ("yesterday", "neither epoch milliseconds nor an ISO 8601 time"),
        ("-5", "neither"),
    ],
)
def test_bad_times_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        time_ms(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("max", None), ("MAX", None), ("original", 1.0), ("10x", 10.0), ("0.5x", 0.5), ("2 X", 2.0)]
)
def test_paces(text: str, expected: float | None) -> None:
    assert pace(text) == expected


@pytest.mark.parametrize("text", ["fast", "0x", "x", "10", "-2x"])
def test_bad_paces(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a pace"):
        pace(text)


def _args(**overrides: Any) -> argparse.Namespace:
    values = {
        "from_ms": T0,
        "to_ms": T0 + 10 * MINUTE,
        "live_namespace": "live",
        "timestamp_skew": MINUTE,
        "pace": None,
    }
    return argparse.Namespace(**{**values, **overrides})


@pytest.mark.parametrize(
    ("overrides", "namespace", "says"),
    [
        ({"to_ms": T0}, "replay-1", "must be after --from"),
        ({"from_ms": None}, "replay-1", "give the range to replay"),
        ({"from_ms": T0 + 10**12, "to_ms": T0 + 2 * 10**12}, "replay-1", "in the future"),
        ({}, "live", "is the live namespace"),
        ({"live_namespace": "prod"}, "prod", "is the live namespace"),
    ],
)
def test_replay_is_validated_at_start(overrides: dict[str, Any], namespace: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        replay_of(_args(**overrides), ReaderConfig(WindowConfig()), namespace, now_ms=T0 + 60 * MINUTE)


def test_replay_refuses_the_live_namespace_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # never reached: validation comes first
    with pytest.raises(SystemExit) as stopped:
        main(["replay", "--from", "2026-11-23T08:00:00Z", "--to", "2026-11-23T09:00:00Z", "--redis-url", redis_url])
    assert stopped.value.code == 2
    assert "is the live namespace" in capsys.readouterr().err


def test_margins_follow_the_live_settings() -> None:
    windows = WindowConfig(fine_ms=10_000, coarse_ms=MINUTE, allowed_lateness_ms=30_000)
    replay = replay_range(T0, T0 + 10 * MINUTE, windows, 60_000, 3_600_000, timestamp_skew_ms=5 * MINUTE, pace=2.0)
    assert replay.low_ms("playback") == T0 - 90_000  # lateness + coarse window covers the session timeout
    assert replay.low_ms("signup") == T0 - 2 * 3_600_000 - 90_000
    assert replay.seek_ms("playback") == T0 - 90_000 - 5 * MINUTE
    assert replay.stop_ms == T0 + 10 * MINUTE + 90_000
    long_sessions = replay_range(T0, T0 + MINUTE, windows, 10 * MINUTE, 0, 0)
    assert long_sessions.low_ms("playback") == T0 - 10 * MINUTE
    assert replay.inside(T0, T0 + MINUTE) and replay.inside(T0 + 9 * MINUTE, T0 + 10 * MINUTE)
    assert not replay.inside(T0 - 10_000, T0) and not replay.inside(T0 + 9 * MINUTE + 30_000, T0 + 10 * MINUTE + 30_000)
    with pytest.raises(ValueError, match="empty"):
        ReplayRange(T0, T0, (), 0, 0)


def _event(t: int) -> SimpleNamespace:
    return SimpleNamespace(event_time_ms=t)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_feed_drops_events_before_the_lead_and_stops_after_the_first_past_the_range() -> None:
    replay = ReplayRange(T0, T0 + 10 * MINUTE, (("playback", MINUTE),), 0, 90_000)
    added: list[int] = []
    progress = ReplayProgress(replay)
    feed = ReplayFeed(replay, "playback", "p#0", lambda e: added.append(e.event_time_ms), progress)
    times = [T0 - 2 * MINUTE, T0 - 30_000, T0, T0 + 5 * MINUTE, T0 + 10 * MINUTE, replay.stop_ms, T0 + MINUTE]
    for t in times:
        feed.add(_event(t))
    # Too old: dropped. In the lead, the range, after it: folded up to and with the first event past stop_ms.
    assert added == [T0 - 30_000, T0, T0 + 5 * MINUTE, T0 + 10 * MINUTE, replay.stop_ms]
    assert feed.past_range and feed.in_range == 2
    feed.report(read=len(times), finished=True)
    assert (progress.read, progress.aggregated, progress.in_range, progress.fraction) == (len(times), 5, 2, 1.0)


def test_pace_holds_events_ahead_of_the_paced_clock_in_partition_order() -> None:
    replay = ReplayRange(T0, T0 + 10 * MINUTE, (("playback", MINUTE),), 0, 0, pace=2.0)
    added: list[int] = []
    progress = ReplayProgress(replay, wall_clock=lambda: 1000.0)
    feed = ReplayFeed(replay, "playback", "p#0", lambda e: added.append(e.event_time_ms), progress)
    feed.add(_event(T0 - 30_000))  # the lead goes as fast as it can
    feed.add(_event(T0))  # the range begins: the paced clock starts now, at 1000 s
    feed.add(_event(T0 + MINUTE))  # a minute of event time at 2x: due 30 s later
    feed.add(_event(T0 + 10_000))  # behind an event that waits: waits too, order is kept
    assert added == [T0 - 30_000, T0] and feed.holding
    assert feed.release(1001.0) == pytest.approx(1030.0)
    assert feed.released == 0
    assert feed.release(1030.0) is None
    assert (feed.released, feed.holding) == (2, False)
    assert added == [T0 - 30_000, T0, T0 + MINUTE, T0 + 10_000]
    unpaced = ReplayFeed(
        ReplayRange(T0, T0 + MINUTE, (), 0, 0), "playback", "p#1", lambda e: None, ReplayProgress(replay)
    )
    unpaced.add(_event(T0 + 30_000))
    assert not unpaced.holding and unpaced.release(0.0) is None


def test_progress_is_printed_at_most_once_a_second_and_tracks_the_slowest_partition() -> None:
    replay = ReplayRange(T0, T0 + 10 * MINUTE, (), 0, 0)
    out, clock = io.StringIO(), _Clock()
    progress = ReplayProgress(replay, out=out, clock=clock)
    progress.register("a")
    progress.register("b")
    clock.now = 0.5
    progress.update("a", read=1000, aggregated=900, in_range=800, high_ms=T0 + 5 * MINUTE, finished=False)
    assert out.getvalue() == ""
    clock.now = 1.5
    progress.update("b", read=1000, aggregated=600, in_range=500, high_ms=T0 + MINUTE, finished=False)
    clock.now = 1.6
    progress.update("b", read=10, aggregated=10, in_range=10, high_ms=T0 + 2 * MINUTE, finished=False)
    lines = out.getvalue().splitlines()
    assert lines == [
        "replay: 2,000 events read, 1,300 in range, event time 2026-11-23 08:01:00 UTC (10.0% of the range), "
        "1,000 events/s aggregated"
    ]
    progress.update("b", read=0, aggregated=0, in_range=0, high_ms=T0 + 2 * MINUTE, finished=True)
    assert progress.reached_ms == T0 + 5 * MINUTE  # b finished: a is the slowest left
