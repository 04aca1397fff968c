"""How every series' baseline learns from each window: levels and rates, and the noise per horizon.

A mixin of AnomalyDetector (flows/anomaly/detector.py); it works on the detector's arrays.
"""

from __future__ import annotations

import numpy as np

from flows.anomaly.config import DetectorConfig
from flows.anomaly.seasonal import SeasonalBaseline
from flows.anomaly.series import (
    PLAYED_MS,
    REBUFFER_MS,
    STARTUP_B2,
    Bools,
    Floats,
    Ints,
)
from flows.anomaly.state import SeriesArrays

# A fresh dispersion starts at Poisson's 1 weighted as this many windows: a running mean from the first residual
# alone would let one early outlier (or one early quiet window) set it.
_PHI_PRIOR_WINDOWS = 6.0


class BaselineLearning(SeasonalBaseline):
    """The learning part of AnomalyDetector; the detector holds the state it works on."""

    config: DetectorConfig
    _state: SeriesArrays
    _horizons: Ints

    def _dispersion(self) -> Floats:
        """The dispersion each horizon's test uses (horizons x series): learned, >= 1, never below a shorter one's.

        A sum over more windows is at least as overdispersed as a shorter one (bursts last several windows),
        so each horizon takes the largest learned below it; a horizon not learned yet (a sparse series' short
        ones: too few events to learn from) takes the nearest learned longer one's, else Poisson's 1.
        """
        s = self._state
        learned = s.phi_n > 0
        longest = np.maximum.accumulate(np.where(learned, s.phi, 1.0), axis=0)
        # The nearest learned horizon at or beyond each one (its row; the row past the end is Poisson's 1), found
        # as a running minimum from the longest horizon down: whole arrays, not a loop over the horizons.
        rows = np.arange(len(learned))[:, None]
        nearest = np.minimum.accumulate(np.where(learned, rows, len(learned))[::-1], axis=0)[::-1]
        later = np.vstack((s.phi, np.ones((1, len(s)))))[nearest, np.arange(len(s))]
        used: Floats = np.maximum(np.where(np.logical_or.accumulate(learned, axis=0), longest, later), 1.0)
        return used

    def _learn(
        self,
        k: Floats,
        n: Floats,
        mean: Floats,
        var: Floats,
        cell: Floats,
        suspect: Bools,
        window: tuple[int, int],
    ) -> None:
        """Every baseline learns this window; a suspect one (or one with an open anomaly) ten times slower."""
        config, s = self.config, self._state
        weight = np.where(suspect, config.slow_factor, 1.0)
        self._learn_season(k, weight, *window)
        # count: a running mean at first, then the EWMA.
        level = s.a + np.maximum(config.alpha_count, 1.0 / s.t) * weight * (k - s.a)
        keep = 1.0 - config.alpha_rate * weight
        s.a = np.where(s.count, level, s.a * keep + weight * k)
        s.b = np.where(s.count, s.b, s.b * keep + weight * n)
        s.c = np.where(s.lognormal, s.c * keep + weight * cell[:, STARTUP_B2], s.c)
        s.d_num = np.where(s.rebuffer, s.d_num * keep + weight * cell[:, REBUFFER_MS], s.d_num)
        s.d = np.where(s.rebuffer, s.d * keep + weight * (cell[:, PLAYED_MS] + cell[:, REBUFFER_MS]), s.d)
        self._learn_dispersion(k, mean, var, suspect)

    def _learn_dispersion(self, k: Floats, mean: Floats, var: Floats, suspect: Bools) -> None:
        """Quasi-likelihood dispersion per horizon: the mean squared Pearson residual of its sums (1: Poisson).

        The one-window horizon learns from every window, warm-up included (so a series is judged with its
        spread already known); longer ones from their sums once judged. Ten times slower while suspect (an
        incident is not noise, but a spread learned too narrow must not hold a series suspect for ever). A
        running mean at first, then an EWMA; each residual winsorized at `phi_clip` times the current value,
        so one outlier moves it a bounded step and no cap stops a truly wide spread.
        """
        config, s = self.config, self._state
        sk, sm, sv = s.sums[:, 0], s.sums[:, 2], s.sums[:, 3]
        judged = self._horizons[:, None] <= s.filled
        residual, expected, variance = sk - sm, sm.copy(), sv.copy()
        residual[0], expected[0], variance[0] = k - mean, mean, var
        judged[0] = True
        learn = judged & (expected >= config.phi_min_expected) & (variance > 0)
        if not learn.any():
            return
        with np.errstate(divide="ignore", invalid="ignore"):
            pearson = np.minimum(residual * residual / variance, config.phi_clip * np.maximum(s.phi, 1.0))
            alpha = np.maximum(config.alpha_phi, 1.0 / (s.phi_n + _PHI_PRIOR_WINDOWS)) * np.where(
                suspect, config.slow_factor, 1.0
            )
            s.phi = np.where(learn, s.phi + alpha * (pearson - s.phi), s.phi)
        s.phi_n = np.where(learn, s.phi_n + 1.0, s.phi_n)

    # --- one rare series, one window ----------------------------------------------------------------
