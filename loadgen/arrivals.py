"""When sessions and funnels arrive: a Poisson process following the diurnal curve, and the warm start.

Arrivals are thinned from a homogeneous process at the curve's peak rate, so
their times follow each country's day. A warm start replays the arrivals of
the last few hours with their own generators and keeps what is still going on
at the run's start, so the rate is steady from the first second.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from loadgen.diurnal import MINUTE_MS, DiurnalTable
from loadgen.playback_arrival import session_arrival
from loadgen.signup_funnel import signup_arrival

if TYPE_CHECKING:
    from loadgen.model import Model

HOUR_MS = 3_600_000
MIN_WATCH_MS = 5_000
# Startup and failure times are well under this: an attempt this long before the start has its outcome before it.
_OUTCOME_BOUND_MS = 180_000


def next_arrival(table: DiurnalTable, t: float, rate_ms: float, rng: random.Random) -> float:
    """Next arrival after `t` of a Poisson process of mean `rate_ms` following the diurnal curve (by thinning)."""
    peak = rate_ms * table.peak / table.mean
    total = table.total
    scale = rate_ms / table.mean
    while True:
        t += rng.expovariate(peak)
        if rng.random() * peak < scale * total[int(t // MINUTE_MS) % 1440]:
            return t


def replay_warm_start(model: Model) -> None:
    """Replay the arrivals before the start whose sessions or funnels are still going on at it."""
    _replay_sessions(model)
    warm_signup = random.Random(f"warm-signup:{model.seed}")
    start = float(model.start_ms)
    t = start - 2 * HOUR_MS
    while model.signup_rate_ms > 0:
        t = next_arrival(model.diurnal, t, model.signup_rate_ms, warm_signup)
        if t >= start:
            break
        signup_arrival(model, t, warm_signup, warm=True)


def _replay_sessions(model: Model) -> None:
    params = model.params
    start = float(model.start_ms)
    warm_play = random.Random(f"warm-play:{model.seed}")
    # Sessions longer than ~4 sigma are too rare to matter; replaying further back only costs time.
    longest = min(params.max_session_ms, params.watch_median_ms * math.exp(4 * params.watch_sigma))
    t = start - longest - _OUTCOME_BOUND_MS
    # Inlined thinning and duration check: most candidates of the last hours ended long ago, and at high
    # rates there are millions of them.
    table = model.diurnal
    peak = model.session_rate_ms * table.peak / table.mean
    scale = model.session_rate_ms / table.mean
    total = table.total
    expo, uniform, gauss = warm_play.expovariate, warm_play.random, warm_play.gauss
    mu, sigma = model.watch_mu, params.watch_sigma
    lo, hi = MIN_WATCH_MS, params.max_session_ms
    while True:
        t += expo(peak)
        if t >= start:
            break
        if uniform() * peak >= scale * total[int(t // MINUTE_MS) % 1440]:
            continue
        watch = min(hi, max(lo, int(math.exp(mu + sigma * gauss(0.0, 1.0)))))
        if t + _OUTCOME_BOUND_MS + watch >= start:
            session_arrival(model, t, warm_play, warm=True, watch=watch)
