"""bench/realistic_fold_day.py: its fold equals the ground truth, and its statistics measure what they claim."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.realistic_fold_day import START_MS, day_config, simulate, starts_table, traffic_statistics
from bench.truth_check import TruthCheck
from flows.anomaly.series import CELL_FIELDS
from loadgen.diurnal import DAY_MS
from settings.windows import WindowConfig

FINE_MS = 10_000
WINDOWS = DAY_MS // FINE_MS


def test_a_realistic_hour_folds_to_its_ground_truth() -> None:
    # Across an hour boundary (the truth is built an hour at a time), with the scenario's noise on.
    windows = WindowConfig()
    config = replace(day_config(60.0, 3, windows), start_ms=START_MS + 50 * 60_000, span_ms=20 * 60_000)
    day, check = simulate(config, windows)
    assert check["mismatches"] == []
    assert check["windows_compared"] == check["windows_equal"] == len(day.windows) == 120
    assert check["starts_truth"] == check["starts_folded"] > 500


def test_the_truth_check_can_fail() -> None:
    check = TruthCheck(FINE_MS)
    check.add([{"event_type": "play_start", "event_time_ms": START_MS + 1, "country": "BR", "device_type": "tv",
                "schema_version": 1, "event_id": "x", "session_id": "s", "account_id": "a", "title_id": "t",
                "startup_ms": 900, "cdn": "c1"}])  # fmt: skip
    row = [0] * len(CELL_FIELDS)
    row[CELL_FIELDS.index("starts")] = 2  # one start in the truth, two folded
    check.compare([(START_MS, START_MS + FINE_MS, {("BR", "tv"): row})], final=True)
    assert check.result()["windows_equal"] == 0 and check.result()["mismatches"]


def synthetic(d: float, mean: float, seed: int) -> dict[tuple[str, str], np.ndarray]:
    """Gamma–Poisson counts per window around a daily curve (8x peak/trough) with top-of-the-hour bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOWS) * FINE_MS
    curve = 8 ** (np.cos(2 * np.pi * t / DAY_MS) / 2) / 8**0.5
    burst = np.where(t % 3_600_000 < 120_000, 1.25, 1.0)
    table = {}
    for cell in range(6):
        level = mean * curve * burst
        factor = rng.gamma(1 / d**2, d**2, WINDOWS) if d else np.ones(WINDOWS)
        table[("US", f"d{cell}")] = rng.poisson(level * factor).astype(float)
    return table


@pytest.mark.parametrize(("d", "mean"), [(0.0, 5.0), (0.2, 5.0), (0.2, 50.0), (0.5, 2.0)])
def test_the_dispersion_estimate_recovers_d(d: float, mean: float) -> None:
    stats = traffic_statistics(synthetic(d, mean, 1), {"US": 0}, FINE_MS)
    assert stats["dispersion_d2"] == pytest.approx(d * d, rel=0.1, abs=0.005)
    assert abs(stats["dispersion_d2"] - d * d) < 4 * stats["dispersion_d2_se"] + 0.1 * d * d
    assert stats["top_of_hour_ratio"] == pytest.approx(1.25, rel=0.05)
    assert 5 < stats["peak_trough_median"] < 9


def test_starts_table_puts_each_window_in_its_place() -> None:
    row = [0] * len(CELL_FIELDS)
    row[CELL_FIELDS.index("starts")] = 7
    table = starts_table([(START_MS + 20 * FINE_MS, START_MS + 21 * FINE_MS, {("GB", "web"): row})], START_MS, FINE_MS)
    assert table[("GB", "web")][20] == 7 and table[("GB", "web")].sum() == 7
