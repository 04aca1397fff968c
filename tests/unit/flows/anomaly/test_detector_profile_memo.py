"""A detector step reads each seasonal profile at the window's own time once; the results are those of reading afresh.

The memo (flows/anomaly/seasonal.py) saves repeated reads within one step, a fixed cost every shard's detector
pays per window whatever its number of series. Its results must be byte for byte those of a detector that reads
every profile afresh: on a day of traffic whose seasonal profiles are learned and used, with a drop and a burst of
failures that open anomalies, some accepted as the new normal (a baseline adopts a level mid-step). It fails if
the memo mixes up the times a step reads (the hour factor now and at the level's age).
"""

from __future__ import annotations

import random

from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.seasonal import Profile
from flows.anomaly.series import Bools, Cells, Floats

T0 = 1_714_521_600_000
FINE = 60_000  # minute windows: a day of traffic in few windows, so the seasonal profiles learn
WINDOWS = 1_800
CELLS = [(c, d) for c in ("US", "BR", "DE", "JP") for d in ("tv", "mobile")]


class _Afresh(AnomalyDetector):
    """Reads every profile afresh: the reference."""

    def _profile_values(self, profile: Profile, at_ms: float, size: int) -> tuple[Floats, Bools]:
        return self._compute_profile_values(profile, at_ms, size)


def _traffic() -> list[Cells]:
    rng = random.Random(5)
    windows: list[Cells] = []
    for w in range(WINDOWS):
        hour = (w * FINE // 3_600_000) % 24
        season = 1.6 if hour % 6 in (2, 3) else 1.0
        cells: Cells = {}
        for i, cell in enumerate(CELLS):
            starts = int(rng.randint(40, 60) * season * (1 + i % 3))
            if cell == ("BR", "tv") and w >= 700:
                starts //= 5  # a drop that stays: accepted as the new normal
            failures = rng.randint(0, 3) + (30 if cell[0] == "DE" and 1_000 <= w < 1_030 else 0)
            played = starts * 60_000
            cells[cell] = [starts, failures, played, rng.randint(0, 3_000), rng.randint(0, 4), rng.randint(0, 2)]
            cells[cell] += [0, 0, 0, 0, starts, starts * 300, starts * 90_000]
        windows.append(cells)
    return windows


def _run(detector: AnomalyDetector, traffic: list[Cells]) -> tuple[list[str], str]:
    detections = []
    for w, cells in enumerate(traffic):
        detections += [repr(d) for d in detector.observe_cells(T0 + w * FINE, T0 + (w + 1) * FINE, cells)]
    return detections, repr(detector.snapshot())


def test_profile_memo_gives_the_results_of_reading_afresh() -> None:
    traffic = _traffic()
    memo, afresh = _run(AnomalyDetector(), traffic), _run(_Afresh(), traffic)
    states = [state for detection in memo[0] for state in ("accepted", "open") if f"state='{state}'" in detection]
    assert {"accepted", "open"} <= set(states), "the traffic must open anomalies and accept one"
    assert memo == afresh
