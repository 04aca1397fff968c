"""One series in one window, judged: exact tails per horizon, suspicion, alarms.

Only the few series the array screen cannot settle (flows/anomaly/detector.py) come here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flows.anomaly.config import DetectorConfig
from flows.anomaly.events import OpenAnomaly
from flows.anomaly.series import COMPLETION, LOG_GAMMA, SLOT, Direction, Kind, SeriesSpec
from flows.anomaly.stats import MAX_SCORE, binomial_score, log_beta_i, z_from_log_tail


@dataclass(slots=True)
class SeriesView:
    """One series as the rare per-series path sees it: exact tails, alarms, life cycle.

    Read from the arrays; its life cycle (hits, quiet, cooldown, open) is written back.
    """

    hits: int
    quiet: int
    cooldown: int
    open: OpenAnomaly | None
    d: float  # rebuffer_ratio's baseline ratio is d_num / d
    d_num: float
    filled: int
    sums: list[float]  # SLOT numbers per horizon, as SeriesArrays.sums
    z: list[float]  # the screen's normal z per horizon
    inflate: list[float]  # shares: the variance inflation per horizon
    phi: list[float]  # the dispersion per horizon, as the tests use it
    shape: float  # counts and rates: the negative binomial's shape
    accepted: bool = False  # set by the life cycle: its anomaly became the new normal (the baseline adopts it)


@dataclass(slots=True)
class Verdict:
    """The scoring of one series in one window."""

    score: float = 0.0  # signed, most anomalous horizon in a watched direction
    # The highest and lowest signed scores of the horizons an open anomaly's quiet check looks at.
    quiet_up: float = 0.0
    quiet_down: float = 0.0
    suspect: bool = False
    alarm: Direction | None = None
    alarm_score: float = 0.0
    # The alarming horizon: its length and its sums of k, n, expected k and rebuffer_ms.
    horizon: int = 1
    k: float = 0.0
    n: float = 0.0
    expected: float = 0.0
    aux: float = 0.0
    effect: float = 1.0
    # The effect its severity is judged on: the alarming horizon's, observed moved towards expected by
    # critical_margin_z standard errors.
    severity_effect: float = 1.0


def score_series(config: DetectorConfig, series: SeriesView, index: int, spec: SeriesSpec) -> Verdict:
    """The verdict on one series, from the screen's normal z per horizon.

    Where that z is beyond `screen`, the exact tail (anomaly_stats) replaces it; a z beyond `z_learn` makes
    the series suspect, and beyond `z_open`, with effect and volume enough, an alarm.
    """
    kind = spec.kind
    sums = series.sums
    screen, z_learn = config.screen, config.z_learn
    poisson_like = kind in ("count", "rate")
    verdict = Verdict()
    best_up, best_down = -math.inf, math.inf
    opened = series.open
    quiet_limit = max(opened.horizon, config.resolve_horizon) if opened is not None else 0
    at = 0
    for horizon, normal_z, inflate, phi in zip(config.horizons, series.z, series.inflate, series.phi, strict=True):
        if horizon > series.filled:
            break
        sk, sn, sm = sums[at], sums[at + 1], sums[at + 2]
        z = normal_z
        beyond = z >= screen or z <= -screen
        if beyond and kind == "count":
            z = _negative_binomial_score(sk, sm, _shape_with_dispersion(series.shape, phi, sm))
        elif beyond and poisson_like:
            # Rebuffers and errors come in clusters (one bad session has several): k / phi is the count of
            # clusters, Poisson, whose mean is mean / phi — the quasi-Poisson test is that model's.
            z = _negative_binomial_score(sk / phi, sm / phi, series.shape)
        elif beyond and kind == "share":
            z = binomial_score(sk, sn, sm / sn, inflate)
        elif not poisson_like and (z > MAX_SCORE or z < -MAX_SCORE):
            z = math.copysign(MAX_SCORE, z)
        if z > best_up:
            best_up = z
        if z < best_down:
            best_down = z
        if horizon <= quiet_limit:
            verdict.quiet_up, verdict.quiet_down = max(verdict.quiet_up, z), min(verdict.quiet_down, z)
        if z >= z_learn or z <= -z_learn:
            effect = effect_of(index, kind, sk, sn, sm)
            # Only a material change holds learning back: a big series' slow drift must still be learned.
            if effect >= spec.min_effect_up or effect <= spec.min_effect_down:
                verdict.suspect = True
            direction: Direction = "up" if z > 0 else "down"
            if (
                direction in spec.directions
                and abs(z) >= config.z_open
                and abs(z) > abs(verdict.alarm_score)
                and passes(config, spec, kind, direction, effect, sk, sn, sm)
            ):
                verdict.alarm, verdict.alarm_score, verdict.horizon = direction, z, horizon
                verdict.k, verdict.n, verdict.expected, verdict.aux = sk, sn, sm, sums[at + 4]
                verdict.effect = effect
                verdict.severity_effect = effect_of(index, kind, _with_margin(config, kind, z, sk, sn, sm, phi), sn, sm)
        at += SLOT
    if best_up == -math.inf:
        return verdict
    if spec.directions == ("up",):
        verdict.score = best_up
    elif spec.directions == ("down",):
        verdict.score = best_down
    else:
        verdict.score = best_up if best_up >= -best_down else best_down
    return verdict


def _with_margin(config: DetectorConfig, kind: Kind, z: float, k: float, n: float, mean: float, phi: float) -> float:
    """The observation moved `critical_margin_z` standard errors towards `mean`: what severity is judged on.

    On the strongest horizon, so a short one's noise does not make a warning-sized effect critical. |z| standard
    errors separate k from mean; for counts and shares the observation's own standard error is used too, and the
    closer of the two taken: a sparse series' few events (3 failures against 0.4 expected) are a large effect on
    little evidence, and must not page critical on it.
    """
    margin = config.critical_margin_z
    moved = k - (k - mean) * min(1.0, margin / abs(z))
    if kind in ("count", "rate"):
        own = math.sqrt(phi * max(k, 1.0))
    elif kind == "share" and n > 0:
        own = math.sqrt(phi * max(k * (n - k) / n, 1.0))
    else:
        return moved
    # Towards the mean by at most the whole distance: the effect is never judged past no effect.
    step = min(margin * own, abs(k - mean))
    return min(moved, k - step) if z > 0 else max(moved, k + step)


def effect_of(index: int, kind: Kind, k: float, n: float, mean: float) -> float:
    """Observed / expected, in the metric's own terms."""
    if kind == "lognormal":
        return math.exp((k - mean) / n * LOG_GAMMA) if n > 0 else 1.0
    if index == COMPLETION:
        # completed / started, not completed / (completed + started)
        if n <= 0 or mean <= 0 or mean >= n or k >= n:
            return 1.0
        return (k / (n - k)) / (mean / (n - mean))
    if mean <= 0:
        return math.inf if k > 0 else 1.0
    return k / mean


