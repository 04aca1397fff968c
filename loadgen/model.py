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
The exception is `starts_multiplier` (a premiere): it changes when arrivals
happen, so the arrivals from its start on differ from a run without it (the
traffic outside its scope keeps the same rates, not the same bytes).

The model is a discrete-event simulation over an agenda of (time, sequence,
kind, payload) (a calendar queue); sessions are advanced one heartbeat interval at a time so
memory stays proportional to the number of concurrent sessions, not events.

This module holds the run's state, the agenda and the loop; the parts it runs
are modules of their own: loadgen/arrivals.py (when arrivals happen, the warm
start), loadgen/playback_arrival.py (an attempt: viewer, start or failure),
loadgen/playback_session.py (a started session, interval by interval),
loadgen/signup_funnel.py (a sign-up funnel) and, with realistic-noise options or
a premiere, loadgen/traffic_shape.py (arrivals shaped per slot and cell).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

from loadgen.arrivals import HOUR_MS, MIN_WATCH_MS, next_arrival, replay_warm_start
from loadgen.config import LoadgenConfig
from loadgen.diurnal import DiurnalTable
from loadgen.incident_effects import IncidentSet
from loadgen.playback_arrival import session_arrival, shaped_session_arrival
from loadgen.playback_session import PlaybackSession
from loadgen.signup_funnel import FUNNEL_ABANDON_REPORTED, FUNNEL_PAYMENT_RATE, FUNNEL_PLAN_RATE, signup_arrival
from loadgen.traffic_shape import TrafficShape
from loadgen.world import DEVICE_PROFILES, DEVICE_WEIGHTS, Catalogue, Population
from schemas.contract import families

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
        self.diurnal = DiurnalTable(flat=not p.diurnal, peak_trough=config.realism.peak_trough)
        self.play_rng = random.Random(f"play:{config.seed}")
        self.signup_rng = random.Random(f"signup:{config.seed}")
        self.hidden: dict[str, dict[str, str]] | None = {}
        """Generator-side facts the events do not carry, by event_id: the CDN of a failed start, the plan and
        payment method behind a signup_failed. The ground truth pops them."""

        self.err_per_ms = p.play_errors_per_hour / HOUR_MS
        self.rb_per_ms = p.rebuffers_per_hour / HOUR_MS
        self.br_per_ms = p.bitrate_changes_per_hour / HOUR_MS
        self.pause_per_ms = p.pauses_per_hour / HOUR_MS
        self.rb_mu, self.rb_sigma = math.log(1200), 0.9
        self.pause_mu, self.pause_sigma = math.log(20_000), 0.8
        self.watch_mu = math.log(p.watch_median_ms)
        self.fail_mu, self.fail_sigma = math.log(1500), 0.6

        per_session, per_funnel = self.expected_events()
        sessions_per_s = config.effective_rate / (per_session + p.signup_share * per_funnel)
        self.session_rate_ms = sessions_per_s / 1000
        self.signup_rate_ms = sessions_per_s * p.signup_share / 1000
        starts_incidents = tuple(i for i in self.incidents.incidents if i.effect.starts_multiplier != 1.0)
        self.shape: TrafficShape | None = None
        """Shaped arrivals (loadgen/traffic_shape.py) when a realistic option or a premiere needs them."""
        if config.realism.shapes_arrivals or starts_incidents:
            self.shape = TrafficShape(
                config.realism, self.seed, self.start_ms, self.diurnal, self.session_rate_ms, starts_incidents
            )

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
            d = self.watch_ms(rng.gauss(0.0, 1.0))
            total_ms += d
            heartbeats += math.ceil(d / p.heartbeat_interval_ms) - 1
        mean_ms, mean_hb = total_ms / samples, heartbeats / samples
        weights = sum(DEVICE_WEIGHTS)
        fail = sum(w * prof.failure_factor for w, prof in zip(DEVICE_WEIGHTS, DEVICE_PROFILES, strict=True)) / weights
        rb = sum(w * prof.rebuffer_factor for w, prof in zip(DEVICE_WEIGHTS, DEVICE_PROFILES, strict=True)) / weights
        p_fail = min(1.0, p.start_failure_rate * fail)
        extras = (
            mean_ms / HOUR_MS * (p.rebuffers_per_hour * rb * 1.5 + p.bitrate_changes_per_hour + 2 * p.pauses_per_hour)
        )
        started = 1 + mean_hb + (1 - p.silence_rate) + extras
        per_session = 1 + p_fail + (1 - p_fail) * started
        after_plan = FUNNEL_PAYMENT_RATE * 2 + (1 - FUNNEL_PAYMENT_RATE) * FUNNEL_ABANDON_REPORTED
        per_funnel = 1 + FUNNEL_PLAN_RATE * (1 + after_plan) + (1 - FUNNEL_PLAN_RATE) * FUNNEL_ABANDON_REPORTED
        return per_session, per_funnel

    def watch_ms(self, z: float) -> int:
        """A session's watch time for a standard normal draw `z` (log-normal, clamped)."""
        p = self.params
        return max(MIN_WATCH_MS, min(p.max_session_ms, int(math.exp(self.watch_mu + p.watch_sigma * z))))

    # --- scheduling -------------------------------------------------------------------------------

    def push(self, t: int, event: Event) -> None:
        """Schedule a ready event (dropped if before the visible start, as for warm-start sessions)."""
        if t >= self.visible_from:
            self._schedule((t, next(self._seq), _EVENT, event))

    def push_wake(self, t: int, session: PlaybackSession) -> None:
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

    def _schedule_arrivals(self) -> None:
        if self.params.warm_start:
            replay_warm_start(self)
        start = float(self.start_ms)
        first = self._next_play_arrival(start)
        self._schedule((first, next(self._seq), _PLAY_ARRIVAL, None))
        if self.signup_rate_ms > 0:
            first = next_arrival(self.diurnal, start, self.signup_rate_ms, self.signup_rng)
            self._schedule((first, next(self._seq), _SIGNUP_ARRIVAL, None))

    def _next_play_arrival(self, t: float) -> float:
        """The next playback arrival (a candidate, with shaped arrivals) after `t`."""
        if self.shape is None:
            return next_arrival(self.diurnal, t, self.session_rate_ms, self.play_rng)
        return self.shape.next_candidate(t, self.play_rng)

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
                if self.shape is None:
                    session_arrival(self, t, self.play_rng)
                else:
                    shaped_session_arrival(self, t, self.play_rng)
                nxt = self._next_play_arrival(t)
                self._schedule((nxt, next(self._seq), _PLAY_ARRIVAL, None))
                continue
            else:
                signup_arrival(self, t, self.signup_rng)
                nxt = next_arrival(self.diurnal, t, self.signup_rate_ms, self.signup_rng)
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
