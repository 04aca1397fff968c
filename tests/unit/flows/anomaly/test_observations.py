"""A window's observations as arrays (`observations`, one product for every series) equal the scalar rule per series.

`observation` is the reference: k one cell field, n the sum of the series' exposure fields (1 for sps), a payment
decline capped at the payments. Random integer cells from single digits to 10**12 (played milliseconds, startup
bucket squares), declines above payments included; it fails if a series reads the wrong field or sums differ.
"""

from __future__ import annotations

import numpy as np

from flows.anomaly.series import CELL_FIELDS, DECLINES, PAYMENTS, SERIES, observation, observations


def test_observations_equal_the_scalar_rule() -> None:
    rng = np.random.default_rng(11)
    for scale in range(1, 13):
        cells = rng.integers(0, 10**scale, (40, len(CELL_FIELDS)))
        cells[:5, DECLINES] = cells[:5, PAYMENTS] + 3  # more declines than payments: capped
        k, n = observations(cells.astype(np.float64))
        expected = [[observation(index, row) for index in range(len(SERIES))] for row in cells.tolist()]
        assert np.array_equal(np.stack((k, n), axis=-1), np.array(expected, np.float64))
