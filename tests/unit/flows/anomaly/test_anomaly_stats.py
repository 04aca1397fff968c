"""The detector's exact tails against brute-force sums of the Poisson and binomial probabilities."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from flows.anomaly.stats import MAX_SCORE, binomial_score, poisson_score, z_from_log_tail, z_from_tail

NORMAL = NormalDist()


def _poisson_pmf(j: int, mean: float) -> float:
    return math.exp(j * math.log(mean) - mean - math.lgamma(j + 1))


def _z(p: float) -> float:
    return -NORMAL.inv_cdf(p)


@pytest.mark.parametrize(
    ("k", "mean"), [(3, 0.2), (1, 0.001), (17, 3.8), (9, 1.9), (150, 100.0), (0, 25.0), (2, 10.0), (60, 100.0)]
)
def test_poisson_score_is_the_exact_tail(k: int, mean: float) -> None:
    if k > mean:
        tail = 1.0 - sum(_poisson_pmf(j, mean) for j in range(k))
        expected = _z(tail)
    else:
        tail = sum(_poisson_pmf(j, mean) for j in range(k + 1))
        expected = -_z(tail)
    assert poisson_score(k, mean) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("k", "n", "q"), [(3, 20, 0.025), (17, 150, 0.025), (0, 200, 0.05), (2, 3, 0.01), (40, 100, 0.5), (60, 100, 0.5)]
)
def test_binomial_score_is_the_exact_tail(k: int, n: int, q: float) -> None:
    def pmf(j: int) -> float:
        return math.comb(n, j) * q**j * (1 - q) ** (n - j)

    if k > n * q:
        expected = _z(sum(pmf(j) for j in range(k, n + 1)))
    else:
        expected = -_z(sum(pmf(j) for j in range(k + 1)))
    assert binomial_score(k, n, q) == pytest.approx(expected, abs=1e-6)


def test_small_counts_are_not_called_extreme() -> None:
    # A normal approximation calls 3 events against 0.2 expected a 6-sigma event; the exact tail says p = 0.001.
    assert poisson_score(3, 0.2) == pytest.approx(3.05, abs=0.01)
    # Nothing can be below zero events: seeing none of 0.5 expected is no evidence at all.
    assert poisson_score(0, 0.5) > -0.5


def test_dispersion_widens_the_score() -> None:
    assert abs(poisson_score(150, 100.0, phi=2.0)) < abs(poisson_score(150, 100.0))
    assert abs(binomial_score(17, 150, 0.025, phi=2.0)) < abs(binomial_score(17, 150, 0.025))


def test_extreme_tails_do_not_underflow() -> None:
    assert poisson_score(10_000, 100.0) == MAX_SCORE
    assert poisson_score(0, 5_000.0) == -MAX_SCORE
    assert 30 < z_from_log_tail(-700.0) < 40
    assert z_from_tail(0.5) == pytest.approx(0.0)
    assert z_from_log_tail(math.log(1e-6)) == pytest.approx(_z(1e-6))
