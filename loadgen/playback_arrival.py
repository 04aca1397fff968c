"""A playback session's arrival: who plays what where, whether the start fails, and the session it starts.

An arrival draws a fixed set of values from the arrival stream, whatever
happens next, so an incident that drops or fails one attempt leaves every
later arrival unchanged (see loadgen/model.py). The steps: pick the viewer
(country from the diurnal mix, account, device, title, CDN), time both
possible outcomes (a failure and a start), let the incidents in scope slow,
fail or drop the attempt, then emit `play_attempt` and either
`start_failure` or `play_start` and the session that follows.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, NamedTuple

from loadgen.diurnal import MINUTE_MS
from loadgen.incident_effects import active_throughout, product
from loadgen.incidents import ResolvedIncident
from loadgen.playback_session import PlaybackSession, hash_seed
from loadgen.world import (
    CDNS,
    COUNTRIES,
    DEVICE_PROFILES,
    DEVICE_TYPES,
    DEVICE_WEIGHTS,
    START_FAILURE_CODES,
    Choice,
    Population,
)
from schemas.contract import SCHEMA_VERSION

if TYPE_CHECKING:
    from loadgen.model import Model

# Probability that a session keeps its favourite device rather than picking one at random.
FAVOURITE_DEVICE_SHARE = 0.8
_DEVICE_CHOICE = Choice(DEVICE_TYPES, DEVICE_WEIGHTS)
_CDN_CHOICES = tuple(Choice(CDNS, c.cdn_weights) for c in COUNTRIES)
_MAX_STARTUP_MS = 120_000
_MAX_FAILURE_MS = 60_000


class _Draws(NamedTuple):
    """The uniforms and normals every arrival takes, in the order it takes them."""

    country: float
    account: float
    favourite: float
    device: float
    title: float
    cdn: float
    drop: float
    fail: float
    code: float
    silent: float
    z_startup: float
    z_fail: float


class _Viewer(NamedTuple):
    """Who plays what, where: the dimensions an incident's scope is matched against."""

    country_index: int
    account: str
    device: int
    title: str
    cdn: str


def session_arrival(model: Model, t_float: float, rng: random.Random, warm: bool = False, watch: int = 0) -> None:
    """One playback arrival at `t_float`: push its events and start its session (`warm`: replayed past)."""
    if not warm:
        watch = model.watch_ms(rng.gauss(0.0, 1.0))
    draws = _take_draws(rng)
    sid, seed = _next_session(model, warm)
    viewer = _pick_viewer(model, t_float, draws)
    _attempt(model, int(t_float), watch, draws, viewer, sid, seed)


def shaped_session_arrival(model: Model, t_float: float, rng: random.Random) -> None:
    """A candidate arrival of the shaped process (loadgen/traffic_shape.py): kept, it is a playback arrival.

    It takes the same draws as a plain arrival and one more, the thinning's; a session number is spent only on
    a kept one.
    """
    shape = model.shape
    assert shape is not None
    watch = model.watch_ms(rng.gauss(0.0, 1.0))
    draws = _take_draws(rng)
    viewer = _pick_viewer(model, t_float, draws)
    keep = shape.keep(t_float, viewer.country_index, viewer.device)
    if shape.starts_incidents_here:  # a premiere (or a slump) of starts in some scope around now
        t = int(t_float)
        scope = _scope(viewer)
        for inc in shape.starts_incidents_here:
            if inc.start_ms <= t < inc.end_ms and inc.matches(scope):
                keep *= inc.effect.starts_multiplier
    if rng.random() >= keep:
        return
    sid, seed = _next_session(model, False)
    _attempt(model, int(t_float), watch, draws, viewer, sid, seed)


