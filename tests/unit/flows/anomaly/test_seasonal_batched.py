"""A step reads and learns the seasonal profiles in batches; the results are those of one read and one bin at a time.

flows/anomaly/seasonal.py gathers a step's five profile reads, and the six bins it learns, in one go each (a fixed
cost every shard's detector pays per window, whatever its number of series). The reference here is the code as it
was before: each read on its own (`_compute_profile_values`, over every series), each bin learned on its own. On a
day of minute windows whose profiles are learned and used, with failures that open anomalies and a lasting rise of
starts in one cell that is accepted as the new normal (a count baseline adopts a level mid-step, after the step read
the profiles: they must be read afresh), every detection and the final state must be equal byte for byte; also with
a single bin a day (the day profile's two nearest bins are one). It fails if a batch mixes up reads or bins, or
reuses reads a baseline's new level made stale.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.seasonal import _MINUTE_HALFLIFE, _bins
from flows.anomaly.series import Bools, Cells, Floats


class _OneAtATime(AnomalyDetector):
    """The seasonal part read and learned one profile read and one bin at a time, over every series: the reference."""

    def _hour_factors(self, times: tuple[float, ...], size: int) -> list[Floats]:
        day, week, _ = self._profiles()
        main = [np.ones(len(self._state)) for _ in times]
        for profile in (day, week):
            values = []
            for at in times:
                value, enough = self._compute_profile_values(profile, at, size)
                values.append(np.where(enough, value, np.nan))
            usable = np.logical_and.reduce([np.isfinite(v) for v in values])
            main = [np.where(usable, v, m) for v, m in zip(values, main, strict=True)]
        return main

    def _minute(self, at_ms: float, size: int) -> tuple[Floats, Bools]:
        value, learned = self._compute_profile_values(self._profiles()[2], at_ms, size)
        return np.where(np.isfinite(value), value, 1.0), learned

    def _seasonal_ratio(self, start_ms: int, end_ms: int) -> Floats:
        config, s = self.config, self._state
        size = end_ms - start_ms
        lag_ms = (1.0 - config.alpha_count) / config.alpha_count * size
        middle = (start_ms + end_ms) / 2
        now, then = self._hour_factors((middle, middle - lag_ms), size)
        minute, learned = self._minute(middle, size)
        ratio: Floats = now / then * np.where(learned, minute / s.minute_level, 1.0)
        return ratio

    def _learn_season(self, k: Floats, weight: Floats, start_ms: int, end_ms: int) -> None:
        config, s = self.config, self._state
        if not s.count.any():
            return
        size = end_ms - start_ms
        middle = (start_ms + end_ms) / 2
        (main,) = self._hour_factors((middle,), size)
        raw_minute, learned = self._minute(middle, size)
        minute = np.where(learned, raw_minute, 1.0)
        level_alpha = np.maximum(config.alpha_count, 1.0 / s.t) * weight
        s.minute_level = s.minute_level + level_alpha * (raw_minute - s.minute_level)
        slow = np.where(s.b > 0, s.b, s.a)
        alpha = np.maximum(config.alpha_slow, 1.0 / s.t) * weight
        s.b = np.where(s.count, slow + alpha * (k / (main * minute) - slow), s.b)
        day, week, minute_profile = self._profiles()
        cols = s.count_rows
        for profile, halflife, other in (
            (day, config.season_halflife_days, minute),
            (week, config.season_halflife_weeks, minute),
            (minute_profile, _MINUTE_HALFLIFE, main),
        ):
            num, den, seen, bin_ms, _, stepwise = profile
            bins = num.shape[0]
            lower, upper = _bins(middle, bin_ms, stepwise)
            forget = 1.0 - 0.5 ** (size / (halflife * bin_ms))
            for slot, share in ((lower % bins, 1.0 - upper), ((lower + 1) % bins, upper)):
                w = share * weight[cols]
                keep = 1.0 - forget * w
                num[slot, cols] = num[slot, cols] * keep + w * k[cols] / other[cols]
                den[slot, cols] = den[slot, cols] * keep + w * slow[cols]
                seen[slot, cols] = seen[slot, cols] * keep + w


T0 = 1_714_521_600_000
FINE = 60_000  # minute windows: a day of traffic in few windows, so the seasonal profiles learn
WINDOWS = 1_800
CELLS = [(c, d) for c in ("US", "BR", "DE", "JP") for d in ("tv", "mobile")]


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


def _traffic_with_a_lasting_rise() -> list[Cells]:
    """`_traffic`'s day, with US tv's starts four times as many from window 1,200 on (sps accepted)."""
    traffic = _traffic()
    for cells in traffic[1_200:]:
        cell = cells[("US", "tv")]
        cells[("US", "tv")] = [cell[0] * 4, *cell[1:]]
    return traffic


def _run(detector: AnomalyDetector, traffic: list[Cells]) -> tuple[list[str], str]:
    detections = []
    for w, cells in enumerate(traffic):
        detections += [repr(d) for d in detector.observe_cells(T0 + w * FINE, T0 + (w + 1) * FINE, cells)]
    return detections, repr(detector.snapshot())


@pytest.mark.parametrize(
    ("config", "roll_up"),
    [(DetectorConfig(), True), (DetectorConfig(), False), (DetectorConfig(season_bin_ms=86_400_000), True)],
    ids=["hourly bins", "hourly bins, no roll-ups", "one bin a day"],
)
def test_batched_seasonal_profiles_equal_one_at_a_time(config: DetectorConfig, roll_up: bool) -> None:
    traffic = _traffic_with_a_lasting_rise()
    batched = _run(AnomalyDetector(config, roll_up), traffic)
    reference = _run(_OneAtATime(config, roll_up), traffic)
    events = [event for detection in batched[0] for event in detection.split("AnomalyEvent(")[1:]]
    assert any("state='open'" in event for event in events), "the traffic must open anomalies"
    accepted_counts = [e for e in events if "state='accepted'" in e and "series='sps'" in e]
    assert accepted_counts, "a count series must be accepted: its baseline moves after the step read the profiles"
    assert "day_num" not in batched[1]  # the snapshot holds the profiles per series, as before
    assert batched == reference


def test_the_profiles_are_learned_and_used() -> None:
    """The traffic above is long enough that every profile is read as learned: else the test would prove little."""
    detector = AnomalyDetector()
    traffic = _traffic()
    for w, cells in enumerate(traffic):
        detector.observe_cells(T0 + w * FINE, T0 + (w + 1) * FINE, cells)
    end = T0 + len(traffic) * FINE
    values, enough = detector._read_profiles(((0, end - FINE / 2), (2, end - FINE / 2)), FINE)
    assert enough.all(axis=1).tolist() == [True, True]
    assert np.isfinite(values).all() and (values != 1.0).any()