def passes(
    config: DetectorConfig,
    spec: SeriesSpec,
    kind: Kind,
    direction: Direction,
    effect: float,
    k: float,
    n: float,
    mean: float,
) -> bool:
    """Big enough to matter, with enough volume behind it (small denominators never flag)."""
    if direction == "up":
        if effect < spec.min_effect_up:
            return False
    elif effect > spec.min_effect_down:
        return False
    if kind == "lognormal":
        return n >= config.min_starts
    if kind == "share" and n < config.min_trials:
        return False
    # Up: at least a few events; down: enough expected that their absence means something.
    return (k if direction == "up" else mean) >= config.min_events


def _shape_with_dispersion(shape: float, phi: float, mean: float) -> float:
    """The negative binomial's shape once the learned extra spread is a gamma-distributed rate too.

    The volume's overdispersion is the rate itself varying window to window (correlated behaviour: a
    premiere, a push notification), a right-skewed factor: a gamma–Poisson count's variance is mean + mean² / r. The spread beyond Poisson that `phi`
    measured, (phi - 1) x mean, is that gamma's; the baseline's own uncertainty (relative variance 1 / shape)
    adds to it. The variance is the quasi-Poisson one (phi x mean + mean² / shape); the upper tail is the
    skewed one real bursts have, where scaling a Poisson by phi made it too thin (false alarms upwards).
    """
    extra = (phi - 1.0) / mean if mean > 0.0 else 0.0
    return 1.0 / (1.0 / shape + extra)


def _negative_binomial_score(k: float, mean: float, shape: float) -> float:
    """Signed score of `k` against a negative binomial with this mean and shape (Poisson as shape -> ∞).

    The predictive of a Poisson count whose rate was learned from `shape` events: P(X >= k) = I_{1-p}(k, r)
    with r = shape and p = r / (r + mean).
    """
    if mean <= 0.0:
        return MAX_SCORE if k > 0 else 0.0
    p = shape / (shape + mean)
    if k > mean:
        return z_from_log_tail(log_beta_i(k, shape, 1.0 - p))
    if k < mean:
        # P(X <= k) = 1 - I_{1-p}(k + 1, r) = I_p(r, k + 1)
        return -z_from_log_tail(log_beta_i(shape, k + 1.0, p))
    return 0.0
