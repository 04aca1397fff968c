"""The traffic model: playback sessions and sign-up funnels, emitted in event-time order.

Playback: an account presses play (`play_attempt`); the start fails
(`start_failure`, a few %) or the first frame shows after a log-normal
startup time (`play_start` on one of several CDNs); then a `heartbeat` every
heartbeat interval carries the time played since the previous one and the
current bitrate, with rebuffers, bitrate switches and pause/resume pairs in
between; the session ends with `play_stop`, a fatal `play_error`, or silence
(the client just stops sending). Session arrivals follow each country's
diurnal curve in its own time zone; titles follow a Zipf law.

Sign-up: `signup_started` -> `plan_selected` -> `payment_submitted` ->
`signup_completed` or `signup_failed`, with drop-off at every step (an
abandoned funnel sometimes ends with `signup_failed(abandoned)` later, and
sometimes just stops).

Determinism and isolation: arrivals draw a fixed number of values from their
own `random.Random`, whatever happens to them, and each started session has
its own small random stream seeded from (seed, session number). So an incident
changes only the sessions in its scope: every event outside the scope is
byte-identical to a run without the incident. Inside the scope it changes only
events whose event time lies inside the incident (see loadgen/incidents.py).

The model is a discrete-event simulation over an agenda of (time, sequence,
kind, payload) (a calendar queue); sessions are advanced one heartbeat interval at a time so
memory stays proportional to the number of concurrent sessions, not events.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

from loadgen.config import LoadgenConfig
from loadgen.diurnal import MINUTE_MS, DiurnalTable
from loadgen.incidents import (
    IncidentSet,
    ResolvedIncident,
    active_throughout,
    code_override,
    mean_multiplier,
    multiplier,
    place,
    product,
    rate_runs,
)
from loadgen.world import (
    CDNS,
    CHANNEL_WEIGHTS,
    CHANNELS,
    COUNTRIES,
    DECLINE_RATES,
    DEVICE_PROFILES,
    DEVICE_TYPES,
    DEVICE_WEIGHTS,
    PLAN_WEIGHTS,
    PLANS,
    PLAY_ERROR_CODES,
    REASON_ABANDONED,
    REASON_DECLINED,
    REASON_FRAUD,
    REASON_TECHNICAL,
    START_FAILURE_CODES,
    Catalogue,
    Choice,
    Population,
    payment_method_choice,
    plan_price_cents,
)
from schemas.contract import SCHEMA_VERSION, families

Event = dict[str, Any]

# The event types this model knows how to produce. If the contract grows one, the generator must learn it:
# failing here (at import) beats silently never producing it.
MODELLED_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "play_attempt", "play_start", "start_failure", "heartbeat", "rebuffer", "bitrate_change",
        "pause", "resume", "play_error", "play_stop",
        "signup_started", "plan_selected", "payment_submitted", "signup_completed", "signup_failed",
    }
)  # fmt: skip
_CONTRACT_TYPES = frozenset(et for f in families().values() for et in f.event_types)
if _CONTRACT_TYPES != MODELLED_EVENT_TYPES:
    raise RuntimeError(
        "loadgen models event types "
        f"{sorted(MODELLED_EVENT_TYPES - _CONTRACT_TYPES)} the contract lacks, and the contract has "
        f"{sorted(_CONTRACT_TYPES - MODELLED_EVENT_TYPES)} loadgen does not model"
    )

_EVENT, _WAKE, _PLAY_ARRIVAL, _SIGNUP_ARRIVAL = 0, 1, 2, 3
_HOUR_MS = 3_600_000
_MAX_DURATION_MS = 86_400_000  # the contract's bound on durations
_MIN_WATCH_MS = 5_000
_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 6364136223846793005  # Knuth's MMIX constants
_LCG_INCREMENT = 1442695040888963407
_INV_2_53 = 1.0 / (1 << 53)
_TWO_PI = 2.0 * math.pi

# Sign-up funnel: probability of moving on from each step, and of an abandoned funnel being reported.
FUNNEL_PLAN_RATE = 0.72
FUNNEL_PAYMENT_RATE = 0.80
FUNNEL_ABANDON_REPORTED = 0.5
FRAUD_RATE = 0.01
TECHNICAL_ERROR_RATE = 0.008
# Probability that a session keeps its favourite device rather than picking one at random.
FAVOURITE_DEVICE_SHARE = 0.8
_DEVICE_CHOICE = Choice(DEVICE_TYPES, DEVICE_WEIGHTS)
_CHANNEL_CHOICE = Choice(CHANNELS, CHANNEL_WEIGHTS)
_PLAN_CHOICE = Choice(PLANS, PLAN_WEIGHTS)
_CDN_CHOICES = tuple(Choice(CDNS, c.cdn_weights) for c in COUNTRIES)
_METHOD_CHOICES = tuple(payment_method_choice(c) for c in COUNTRIES)


def hash_seed(seed: int, stream: int, k: int) -> int:
    """A 64-bit starting state for session `k` of `stream` (0 live, 1 warm start) of a run with `seed`."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class _Session:
    """One started playback session, advanced one heartbeat interval at a time."""

    __slots__ = (
        "base",
        "end_t",
        "incidents",
        "ladder",
        "level",
        "model",
        "n",
        "pending_kind",
        "pending_value",
        "rb_factor",
        "sid",
        "silent",
        "state",
    )  # fmt: skip

    def __init__(
        self,
        model: Model,
        base: dict[str, Any],
        sid: str,
        seed: int,
        end_t: int,
        silent: bool,
        device: int,
        incidents: tuple[ResolvedIncident, ...],
    ) -> None:
        self.model = model
        self.base = base
        self.sid = sid
        self.n = 2  # ids .0 and .1 went to the attempt and the start
        self.state = seed & _MASK64
        self.end_t = end_t
        self.silent = silent
        profile = DEVICE_PROFILES[device]
        self.ladder = profile.ladder
        self.rb_factor = profile.rebuffer_factor
        # Players start near the top of their ladder and adapt from there.
        self.level = max(0, len(self.ladder) - 1 - int(self._u() * 3))
        self.incidents = incidents
        self.pending_kind = 0
        self.pending_value: int | str = 0

    def _u(self) -> float:
        """A uniform draw in [0, 1) from the session's own 64-bit LCG stream (its top 53 bits).

        A `random.Random` per session would carry 2.5 KB of state and cost microseconds to seed: at high rates
        that is hundreds of MB, and a cache miss on every heartbeat. An LCG's high bits are plenty for a
        simulation's few draws per interval, and the blake2b-hashed starting state keeps sessions apart.
        """
        x = (self.state * _LCG_MULTIPLIER + _LCG_INCREMENT) & _MASK64
        self.state = x
        return (x >> 11) * _INV_2_53

    def _lognormal(self, mu: float, sigma: float) -> float:
        """A log-normal draw (Box-Muller from two uniforms)."""
        z = math.sqrt(-2.0 * math.log(1.0 - self._u())) * math.cos(_TWO_PI * self._u())
        return math.exp(mu + sigma * z)

    def _event(self, t: int, event_type: str, extra: dict[str, Any]) -> Event:
        n = self.n
        self.n = n + 1
        return {"event_id": f"{self.sid}.{n}", "event_type": event_type, "event_time_ms": t, **self.base, **extra}

    def plan(self, t_prev: int) -> None:
        """Decide what happens in (t_prev, next heartbeat]: push its events and the wake-up at its end.

        One uniform draw picks at most one occurrence per interval (fatal error, rebuffer, bitrate switch or
        pause), each with probability rate x interval length, and a second one places it in the interval. An
        incident multiplies the rate of its kind over the part of the interval it covers: the probability grows
        by the covered share and the occurrence lands in that part proportionally more often, so the events
        outside [start, end) keep the rate of a run without it. Intervals no incident starts or ends in (all of
        them without incidents) take exactly the draws and outcomes of the constant-rate model.
        """
        m = self.model
        t_next = t_prev + m.hb_ms
        final = t_next >= self.end_t
        if final:
            t_next = self.end_t
        length = t_next - t_prev
        u = self._u()
        p_err_base = m.err_per_ms * length
        p_err = p_err_base
        p_rb_base = m.rb_per_ms * length * self.rb_factor
        p_rb = p_rb_base
        incidents = self.incidents
        err_runs = rb_runs = None
        if incidents:
            # Where an occurrence can fall: strictly inside the interval.
            err_runs = rate_runs(incidents, "play_error_multiplier", t_prev + 1, t_next)
            rb_runs = rate_runs(incidents, "rebuffer_multiplier", t_prev + 1, t_next)
            p_err *= mean_multiplier(err_runs)
            p_rb *= mean_multiplier(rb_runs)
        stalled = 0
        paused = 0
        kind = 2 if final else 0  # 0 heartbeat, 1 play_error, 2 play_stop (or silence)
        if u < p_err + p_rb + m.br_per_ms * length + m.pause_per_ms * length and length > 2:
            rng = self._u
            v = rng()
            if u < p_err:
                if err_runs is None:
                    t_x = t_prev + 1 + int(v * (length - 1))  # strictly inside the interval
                    code = None
                else:
                    t_x, mult = place(err_runs, v)
                    # Given an error at t_x, u / p_err is a fresh uniform: 1 - 1/mult of them are the incident's.
                    extra = mult > 1.0 and u * mult >= p_err
                    code = code_override(incidents, t_x, "play_error_code") if extra else None
                self.pending_kind = 1
                self.pending_value = code or PLAY_ERROR_CODES.pick(rng())
                m.push_wake(t_x, self)
                return
            u -= p_err
            push = m.push
            if u < p_rb:
                if rb_runs is None:
                    t_x, p_here = t_prev + 1 + int(v * (length - 1)), p_rb
                else:
                    t_x, mult = place(rb_runs, v)
                    p_here = p_rb_base * mult
                # A stall: rebuffer time grows with the incident's multiplier once the probability saturates.
                stretch = p_here if p_here > 1.0 else 1.0
                stalled = int(self._lognormal(m.rb_mu, m.rb_sigma) * stretch)
                stalled = min(stalled, length // 2)
                push(t_x, self._event(t_x, "rebuffer", {"rebuffer_ms": stalled}))
                if self.level > 0 and rng() < 0.5 and t_x + 1 < t_next:  # players often step down after a stall
                    self._switch(t_x + 1, -1)
            else:
                t_x = t_prev + 1 + int(v * (length - 1))  # strictly inside the interval
                if u - p_rb < m.br_per_ms * length:
                    self._switch(t_x, 1 if rng() < 0.5 else -1)
                elif t_x + 1 < t_next:
                    paused = min(int(self._lognormal(m.pause_mu, m.pause_sigma)), t_next - t_x - 1)
                    push(t_x, self._event(t_x, "pause", {}))
                    push(t_x + paused, self._event(t_x + paused, "resume", {}))
        self.pending_kind = kind
        played = length - stalled - paused
        self.pending_value = played if played > 0 else 0
        m.push_wake(t_next, self)

    def _switch(self, t: int, direction: int) -> None:
        """An adaptive-bitrate switch one rung up or down the ladder (the other way at either end)."""
        old_level = self.level
        new_level = old_level + direction
        if new_level < 0 or new_level >= len(self.ladder):
            new_level = old_level - direction
        if new_level < 0 or new_level >= len(self.ladder):
            return  # a one-rung ladder cannot switch
        self.level = new_level
        self.model.push(
            t,
            self._event(
                t,
                "bitrate_change",
                {"bitrate_kbps": self.ladder[new_level], "previous_bitrate_kbps": self.ladder[old_level]},
            ),
        )

    def wake(self, t: int) -> Event | None:
        """The event at the end of an interval (heartbeat, play_stop, play_error or nothing), planning the next."""
        kind = self.pending_kind
        if kind == 0:
            n = self.n
            self.n = n + 1
            ev = {
                "event_id": f"{self.sid}.{n}",
                "event_type": "heartbeat",
                "event_time_ms": t,
                **self.base,
                "played_ms": self.pending_value,
                "bitrate_kbps": self.ladder[self.level],
            }
            self.plan(t)
            return ev
        if kind == 1:
            return self._event(t, "play_error", {"error_code": self.pending_value})
        if self.silent:
            return None
        return self._event(t, "play_stop", {"played_ms": self.pending_value})


def _startup_multiplier(incidents: tuple[ResolvedIncident, ...], t: int, startup: float) -> float:
    """The startup slowdown of an attempt at `t`: from the incidents active at both its plain and its slowed start.

    A play_start moves from t + startup to t + startup x multiplier; an incident slows it only when both times
    lie inside it, so no start outside the incident is moved, nor one inside moved out.
    """
    by = active_throughout(incidents, "startup_ms_multiplier", t + min(int(startup), 120_000))
    while by:
        mult = product(by, "startup_ms_multiplier")
        t_slowed = t + min(int(startup * mult), 120_000)
        still = tuple(inc for inc in by if inc.active(t_slowed))
        if still == by:
            return mult
        by = still  # fewer incidents, a different slowed time: check again
    return 1.0


class Model:
    """Generates the valid events of a run, in event-time order, in batches."""

    def __init__(self, config: LoadgenConfig, incidents: IncidentSet | None = None) -> None:
        self.config = config
        p = config.params
        self.params = p
        self.hb_ms = p.heartbeat_interval_ms
        self.start_ms = config.start_ms
        self.visible_from = config.start_ms
        self.incidents = incidents if incidents is not None else IncidentSet(config.resolved_incidents())
        self.tag = config.run_tag
        self.seed = config.seed
        world_rng = random.Random(f"world:{config.seed}")
        self.catalogue = Catalogue(p.titles, p.zipf_s, world_rng)
        self.population = Population(p.accounts, world_rng)
        self.diurnal = DiurnalTable(flat=not p.diurnal)
        self.play_rng = random.Random(f"play:{config.seed}")
        self.signup_rng = random.Random(f"signup:{config.seed}")
        self.hidden: dict[str, dict[str, str]] | None = {}
        """Generator-side facts the events do not carry, by event_id: the CDN of a failed start, the plan and
        payment method behind a signup_failed. The ground truth pops them."""

        self.err_per_ms = p.play_errors_per_hour / _HOUR_MS
        self.rb_per_ms = p.rebuffers_per_hour / _HOUR_MS
        self.br_per_ms = p.bitrate_changes_per_hour / _HOUR_MS
        self.pause_per_ms = p.pauses_per_hour / _HOUR_MS
        self.rb_mu, self.rb_sigma = math.log(1200), 0.9
        self.pause_mu, self.pause_sigma = math.log(20_000), 0.8
        self.watch_mu = math.log(p.watch_median_ms)
        self.fail_mu, self.fail_sigma = math.log(1500), 0.6

        per_session, per_funnel = self.expected_events()
        sessions_per_s = config.effective_rate / (per_session + p.signup_share * per_funnel)
        self.session_rate_ms = sessions_per_s / 1000
        self.signup_rate_ms = sessions_per_s * p.signup_share / 1000

        # The agenda is a calendar queue: items of later seconds wait unsorted in per-second buckets, and only
        # the current second is a heap. With tens of thousands of concurrent sessions a single heap spends more
        # time on cache misses than the model spends on everything else.
        self._buckets: dict[int, list[tuple[float, int, int, Any]]] = {}
        self._bucket_order: list[int] = []  # heap of the bucket numbers in `_buckets`
        self._current: list[tuple[float, int, int, Any]] = []  # heap of the current second's items
        self._current_bucket = -(1 << 62)
        self._seq = itertools.count()
        self.sessions = 0
        self.warm_sessions = 0
        self.funnels = 0
        self.warm_funnels = 0
        self._schedule_arrivals()

    # --- rates ------------------------------------------------------------------------------------

    def expected_events(self) -> tuple[float, float]:
        """Expected events per session arrival and per funnel, to turn an event rate into arrival rates."""
        p = self.params
        rng = random.Random(0)  # a fixed sample: the estimate must not depend on the seed
        total_ms = 0.0
        heartbeats = 0.0
        samples = 4000
        for _ in range(samples):
            d = self._watch_ms(rng.gauss(0.0, 1.0))
            total_ms += d
            heartbeats += math.ceil(d / p.heartbeat_interval_ms) - 1
        mean_ms, mean_hb = total_ms / samples, heartbeats / samples
        weights = sum(DEVICE_WEIGHTS)
        fail = sum(w * prof.failure_factor for w, prof in zip(DEVICE_WEIGHTS, DEVICE_PROFILES, strict=True)) / weights
        rb = sum(w * prof.rebuffer_factor for w, prof in zip(DEVICE_WEIGHTS, DEVICE_PROFILES, strict=True)) / weights
        p_fail = min(1.0, p.start_failure_rate * fail)
        extras = (
            mean_ms / _HOUR_MS * (p.rebuffers_per_hour * rb * 1.5 + p.bitrate_changes_per_hour + 2 * p.pauses_per_hour)
        )
        started = 1 + mean_hb + (1 - p.silence_rate) + extras
        per_session = 1 + p_fail + (1 - p_fail) * started
        after_plan = FUNNEL_PAYMENT_RATE * 2 + (1 - FUNNEL_PAYMENT_RATE) * FUNNEL_ABANDON_REPORTED
        per_funnel = 1 + FUNNEL_PLAN_RATE * (1 + after_plan) + (1 - FUNNEL_PLAN_RATE) * FUNNEL_ABANDON_REPORTED
        return per_session, per_funnel

    def _watch_ms(self, z: float) -> int:
        p = self.params
        return max(_MIN_WATCH_MS, min(p.max_session_ms, int(math.exp(self.watch_mu + p.watch_sigma * z))))

    # --- scheduling -------------------------------------------------------------------------------

    def push(self, t: int, event: Event) -> None:
        """Schedule a ready event (dropped if before the visible start, as for warm-start sessions)."""
        if t >= self.visible_from:
            self._schedule((t, next(self._seq), _EVENT, event))

    def push_wake(self, t: int, session: _Session) -> None:
        """Schedule the end of a session's current interval."""
        self._schedule((t, next(self._seq), _WAKE, session))

    def _schedule(self, item: tuple[float, int, int, Any]) -> None:
        bucket = int(item[0] // 1000)
        if bucket <= self._current_bucket:
            heapq.heappush(self._current, item)
            return
        items = self._buckets.get(bucket)
        if items is None:
            self._buckets[bucket] = [item]
            heapq.heappush(self._bucket_order, bucket)
        else:
            items.append(item)

    def _pop(self) -> tuple[float, int, int, Any] | None:
        """The earliest scheduled item, or None when nothing is left."""
        current = self._current
        if not current:
            if not self._bucket_order:
                return None
            bucket = heapq.heappop(self._bucket_order)
            current = self._current = self._buckets.pop(bucket)
            current.sort()  # a sorted list is a heap
            self._current_bucket = bucket
        return heapq.heappop(current)

    def _next_arrival(self, t: float, rate_ms: float, rng: random.Random) -> float:
        """Next arrival after `t` of a Poisson process following the diurnal curve (by thinning)."""
        table = self.diurnal
        peak = rate_ms * table.peak / table.mean
        total = table.total
        scale = rate_ms / table.mean
        while True:
            t += rng.expovariate(peak)
            if rng.random() * peak < scale * total[int(t // MINUTE_MS) % 1440]:
                return t

    def _schedule_arrivals(self) -> None:
        start = float(self.start_ms)
        if self.params.warm_start:
            # Replay the arrivals of the last few hours with their own generators, keeping what is still going on.
            warm_play = random.Random(f"warm-play:{self.seed}")
            # Sessions longer than ~4 sigma are too rare to matter; replaying further back only costs time.
            longest = min(
                self.params.max_session_ms, self.params.watch_median_ms * math.exp(4 * self.params.watch_sigma)
            )
            t = start - longest - 180_000
            # Inlined thinning and duration check: most candidates of the last hours ended long ago, and at high
            # rates there are millions of them.
            table = self.diurnal
            peak = self.session_rate_ms * table.peak / table.mean
            scale = self.session_rate_ms / table.mean
            total = table.total
            expo, uniform, gauss = warm_play.expovariate, warm_play.random, warm_play.gauss
            mu, sigma = self.watch_mu, self.params.watch_sigma
            lo, hi = _MIN_WATCH_MS, self.params.max_session_ms
            while True:
                t += expo(peak)
                if t >= start:
                    break
                if uniform() * peak >= scale * total[int(t // MINUTE_MS) % 1440]:
                    continue
                watch = min(hi, max(lo, int(math.exp(mu + sigma * gauss(0.0, 1.0)))))
                if t + 180_000 + watch >= start:  # startup and failure times are well under 3 minutes
                    self._session_arrival(t, warm_play, warm=True, watch=watch)
            warm_signup = random.Random(f"warm-signup:{self.seed}")
            t = start - 2 * _HOUR_MS
            while self.signup_rate_ms > 0:
                t = self._next_arrival(t, self.signup_rate_ms, warm_signup)
                if t >= start:
                    break
                self._signup_arrival(t, warm_signup, warm=True)
        first = self._next_arrival(start, self.session_rate_ms, self.play_rng)
        self._schedule((first, next(self._seq), _PLAY_ARRIVAL, None))
        if self.signup_rate_ms > 0:
            first = self._next_arrival(start, self.signup_rate_ms, self.signup_rng)
            self._schedule((first, next(self._seq), _SIGNUP_ARRIVAL, None))

    # --- playback ---------------------------------------------------------------------------------

    def _session_arrival(self, t_float: float, rng: random.Random, warm: bool = False, watch: int = 0) -> None:
        r = rng.random
        t = int(t_float)
        if not warm:
            watch = self._watch_ms(rng.gauss(0.0, 1.0))
        # A fixed set of draws per arrival, whatever happens next (see the module docstring).
        u_country, u_account, u_fav, u_device, u_title, u_cdn = r(), r(), r(), r(), r(), r()
        u_drop, u_fail, u_code, u_silent = r(), r(), r(), r()
        z_startup, z_fail = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
        if warm:
            k = self.warm_sessions
            self.warm_sessions += 1
            sid = f"{self.tag}-w{k:x}"
            seed = hash_seed(self.seed, 1, k)
        else:
            k = self.sessions
            self.sessions += 1
            sid = f"{self.tag}-s{k:x}"
            seed = hash_seed(self.seed, 0, k)

        ci = self.diurnal.country_index(int(t_float // MINUTE_MS) % 1440, u_country)
        country = COUNTRIES[ci]
        accounts = self.population.by_country[ci]
        account_number = accounts[int(u_account * len(accounts))]
        favourite = self.population.favourite_device[account_number]
        account = Population.account_id(account_number)
        device = favourite if u_fav < FAVOURITE_DEVICE_SHARE else _DEVICE_CHOICE.index(u_device)
        device_type = DEVICE_TYPES[device]
        title = self.catalogue.pick(u_title)
        cdn = _CDN_CHOICES[ci].pick(u_cdn)

        profile = DEVICE_PROFILES[device]
        p_fail = min(1.0, self.params.start_failure_rate * profile.failure_factor)
        # Both possible outcomes are timed before anything is decided, so an incident can take an attempt only
        # when every event its effect moves, replaces or removes lies inside the incident (active_throughout).
        t_fail = t + min(60_000, int(math.exp(self.fail_mu + self.fail_sigma * z_fail)))
        startup = math.exp(math.log(profile.startup_median_ms) + profile.startup_sigma * z_startup)
        incidents: tuple[ResolvedIncident, ...] = ()
        fail_mult = 1.0
        if self.incidents:
            incidents = self.incidents.in_scope(
                {"country": country.code, "device_type": device_type, "cdn": cdn, "title_id": title}
            )
            if incidents:
                startup *= _startup_multiplier(incidents, t, startup)
                t_start = t + min(int(startup), 120_000)
                failing_by = active_throughout(incidents, "start_failure_multiplier", t_fail, t_start)
                fail_mult = product(failing_by, "start_failure_multiplier")
                t_outcome = t_fail if u_fail < p_fail * fail_mult else t_start
                dropping_by = active_throughout(incidents, "starts_drop", t, t_outcome)
                keep = 1.0
                for inc in dropping_by:
                    keep *= 1.0 - inc.effect.starts_drop
                if u_drop >= keep:
                    for inc in dropping_by:
                        self.incidents.dropped_attempts[inc.name] += 1
                    return

        base = {
            "country": country.code,
            "device_type": device_type,
            "schema_version": SCHEMA_VERSION,
            "session_id": sid,
            "account_id": account,
            "title_id": title,
        }
        push = self.push
        push(t, {"event_id": f"{sid}.0", "event_type": "play_attempt", "event_time_ms": t, **base})

        startup_ms = min(int(startup), 120_000)
        t_start = t + startup_ms
        if u_fail < p_fail * fail_mult:
            code = None
            if u_fail >= p_fail:  # one of the incident's extra failures
                coding_by = active_throughout(incidents, "start_failure_error_code", t_fail, t_start)
                code = coding_by[0].effect.start_failure_error_code if coding_by else None
            eid = f"{sid}.1"
            if self.hidden is not None and t_fail >= self.visible_from:
                self.hidden[eid] = {"cdn": cdn}
            push(
                t_fail,
                {
                    "event_id": eid,
                    "event_type": "start_failure",
                    "event_time_ms": t_fail,
                    **base,
                    "error_code": code or START_FAILURE_CODES.pick(u_code),
                },
            )
            return

        push(
            t_start,
            {
                "event_id": f"{sid}.1",
                "event_type": "play_start",
                "event_time_ms": t_start,
                **base,
                "startup_ms": startup_ms,
                "cdn": cdn,
            },
        )
        session = _Session(
            self,
            base,
            sid,
            seed,
            t_start + watch,
            u_silent < self.params.silence_rate,
            device,
            incidents,
        )
        first = t_start
        if t_start < self.start_ms:
            # Warm start: skip the intervals that are over, resume at the heartbeat slot before the run start.
            first = t_start + ((self.start_ms - t_start - 1) // self.hb_ms) * self.hb_ms
        session.plan(first)

    # --- sign-up ----------------------------------------------------------------------------------

    def _signup_arrival(self, t_float: float, rng: random.Random, warm: bool = False) -> None:
        r = rng.random
        t0 = int(t_float)
        u_country, u_device, u_channel, u_plan, u_method = r(), r(), r(), r(), r()
        u_step1, u_step2, u_outcome, u_report = r(), r(), r(), r()
        z1, z2, z3, z4 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
        if warm:
            k = self.warm_funnels
            self.warm_funnels += 1
            fid = f"{self.tag}-g{k:x}"
        else:
            k = self.funnels
            self.funnels += 1
            fid = f"{self.tag}-f{k:x}"
        ci = self.diurnal.country_index(int(t_float // MINUTE_MS) % 1440, u_country)
        country = COUNTRIES[ci]
        device_type = DEVICE_TYPES[_DEVICE_CHOICE.index(u_device)]
        channel = _CHANNEL_CHOICE.pick(u_channel)
        plan = _PLAN_CHOICE.pick(u_plan)
        method_choice = _METHOD_CHOICES[ci]
        mi = method_choice.index(u_method)
        method = method_choice.values[mi]
        base = {
            "country": country.code,
            "device_type": device_type,
            "schema_version": SCHEMA_VERSION,
            "signup_id": fid,
            "channel": channel,
        }
        push = self.push
        push(t0, {"event_id": f"{fid}.0", "event_type": "signup_started", "event_time_ms": t0, **base})
        abandon_after = int(math.exp(math.log(600_000) + 0.5 * z4))
        if u_step1 >= FUNNEL_PLAN_RATE:
            if u_report < FUNNEL_ABANDON_REPORTED:
                self._signup_failed(t0 + abandon_after, f"{fid}.1", base, REASON_ABANDONED, None, None)
            return
        t1 = t0 + int(math.exp(math.log(40_000) + 0.7 * z1))
        push(t1, {"event_id": f"{fid}.1", "event_type": "plan_selected", "event_time_ms": t1, **base, "plan": plan})
        if u_step2 >= FUNNEL_PAYMENT_RATE:
            if u_report < FUNNEL_ABANDON_REPORTED:
                self._signup_failed(t1 + abandon_after, f"{fid}.2", base, REASON_ABANDONED, plan, None)
            return
        t2 = t1 + int(math.exp(math.log(90_000) + 0.6 * z2))
        push(
            t2,
            {
                "event_id": f"{fid}.2",
                "event_type": "payment_submitted",
                "event_time_ms": t2,
                **base,
                "plan": plan,
                "payment_method": method,
            },
        )
        t3 = t2 + int(math.exp(math.log(3_000) + 0.5 * z3))
        p_decline = DECLINE_RATES[mi]  # the country's method choice lists PAYMENT_METHODS in order
        if self.incidents:
            scope = self.incidents.in_scope(
                {
                    "country": country.code,
                    "device_type": device_type,
                    "channel": channel,
                    "plan": plan,
                    "payment_method": method,
                }
            )
            if scope:
                p_decline = min(1.0, p_decline * multiplier(scope, t3, "payment_decline_multiplier"))
        if u_outcome < p_decline:
            self._signup_failed(t3, f"{fid}.3", base, REASON_DECLINED, plan, method)
        elif u_outcome < p_decline + FRAUD_RATE:
            self._signup_failed(t3, f"{fid}.3", base, REASON_FRAUD, plan, method)
        elif u_outcome < p_decline + FRAUD_RATE + TECHNICAL_ERROR_RATE:
            self._signup_failed(t3, f"{fid}.3", base, REASON_TECHNICAL, plan, method)
        else:
            push(
                t3,
                {
                    "event_id": f"{fid}.3",
                    "event_type": "signup_completed",
                    "event_time_ms": t3,
                    **base,
                    "plan": plan,
                    "payment_method": method,
                    "account_id": f"{self.tag}-n{k:x}" if not warm else f"{self.tag}-m{k:x}",
                    "price_cents": plan_price_cents(country, plan),
                    "currency": country.currency,
                },
            )

    def _signup_failed(
        self, t: int, eid: str, base: dict[str, Any], reason: str, plan: str | None, method: str | None
    ) -> None:
        if self.hidden is not None and t >= self.visible_from:
            hidden = {}
            if plan is not None:
                hidden["plan"] = plan
            if method is not None:
                hidden["payment_method"] = method
            if hidden:
                self.hidden[eid] = hidden
        self.push(
            t, {"event_id": eid, "event_type": "signup_failed", "event_time_ms": t, **base, "failure_reason": reason}
        )

    # --- the loop ---------------------------------------------------------------------------------

    def batches(self, batch_size: int = 4096) -> Iterator[list[Event]]:
        """Valid events in event-time order, in lists of up to `batch_size`, until the span or count ends."""
        limit = self.config.events if self.config.events is not None else math.inf
        end = self.config.end_ms if self.config.end_ms is not None and not self.config.soft_span else math.inf
        out: list[Event] = []
        n = 0
        pop = heapq.heappop
        while True:
            # The agenda's pop, inlined: this loop runs once per event.
            current = self._current
            if not current:
                item = self._pop()
                if item is None:
                    break
                t, _, kind, obj = item
            else:
                t, _, kind, obj = pop(current)
            if t >= end:
                break
            if kind == _EVENT:
                ev = obj
            elif kind == _WAKE:
                ev = obj.wake(t)
                if ev is None or t < self.visible_from:  # warm-start sessions: the past is not sent
                    continue
            elif kind == _PLAY_ARRIVAL:
                self._session_arrival(t, self.play_rng)
                nxt = self._next_arrival(t, self.session_rate_ms, self.play_rng)
                self._schedule((nxt, next(self._seq), _PLAY_ARRIVAL, None))
                continue
            else:
                self._signup_arrival(t, self.signup_rng)
                nxt = self._next_arrival(t, self.signup_rate_ms, self.signup_rng)
                self._schedule((nxt, next(self._seq), _SIGNUP_ARRIVAL, None))
                continue
            out.append(ev)
            n += 1
            if n >= limit:
                break
            if len(out) >= batch_size:
                yield out
                out = []
        if out:
            yield out
