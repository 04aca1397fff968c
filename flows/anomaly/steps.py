"""The dataflow step that feeds final fine windows to the anomaly detector.

    WindowUpdate (from the window store) ──► final, fine, complete only ──► AnomalyLogic (one key) ──► Detection

One detector for all series, under one key like the window store: its input
is one update per fine window (every 10 s by default), so one worker has
plenty of time, and its state (flows/anomaly/detector.py) is plain data that
bytewax snapshots with the store's, so a restart resumes both at the same
window. The outputs — anomaly events and current scores — go to Kafka, Redis
and /metrics (sinks/anomaly_sink.py, sinks/prometheus.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import AnomalyEvent, Detection
from flows.windows.store import WindowUpdate
from settings.windows import WindowConfig

DETECTOR_KEY = "anomalies"

DetectorState = dict[str, Any]


class AnomalyLogic(StatefulBatchLogic[WindowUpdate, Detection, DetectorState]):
    """Feeds each final fine window, oldest first, to the detector; snapshots its plain state."""

    def __init__(self, resume: DetectorState | None, config: DetectorConfig | None = None) -> None:
        if resume is None:
            self._detector = AnomalyDetector(config)
        else:
            self._detector = AnomalyDetector.restore(resume, config)

    def on_batch(self, values: list[WindowUpdate]) -> tuple[list[Detection], bool]:
        detections: list[Detection] = []
        ordered = sorted(values, key=lambda update: update.window_start_ms)
        last = len(ordered) - 1
        for i, update in enumerate(ordered):
            assert update.complete is not None  # filtered upstream
            # Only the newest window's scores reach /metrics: a replay finalising hours at once skips the rest.
            detections += self._detector.observe(
                update.window_start_ms, update.window_end_ms, update.complete, scores=i == last
            )
        return detections, StatefulBatchLogic.RETAIN

    def snapshot(self) -> DetectorState:
        return self._detector.snapshot()


def is_final_fine(fine_resolution: str) -> Callable[[WindowUpdate], bool]:
    """A predicate keeping the final updates of the fine resolution that carry complete values."""

    def keep(update: WindowUpdate) -> bool:
        return update.final and update.resolution == fine_resolution and update.complete is not None

    return keep


def detect_anomalies(
    updates: Stream[WindowUpdate], windows: WindowConfig, config: DetectorConfig | None = None
) -> Stream[Detection]:
    """The detector's output for a stream of window updates (all resolutions, partial and final)."""
    finals = op.filter("final_fine_windows", updates, is_final_fine(windows.fine_name))
    keyed = op.key_on("one_detector", finals, lambda _update: DETECTOR_KEY)
    detections = op.stateful_batch("anomaly_detector", keyed, lambda resume: AnomalyLogic(resume, config))
    return op.map("drop_detector_key", detections, lambda key_detection: key_detection[1])


def anomaly_events(detections: Stream[Detection]) -> Stream[AnomalyEvent]:
    """The anomaly events (open, escalated, resolved, accepted) of every detection, in window order."""
    return op.flat_map("anomaly_events", detections, lambda detection: detection.events)
