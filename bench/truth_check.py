"""Folded windows against the load generator's ground truth, an hour of truth at a time.

The detector's inputs per (window, country, device_type) that the ground truth
also has (`TRUTH_OF`), recounted from the same events by the load generator's
truth builder (loadgen/truth.py) and compared with what the flows' own fold
made of them (bench/realistic_fold_day.py): a day's truth would not fit in
memory at once, so it is built and compared an hour at a time.
"""

from __future__ import annotations

from typing import Any

from bench.day_fold import SESSION_TIMEOUT_MS
from flows.anomaly.seasonal import HOUR_MS
from flows.anomaly.series import CELL_FIELDS, Cells
from loadgen.truth import TruthBuilder

# The detector inputs the ground truth also has: cell field -> (truth cell key, how deep its dict nests).
TRUTH_OF: dict[str, tuple[str, int]] = {
    "starts": ("stream_starts", 1),
    "failures": ("start_failures", 1),
    "played_ms": ("played_ms_sum", 0),
    "rebuffer_ms": ("rebuffer_ms_sum", 0),
    "rebuffers": ("rebuffers", 0),
    "errors": ("playback_errors", 1),
    "signups_started": ("signups_started", 1),
    "signups_completed": ("signups_completed", 2),
    "payments": ("payments_submitted", 1),
    "declines": ("payment_declines", 1),
    "startup_n": ("startup_ms_count", 0),
}
_CHECKED = [CELL_FIELDS.index(f) for f in TRUTH_OF]


def truth_total(value: Any, depth: int) -> int:
    """A truth cell's value summed over the dicts it nests in (`depth` levels; 0: a plain number)."""
    return int(value) if depth == 0 else sum(truth_total(v, depth - 1) for v in value.values())


class TruthCheck:
    """Compares folded windows with the ground truth's, an hour of truth at a time (a day's would not fit)."""

    def __init__(self, fine_ms: int) -> None:
        self.fine_ms = fine_ms
        self.hidden: dict[str, dict[str, str]] = {}
        self.builder: TruthBuilder | None = None
        self.hour = -1
        self.expected: dict[int, dict[tuple[str, str], tuple[int, ...]]] = {}
        """Truth by window start, then (country, device_type): the checked fields, cells with any non-zero."""
        self.truth_until_ms = 0
        self.compared = 0
        self.windows_equal = 0
        self.mismatches: list[str] = []
        self.starts_truth = 0
        self.starts_folded = 0

    def add(self, events: list[dict[str, Any]]) -> None:
        """Count a batch of events (in event-time order) into the current hour's truth."""
        i = 0
        while i < len(events):
            hour = events[i]["event_time_ms"] // HOUR_MS
            if hour != self.hour:
                self._finish_hour()
                self.builder = TruthBuilder((self.fine_ms,), SESSION_TIMEOUT_MS)
                self.builder.hidden = self.hidden
                self.hour = hour
            j = i
            end = (hour + 1) * HOUR_MS
            while j < len(events) and events[j]["event_time_ms"] < end:
                j += 1
            assert self.builder is not None
            self.builder.add(events[i:j])
            i = j

    def _finish_hour(self) -> None:
        if self.builder is None:
            return
        for window in self.builder.windows_document(with_concurrency=False)[f"{self.fine_ms // 1000}s"]["windows"]:
            for cell in window["cells"]:
                values = tuple(truth_total(cell[key], depth) if key in cell else 0 for key, depth in TRUTH_OF.values())
                if any(values):
                    cells = self.expected.setdefault(window["start_ms"], {})
                    cells[(cell["country"], cell["device_type"])] = values
                    self.starts_truth += values[0]
        self.truth_until_ms = (self.hour + 1) * HOUR_MS
        self.builder = None

    def compare(self, windows: list[tuple[int, int, Cells]], final: bool) -> list[tuple[int, int, Cells]]:
        """Check the folded windows whose hour of truth is complete; returns those still waiting."""
        if final:
            self._finish_hour()
        waiting = []
        for start, end, cells in windows:
            if end > self.truth_until_ms and not final:
                waiting.append((start, end, cells))
                continue
            self.compared += 1
            truth = self.expected.pop(start, {})
            got_cells = {}
            for key, row in cells.items():
                got = tuple(row[i] for i in _CHECKED)
                if any(got):
                    got_cells[key] = got
                    self.starts_folded += got[0]
            if got_cells == truth:
                self.windows_equal += 1
            else:
                for key in sorted(got_cells.keys() | truth.keys()):
                    if got_cells.get(key) != truth.get(key) and len(self.mismatches) < 10:
                        self.mismatches.append(f"{start} {key}: folded {got_cells.get(key)}, truth {truth.get(key)}")
        if final:
            for start, truth in list(self.expected.items())[:10]:
                self.mismatches.append(f"{start}: in the truth, never folded: {len(truth)} cells")
        return waiting

    def result(self) -> dict[str, Any]:
        """The check's figures."""
        return {
            "windows_compared": self.compared,
            "windows_equal": self.windows_equal,
            "fields": list(TRUTH_OF),
            "starts_truth": self.starts_truth,
            "starts_folded": self.starts_folded,
            "mismatches": self.mismatches,
        }
