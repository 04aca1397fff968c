"""The dispersion each horizon's test uses, as whole arrays, equals the rule it implements taken one horizon at a time.

`BaselineLearning._dispersion`: learned values made non-decreasing with the horizon, a horizon not learned yet takes
the largest learned below it, else the nearest learned beyond it, else Poisson's 1; never below 1. The reference
walks the horizons from the longest down, as the detector did before it was one batch of array operations. Random
learned / not-learned patterns over many series (none learned, all learned, only the longest, only the shortest
among them); it fails if a horizon takes the wrong neighbour's value.
"""

from __future__ import annotations

import numpy as np

from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.series import Floats
from flows.anomaly.state import SeriesArrays


def _one_horizon_at_a_time(s: SeriesArrays) -> Floats:
    learned = s.phi_n > 0
    phi = np.maximum.accumulate(np.where(learned, s.phi, 1.0), axis=0)
    later = np.ones(len(s))
    for h in range(phi.shape[0] - 1, -1, -1):
        later = np.where(learned[h], s.phi[h], later)
        phi[h] = np.where(learned[: h + 1].any(axis=0), phi[h], later)
    used: Floats = np.maximum(phi, 1.0)
    return used


def test_dispersion_equals_the_rule_one_horizon_at_a_time() -> None:
    rng = np.random.default_rng(3)
    detector = AnomalyDetector()
    detector._add_series([(i % 7, f"C{i}", "tv") for i in range(350)])
    s = detector._state
    horizons = s.phi.shape[0]
    for _ in range(50):
        s.phi = rng.uniform(0.3, 6.0, s.phi.shape)
        learned = rng.random(s.phi.shape) < rng.random()
        learned[:, :4] = False  # none learned
        learned[:, 4:8] = True
        learned[:, 8:12] = np.arange(horizons)[:, None] == horizons - 1  # only the longest
        learned[:, 12:16] = np.arange(horizons)[:, None] == 0  # only the shortest
        s.phi_n = np.where(learned, rng.integers(1, 20, s.phi.shape), 0).astype(np.float64)
        assert np.array_equal(detector._dispersion(), _one_horizon_at_a_time(s))
