"""Exact tail probabilities for the anomaly detector, as z-like scores, in pure Python.

Counts of events in a window are Poisson, and "k of n attempts failed" is
binomial; at the volumes of one country and device in ten seconds (often
fewer than ten events) a normal approximation is badly wrong in the tails
(it calls 3 events against 0.2 expected a 6-sigma event; the Poisson tail
says p = 0.001). So scores come from the exact tails — the regularized
incomplete gamma and beta functions — turned into the normal quantile with
the same tail probability, so a score reads like a z-score whatever the
volume.

Overdispersion (more spread than Poisson/binomial, and the uncertainty of
the baseline itself) is handled quasi-likelihood style: counts and
exposures are divided by a dispersion factor phi >= 1 before the tail is
taken, which multiplies the variance by phi and keeps the shape.

Only the small tail is ever computed exactly (the side the observation lies
on); callers screen with a cheap normal z first, so these run a few dozen
times per window, not per series.
"""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()
_EPS = 1e-15
_MAX_ITERATIONS = 5000
_TINY = 1e-300
# Scores are capped here: beyond it the tail underflows and the number means only "enormous".
MAX_SCORE = 40.0


def z_from_tail(p: float) -> float:
    """The standard-normal quantile with upper-tail probability `p` (0 < p <= 1), capped at MAX_SCORE."""
    if p >= 0.5:
        return _NORMAL.inv_cdf(1.0 - p) if p < 1.0 else -MAX_SCORE
    if p <= _TINY:
        return MAX_SCORE
    return min(-_NORMAL.inv_cdf(p), MAX_SCORE)


def z_from_log_tail(log_p: float) -> float:
    """Like `z_from_tail`, from log(p): keeps precision where p itself would underflow."""
    if log_p > -690.0:
        return z_from_tail(math.exp(log_p))
    # Mills-ratio asymptotics: z^2 ~ -2 ln p - ln(2 pi z^2); two fixed-point steps are plenty this far out.
    z = math.sqrt(-2.0 * log_p)
    for _ in range(2):
        z = math.sqrt(max(-2.0 * log_p - math.log(2.0 * math.pi * z * z), 1.0))
    return min(z, MAX_SCORE)


def _log_gamma_series(a: float, x: float) -> float:
    """Compute log P(a, x) by the series (converges fast for x < a + 1)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITERATIONS):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return math.log(total) - x + a * math.log(x) - math.lgamma(a)


def _log_gamma_cf(a: float, x: float) -> float:
    """Compute log Q(a, x) by Lentz's continued fraction (converges fast for x > a + 1)."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.log(h) - x + a * math.log(x) - math.lgamma(a)


def log_gamma_p(a: float, x: float) -> float:
    """Logarithm of the regularized lower incomplete gamma P(a, x), a > 0, x >= 0."""
    if x <= 0.0:
        return -math.inf
    if x < a + 1.0:
        return _log_gamma_series(a, x)
    return math.log1p(-min(math.exp(_log_gamma_cf(a, x)), 1.0 - 1e-16))


def log_gamma_q(a: float, x: float) -> float:
    """Logarithm of the regularized upper incomplete gamma Q(a, x) = 1 - P(a, x)."""
    if x <= 0.0:
        return 0.0
    if x < a + 1.0:
        return math.log1p(-min(math.exp(_log_gamma_series(a, x)), 1.0 - 1e-16))
    return _log_gamma_cf(a, x)


def _beta_cf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = _TINY if abs(d) < _TINY else d
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITERATIONS):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = _TINY if abs(d) < _TINY else d
        c = 1.0 + aa / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def log_beta_i(a: float, b: float, x: float) -> float:
    """Logarithm of the regularized incomplete beta I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return -math.inf
    if x >= 1.0:
        return 0.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return log_front + math.log(_beta_cf(a, b, x)) - math.log(a)
    # The symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its fast region.
    other = math.exp(log_front + math.log(_beta_cf(b, a, 1.0 - x)) - math.log(b))
    return math.log1p(-min(other, 1.0 - 1e-16))


def poisson_score(k: float, mean: float, phi: float = 1.0) -> float:
    """Signed score of `k` events against a Poisson `mean`: + when above, - when below.

    The magnitude is the normal quantile of the exact tail on the observation's side, P(X >= k) above the
    mean, P(X <= k) below it. `phi` >= 1 scales counts and mean down (variance x phi).
    """
    if mean <= 0.0:
        return MAX_SCORE if k > 0 else 0.0
    k_s, m_s = k / phi, mean / phi
    if k_s > m_s:
        # P(X >= k) = P(k, mean): the regularized lower incomplete gamma.
        return z_from_log_tail(log_gamma_p(k_s, m_s))
    if k_s < m_s:
        # P(X <= k) = Q(k + 1, mean).
        return -z_from_log_tail(log_gamma_q(k_s + 1.0, m_s))
    return 0.0


def binomial_score(k: float, n: float, q: float, phi: float = 1.0) -> float:
    """Signed score of `k` successes in `n` trials against a success probability `q`.

    Exact binomial tails (regularized incomplete beta); `phi` >= 1 scales k and n down (variance x phi).
    """
    if n <= 0.0:
        return 0.0
    if q <= 0.0:
        return MAX_SCORE if k > 0 else 0.0
    if q >= 1.0:
        return -MAX_SCORE if k < n else 0.0
    k_s, n_s = k / phi, n / phi
    expected = n_s * q
    if k_s > expected:
        # P(X >= k) = I_q(k, n - k + 1).
        return z_from_log_tail(log_beta_i(k_s, n_s - k_s + 1.0, q))
    if k_s < expected:
        # P(X <= k) = I_{1-q}(n - k, k + 1).
        return -z_from_log_tail(log_beta_i(n_s - k_s, k_s + 1.0, 1.0 - q))
    return 0.0


def normal_score(deviation: float, variance: float) -> float:
    """Signed z of a deviation with a known variance (the mean of many log-normal values)."""
    if variance <= 0.0:
        return 0.0
    return max(-MAX_SCORE, min(MAX_SCORE, deviation / math.sqrt(variance)))