def _attempt(model: Model, t: int, watch: int, draws: _Draws, viewer: _Viewer, sid: str, seed: int) -> None:
    """The attempt of an arrival whose viewer is picked: its outcome, its events and the session it starts."""
    profile = DEVICE_PROFILES[viewer.device]
    p_fail = min(1.0, model.params.start_failure_rate * profile.failure_factor)
    # Both possible outcomes are timed before anything is decided, so an incident can take an attempt only
    # when every event its effect moves, replaces or removes lies inside the incident (active_throughout).
    t_fail = t + min(_MAX_FAILURE_MS, int(math.exp(model.fail_mu + model.fail_sigma * draws.z_fail)))
    startup = math.exp(math.log(profile.startup_median_ms) + profile.startup_sigma * draws.z_startup)
    incidents: tuple[ResolvedIncident, ...] = ()
    fail_mult = 1.0
    if model.incidents:
        incidents = model.incidents.in_scope(_scope(viewer))
        if incidents:
            startup *= startup_multiplier(incidents, t, startup)
            t_start = t + min(int(startup), _MAX_STARTUP_MS)
            failing_by = active_throughout(incidents, "start_failure_multiplier", t_fail, t_start)
            fail_mult = product(failing_by, "start_failure_multiplier")
            t_outcome = t_fail if draws.fail < p_fail * fail_mult else t_start
            if _dropped(model, incidents, t, t_outcome, draws.drop):
                return

    base: dict[str, Any] = {
        "country": COUNTRIES[viewer.country_index].code,
        "device_type": DEVICE_TYPES[viewer.device],
        "schema_version": SCHEMA_VERSION,
        "session_id": sid,
        "account_id": viewer.account,
        "title_id": viewer.title,
    }
    model.push(t, {"event_id": f"{sid}.0", "event_type": "play_attempt", "event_time_ms": t, **base})

    startup_ms = min(int(startup), _MAX_STARTUP_MS)
    t_start = t + startup_ms
    if draws.fail < p_fail * fail_mult:
        code = None
        if draws.fail >= p_fail:  # one of the incident's extra failures
            coding_by = active_throughout(incidents, "start_failure_error_code", t_fail, t_start)
            code = coding_by[0].effect.start_failure_error_code if coding_by else None
        _start_failure(model, base, viewer.cdn, t_fail, code or START_FAILURE_CODES.pick(draws.code))
        return

    model.push(
        t_start,
        {
            "event_id": f"{sid}.1",
            "event_type": "play_start",
            "event_time_ms": t_start,
            **base,
            "startup_ms": startup_ms,
            "cdn": viewer.cdn,
        },
    )
    silent = draws.silent < model.params.silence_rate
    session = PlaybackSession(model, base, sid, seed, t_start + watch, silent, viewer.device, incidents)
    first = t_start
    if t_start < model.start_ms:
        # Warm start: skip the intervals that are over, resume at the heartbeat slot before the run start.
        first = t_start + ((model.start_ms - t_start - 1) // model.hb_ms) * model.hb_ms
    session.plan(first)


def _take_draws(rng: random.Random) -> _Draws:
    # A fixed set of draws per arrival, whatever happens next (see the module docstring).
    r = rng.random
    uniforms = (r(), r(), r(), r(), r(), r(), r(), r(), r(), r())
    return _Draws(*uniforms, rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0))


def _next_session(model: Model, warm: bool) -> tuple[str, int]:
    """The next session id and its random stream's seed (warm-start sessions are numbered apart)."""
    if warm:
        k = model.warm_sessions
        model.warm_sessions += 1
        return f"{model.tag}-w{k:x}", hash_seed(model.seed, 1, k)
    k = model.sessions
    model.sessions += 1
    return f"{model.tag}-s{k:x}", hash_seed(model.seed, 0, k)


def _pick_viewer(model: Model, t_float: float, draws: _Draws) -> _Viewer:
    ci = model.diurnal.country_index(int(t_float // MINUTE_MS) % 1440, draws.country)
    accounts = model.population.by_country[ci]
    account_number = accounts[int(draws.account * len(accounts))]
    favourite = model.population.favourite_device[account_number]
    device = favourite if draws.favourite < FAVOURITE_DEVICE_SHARE else _DEVICE_CHOICE.index(draws.device)
    return _Viewer(
        ci,
        Population.account_id(account_number),
        device,
        model.catalogue.pick(draws.title),
        _CDN_CHOICES[ci].pick(draws.cdn),
    )


def _scope(viewer: _Viewer) -> dict[str, Any]:
    return {
        "country": COUNTRIES[viewer.country_index].code,
        "device_type": DEVICE_TYPES[viewer.device],
        "cdn": viewer.cdn,
        "title_id": viewer.title,
    }


def _dropped(model: Model, incidents: tuple[ResolvedIncident, ...], t: int, t_outcome: int, u_drop: float) -> bool:
    """Whether an outage drops the attempt (counted per incident, for the ground truth)."""
    dropping_by = active_throughout(incidents, "starts_drop", t, t_outcome)
    keep = 1.0
    for inc in dropping_by:
        keep *= 1.0 - inc.effect.starts_drop
    if u_drop < keep:
        return False
    for inc in dropping_by:
        model.incidents.dropped_attempts[inc.name] += 1
    return True


def _start_failure(model: Model, base: dict[str, Any], cdn: str, t_fail: int, code: str) -> None:
    eid = f"{base['session_id']}.1"
    if model.hidden is not None and t_fail >= model.visible_from:
        model.hidden[eid] = {"cdn": cdn}  # a failed start carries no CDN: the truth still counts it by CDN
    model.push(
        t_fail,
        {"event_id": eid, "event_type": "start_failure", "event_time_ms": t_fail, **base, "error_code": code},
    )


def startup_multiplier(incidents: tuple[ResolvedIncident, ...], t: int, startup: float) -> float:
    """The startup slowdown of an attempt at `t`: from the incidents active at both its plain and its slowed start.

    A play_start moves from t + startup to t + startup x multiplier; an incident slows it only when both times
    lie inside it, so no start outside the incident is moved, nor one inside moved out.
    """
    by = active_throughout(incidents, "startup_ms_multiplier", t + min(int(startup), _MAX_STARTUP_MS))
    while by:
        mult = product(by, "startup_ms_multiplier")
        t_slowed = t + min(int(startup * mult), _MAX_STARTUP_MS)
        still = tuple(inc for inc in by if inc.active(t_slowed))
        if still == by:
            return mult
        by = still  # fewer incidents, a different slowed time: check again
    return 1.0
