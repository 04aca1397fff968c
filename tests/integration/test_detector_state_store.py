"""The live detectors' saved states in real Redis: written part by part, found only whole, trimmed, expiring.

And what a replay makes of them at start (streampulse/replay_detector.py):
warm from the newest whole state at or before `--from`, cut for another shard
count, or cold with the reason — no state, `--detector-start cold`, a state this
version cannot read.
"""

from __future__ import annotations

import random

import pytest
import redis

from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.warm_start import ROLL_UP_PART, DetectorSnapshot, SavedState
from flows.sharding import ShardRouter
from sinks.detector_state import RedisDetectorStateWriter, newest_state
from sinks.redis_layout import detector_state_key, detector_states_key
from streampulse.replay_detector import detector_start
from tests.conftest import Stack

pytestmark = pytest.mark.integration

T0 = 1_714_521_600_000
FINE = 10_000
HOUR = 3_600_000


def _snapshots(earlier_layout: bool = False) -> dict[str, DetectorSnapshot]:
    """A 2-shard cluster's parts after 40 windows: shard 0's cells (US), and the roll-ups with shard 1's (DE).

    `earlier_layout`: as saved before the last shard's cells stepped with the roll-ups, shard 1's cells in a
    part of their own.
    """
    rng = random.Random(5)
    detectors = {"0": AnomalyDetector(roll_up=False), ROLL_UP_PART: AnomalyDetector(roll_up=False)}
    if earlier_layout:
        detectors["1"] = AnomalyDetector(roll_up=False)
    for w in range(40):
        start = T0 + w * FINE
        us, de = rng.randint(40, 60), rng.randint(40, 60)
        detectors["0"].observe(start, start + FINE, {"stream_starts": {("US", "tv", "c"): us}}, scores=False)
        rolled = {
            ("all", "tv", "c"): us + de,
            ("US", "all", "c"): us,
            ("DE", "all", "c"): de,
            ("all", "all", "c"): us + de,
        }
        last_shard = {("DE", "tv", "c"): de}
        if earlier_layout:
            detectors["1"].observe(start, start + FINE, {"stream_starts": last_shard}, scores=False)
        else:
            rolled.update(last_shard)
        detectors[ROLL_UP_PART].observe(start, start + FINE, {"stream_starts": rolled}, scores=False)
    return {part: detector.snapshot() for part, detector in detectors.items()}


def _write(writer: RedisDetectorStateWriter, through: int, parts: dict[str, DetectorSnapshot], only: set[str]) -> None:
    writer.write([SavedState(part, 2, through, snapshot) for part, snapshot in parts.items() if part in only])


def test_states_are_found_whole_newest_at_or_before_the_time_trimmed_and_expiring(
    stack: Stack, unique_name: str
) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    namespace = f"test-{unique_name}"
    writer = RedisDetectorStateWriter(client, namespace, ttl_s=600, kept=3)
    parts = _snapshots()
    every = set(parts)
    _write(writer, T0 + HOUR, parts, every)
    _write(writer, T0 + 2 * HOUR, parts, {ROLL_UP_PART})  # shard 0 has not written its part yet

    assert newest_state(client, namespace, T0 + HOUR - 1).state is None
    found = newest_state(client, namespace, T0 + 3 * HOUR)
    assert found.state is not None and found.state.through_ms == T0 + HOUR and found.incomplete == 1
    assert found.state.shards == 2 and found.state.decoded() == parts  # exactly what was saved

    _write(writer, T0 + 2 * HOUR, parts, {"0"})
    _write(writer, T0 + 2 * HOUR, parts, {"0"})  # written again (a restart): the same value
    found = newest_state(client, namespace, T0 + 3 * HOUR)
    assert found.state is not None and found.state.through_ms == T0 + 2 * HOUR and found.incomplete == 0

    for hour in (3, 4):
        _write(writer, T0 + hour * HOUR, parts, every)
    kept = [m.decode() for m in client.zrange(detector_states_key(namespace), 0, -1)]  # type: ignore[union-attr]
    assert kept == [f"{T0 + hour * HOUR}:2" for hour in (2, 3, 4)]
    assert not client.exists(detector_state_key(namespace, T0 + HOUR, 2))  # trimmed with its index entry
    assert 0 < client.ttl(detector_state_key(namespace, T0 + 4 * HOUR, 2)) <= 600
    assert 0 < client.ttl(detector_states_key(namespace)) <= 600


def test_a_replay_starts_warm_from_a_whole_state_and_otherwise_cold_saying_why(stack: Stack, unique_name: str) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    live = f"live-{unique_name}"
    parts = _snapshots()
    through = T0 + 40 * FINE
    RedisDetectorStateWriter(client, live, ttl_s=600, kept=3).write(
        [SavedState(part, 2, through, snapshot) for part, snapshot in parts.items()]
    )

    warm, line = detector_start(client, live, "live", through, 2)
    assert line == "anomaly detector: warm from live state through 2024-05-01T00:06:40.000Z"
    assert warm is not None and warm.through_ms == through and warm.parts == parts

    warm, line = detector_start(client, live, "live", through + HOUR, 2)
    assert warm is not None and "3600 s before --from: those windows are a break" in line
    assert warm.detector("0").next_window_start is None

    warm, line = detector_start(client, live, "live", through, 1)  # the 2 shards' series in one detector
    assert warm is not None and line.endswith("saved by 2 shards and cut for 1")
    assert warm.detector("0").series_count == sum(len(part["series"]) for part in parts.values())

    warm, line = detector_start(client, live, "cold", through, 2)
    assert warm is None and line == "anomaly detector: cold: --detector-start cold"
    warm, line = detector_start(client, live, "live", through - 1, 2)
    assert warm is None and line.startswith("anomaly detector: cold: no live state at or before 2024-05-01T00:06:39")

    client.hset(detector_state_key(live, through, 2), "part:0", b"not a state")
    warm, line = detector_start(client, live, "live", through, 2)
    assert warm is None and "cannot be read by this version" in line


def test_a_state_saved_with_a_part_for_every_shard_starts_a_replay_warm_cut_into_todays_parts(
    stack: Stack, unique_name: str
) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    live = f"live-{unique_name}"
    parts = _snapshots(earlier_layout=True)
    through = T0 + 40 * FINE
    RedisDetectorStateWriter(client, live, ttl_s=600, kept=3).write(
        [SavedState(part, 2, through, snapshot) for part, snapshot in parts.items()]
    )
    warm, line = detector_start(client, live, "live", through, 2)
    assert warm is not None and line.endswith("saved with a part for every shard and cut for this version's parts")
    assert set(warm.parts) == {"0", ROLL_UP_PART}
    series = sorted(tuple(s[:3]) for part in warm.parts.values() for s in part["series"])
    assert series == sorted(tuple(s[:3]) for part in parts.values() for s in part["series"])
    # The last shard's cells (by today's routing) step with the roll-ups: their series are in that part.
    cells = [s for part in ("0", "1") for s in parts[part]["series"]]
    last_shard = [s for s in cells if ShardRouter(2).shard_of(s[1], s[2]) == 1]
    assert last_shard and len(last_shard) < len(cells)
    assert warm.detector(ROLL_UP_PART).series_count == len(parts[ROLL_UP_PART]["series"]) + len(last_shard)
