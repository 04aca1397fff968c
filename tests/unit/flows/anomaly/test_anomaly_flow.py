"""The detector's dataflow steps: only final fine windows reach them, oldest first, and their snapshots are plain data."""

from __future__ import annotations

import json

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.steps import ShardDetectorLogic, anomaly_events, detect_anomalies
from flows.windows.store import ShardProgress, WindowUpdate, WindowValues
from settings.windows import WindowConfig

T0 = 1_714_521_600_000
FINE, COARSE = 10_000, 60_000
STEP_AT = 200


def _values(w: int) -> WindowValues:
    starts = 2 if w >= STEP_AT else 60
    return {"stream_starts": {("BR", "tv", "c1"): starts}, "start_failures": {("BR", "tv", "SF_X"): 1}}


def _update(w: int, resolution: str = "10s", final: bool = True, complete: bool = True) -> WindowUpdate:
    size = FINE if resolution == "10s" else COARSE
    values = _values(w)
    return WindowUpdate(
        resolution=resolution,
        window_start_ms=T0 + w * size,
        window_end_ms=T0 + (w + 1) * size,
        final=final,
        changes=values,
        complete=values if final and complete else None,
        late={},
        watermark_ms=T0 + (w + 4) * size,
    )


def _progress(w: int) -> ShardProgress:
    return ShardProgress(0, 1, T0 + (w + 4) * FINE, T0 + (w + 1) * FINE)


def test_the_step_feeds_final_fine_windows_and_publishes_their_anomalies() -> None:
    updates: list[WindowUpdate | ShardProgress] = []
    for w in range(STEP_AT + 4):
        updates.append(_update(w, final=False))  # partial: ignored
        updates.append(_update(w))
        if w % 6 == 5:
            updates.append(_update(w // 6, resolution="1m"))  # coarse: ignored
        updates.append(_progress(w))
    updates.append(_update(3, complete=False))  # a late re-publish of a final window: no complete values
    flow = Dataflow("anomaly_step")
    detections = detect_anomalies(
        op.input("in", flow, TestingSource(updates)), WindowConfig(fine_ms=FINE, coarse_ms=COARSE), ["only-shard"]
    ).detections
    got_detections: list[Detection] = []
    got_events: list[AnomalyEvent] = []
    op.output("detections", detections, TestingSink(got_detections))
    op.output("events", anomaly_events(detections), TestingSink(got_events))
    run_main(flow)  # type: ignore[no-untyped-call]
    # One shard: it watches its cells and their roll-ups in one step a window.
    assert [(d.window_start_ms - T0) // FINE for d in got_detections] == list(range(STEP_AT + 4))
    for scope in (("BR", "tv"), ("BR", "all"), ("all", "tv"), ("all", "all")):
        found = [e for e in got_events if (e.country, e.device_type) == scope]
        assert [(e.state, e.series, e.direction) for e in found] == [("open", "sps", "down")], scope
        assert (found[0].window_start_ms - T0) // FINE in (STEP_AT + 1, STEP_AT + 2)


def test_a_batch_is_taken_oldest_first_and_the_state_snapshots_as_plain_data() -> None:
    logic = ShardDetectorLogic(None)
    batch = [_update(w) for w in range(40)]
    out, _retain = logic.on_batch(list(reversed(batch)))
    detections = [d for d in out if isinstance(d, Detection)]
    assert [(d.window_start_ms - T0) // FINE for d in detections] == list(range(40))
    # Only the newest window's scores are kept: a backfill finalising hours at once exports one set.
    assert [bool(d.scores) for d in detections] == [False] * 39 + [True]
    snapshot = logic.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    resumed = ShardDetectorLogic(snapshot)
    more: list[WindowUpdate | ShardProgress] = [*(_update(w) for w in range(40, 60)), _progress(59)]
    assert resumed.on_batch(more)[0] == ShardDetectorLogic(snapshot).on_batch(more)[0]
