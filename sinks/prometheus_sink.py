"""Exports published window values on this process's /metrics (the instruments: flows/health.py)."""

from __future__ import annotations

from collections.abc import Sequence

from flows.health import pipeline_metrics
from flows.windows.store import WindowUpdate
from settings.windows import WindowConfig
from sinks.base import WorkerSink, Writer


class PrometheusWindowWriter(Writer[WindowUpdate]):
    """Adds each batch of window updates to the process's counters and histograms."""

    def __init__(self, windows: WindowConfig) -> None:
        self._fine_resolution = windows.fine_name
        self._fine_seconds = windows.fine_ms / 1000

    def write(self, items: Sequence[WindowUpdate]) -> None:
        """Export the window values of freshly published updates."""
        pipeline_metrics().observe_windows(items, self._fine_resolution, self._fine_seconds)


class PrometheusWindowSink(WorkerSink[WindowUpdate]):
    """Bytewax sink exporting window values on this process's /metrics."""

    def __init__(self, windows: WindowConfig) -> None:
        super().__init__(lambda _worker: PrometheusWindowWriter(windows))
