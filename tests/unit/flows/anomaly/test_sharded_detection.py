"""Detection sharded like the dataflow does it equals one detector watching everything, on the same windows.

Cells run on the shard that owns them (flows/sharding.py) and the roll-ups in a second stage fed with each
shard's sums once every shard has passed the window (flows/anomaly/steps.py); one `AnomalyDetector` with
roll-ups is the reference. Traffic: several countries and device types with noise, a drop in one cell, a
rise of start failures in one country, and cells that go quiet for a while.
"""

from __future__ import annotations

import random

import pytest

from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.steps import RollUpInput, RollUpLogic, ShardDetectorLogic, ShardOutput
from flows.sharding import ShardRouter
from flows.windows.store import ShardProgress, WindowUpdate, WindowValues

T0 = 1_714_521_600_000
FINE = 10_000
WINDOWS = 900
CELLS = [(c, d) for c in ("US", "BR", "DE", "IN", "JP") for d in ("tv", "mobile", "web")]


def _window(w: int, rng: random.Random) -> WindowValues:
    values: WindowValues = {"stream_starts": {}, "start_failures": {}, "played_ms": {}, "rebuffers": {}}
    for i, (country, device) in enumerate(CELLS):
        if country == "JP" and device == "web" and 300 <= w < 340:
            continue  # quiet for a while: no data at all in this cell
        starts = rng.randint(30, 50) + 10 * i
        if (country, device) == ("BR", "tv") and w >= 600:
            starts //= 4  # a drop in one cell
        failures = rng.randint(0, 3) + (25 if country == "DE" and 700 <= w < 760 else 0)
        values["stream_starts"][(country, device, "c1")] = starts
        values["start_failures"][(country, device, "SF_X")] = failures
        values["played_ms"][(country, device)] = starts * 60_000
        values["rebuffers"][(country, device)] = rng.randint(0, 4)
    return values


def _traffic() -> list[WindowValues]:
    rng = random.Random(7)
    return [_window(w, rng) for w in range(WINDOWS)]


def _key(event: AnomalyEvent) -> tuple[object, ...]:
    return (event.window_start_ms, event.series, event.country, event.device_type, event.state, event.severity)


def _single(traffic: list[WindowValues]) -> list[AnomalyEvent]:
    detector = AnomalyDetector()
    events: list[AnomalyEvent] = []
    for w, values in enumerate(traffic):
        for detection in detector.observe(T0 + w * FINE, T0 + (w + 1) * FINE, values):
            events += detection.events
    return events


def _sharded(traffic: list[WindowValues], shards: int, publish_every: int, alone: bool = False) -> list[AnomalyEvent]:
    router = ShardRouter(shards)
    cell_logic = [ShardDetectorLogic(None, alone=alone) for _ in range(shards)]
    roll_ups = RollUpLogic(None)
    outputs: list[ShardOutput] = []
    batches: list[list[WindowUpdate | ShardProgress]] = [[] for _ in range(shards)]
    for w, values in enumerate(traffic):
        start, end = T0 + w * FINE, T0 + (w + 1) * FINE
        for shard in range(shards):
            own = {
                aggregate: {dims: v for dims, v in rows.items() if router.shard_of(str(dims[0]), str(dims[1])) == shard}
                for aggregate, rows in values.items()
            }
            own = {aggregate: rows for aggregate, rows in own.items() if rows}
            if own:  # a shard publishes only windows it holds something of
                batches[shard].append(WindowUpdate("10s", start, end, True, own, own, {}, end, shard, shards))
            if w % publish_every == publish_every - 1 or w == len(traffic) - 1:
                batches[shard].append(ShardProgress(shard, shards, end, end))
                outputs += cell_logic[shard].on_batch(batches[shard])[0]
                batches[shard] = []
    events = [e for d in outputs if isinstance(d, Detection) for e in d.events]
    # The roll-up stage gets the shards' parts in any interleaving: here, shards in reverse order.
    parts = sorted((p for p in outputs if isinstance(p, RollUpInput)), key=lambda p: (p.final_through_ms, -p.shard))
    for part in parts:
        events += [e for d in roll_ups.on_batch([part])[0] if isinstance(d, Detection) for e in d.events]
    return events


@pytest.mark.parametrize(
    ("shards", "publish_every", "alone"), [(1, 1, True), (1, 1, False), (2, 1, False), (2, 7, False), (4, 3, False)]
)
def test_sharded_detection_equals_one_detector(shards: int, publish_every: int, alone: bool) -> None:
    traffic = _traffic()
    expected = sorted(map(_key, _single(traffic)))
    assert {(e[1], e[2], e[3]) for e in expected} >= {("sps", "BR", "tv"), ("vsf_rate", "DE", "all")}
    assert sorted(map(_key, _sharded(traffic, shards, publish_every, alone))) == expected


def _shard_batch(traffic: list[WindowValues], shard: int, shards: int) -> list[WindowUpdate | ShardProgress]:
    router = ShardRouter(shards)
    batch: list[WindowUpdate | ShardProgress] = []
    for w, values in enumerate(traffic):
        start, end = T0 + w * FINE, T0 + (w + 1) * FINE
        own = {
            aggregate: {dims: v for dims, v in rows.items() if router.shard_of(str(dims[0]), str(dims[1])) == shard}
            for aggregate, rows in values.items()
        }
        batch.append(WindowUpdate("10s", start, end, True, own, own, {}, end, shard, shards))
    return [*batch, ShardProgress(shard, shards, end, end)]


def test_the_last_shard_forwards_its_cells_to_the_roll_up_step_and_steps_no_detector() -> None:
    traffic = _traffic()[:40]
    first, last = ShardDetectorLogic(None), ShardDetectorLogic(None)
    first_out, _ = first.on_batch(_shard_batch(traffic, 0, 2))
    last_out, _ = last.on_batch(_shard_batch(traffic, 1, 2))
    assert sum(isinstance(o, Detection) for o in first_out) == 40  # shard 0 steps its own cells
    assert [type(o) for o in last_out] == [RollUpInput]  # shard 1 only forwards
    forwarded = last_out[0]
    assert isinstance(forwarded, RollUpInput) and len(forwarded.windows) == 40
    groups = set(next(iter(forwarded.windows.values()))[1])
    router = ShardRouter(2)
    cells = {g for g in groups if "all" not in g}
    assert cells and all(router.shard_of(*cell) == 1 for cell in cells)  # its own cells ...
    assert ("all", "all") in groups  # ... and its roll-up sums
    assert "detector" not in last.snapshot() and "detector" in first.snapshot()
    # A last shard resumed from a snapshot taken before it forwarded keeps stepping its own detector.
    earlier = ShardDetectorLogic({**first.snapshot(), "pending": []})
    more = _shard_batch(_traffic()[:41], 1, 2)[40:]
    assert sum(isinstance(o, Detection) for o in earlier.on_batch(more)[0]) == 1
