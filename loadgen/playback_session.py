"""One started playback session: its own random stream and what happens in each heartbeat interval.

After `play_start` a session is advanced one heartbeat interval at a time:
`plan` decides what happens in the next interval (at most one fatal error,
rebuffer, bitrate switch or pause/resume pair) and schedules the wake-up at
its end, where `wake` emits the heartbeat, `play_stop` or `play_error`.
Each session draws from its own 64-bit stream seeded from (seed, session
number), so an incident changes only the sessions in its scope.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from loadgen.incident_effects import code_override, mean_multiplier, place, rate_runs
from loadgen.incidents import ResolvedIncident
from loadgen.world import DEVICE_PROFILES, PLAY_ERROR_CODES

if TYPE_CHECKING:
    from loadgen.model import Model

Event = dict[str, Any]
# (from, to, multiplier) runs of an interval, as `rate_runs` cuts it.
Runs = tuple[tuple[int, int, float], ...]

_MASK64 = (1 << 64) - 1
_LCG_MULTIPLIER = 6364136223846793005  # Knuth's MMIX constants
_LCG_INCREMENT = 1442695040888963407
_INV_2_53 = 1.0 / (1 << 53)
_TWO_PI = 2.0 * math.pi


def hash_seed(seed: int, stream: int, k: int) -> int:
    """A 64-bit starting state for session `k` of `stream` (0 live, 1 warm start) of a run with `seed`."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class PlaybackSession:
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
            v = self._u()
            if u < p_err:
                self._fatal_error(t_prev, length, u, v, p_err, err_runs)
                return
            u -= p_err
            if u < p_rb:
                stalled = self._rebuffer(t_prev, t_next, v, p_rb, p_rb_base, rb_runs)
            else:
                t_x = t_prev + 1 + int(v * (length - 1))  # strictly inside the interval
                if u - p_rb < m.br_per_ms * length:
                    self._switch(t_x, 1 if self._u() < 0.5 else -1)
                elif t_x + 1 < t_next:
                    paused = self._pause(t_x, t_next)
        self.pending_kind = kind
        played = length - stalled - paused
        self.pending_value = played if played > 0 else 0
        m.push_wake(t_next, self)

    def _fatal_error(self, t_prev: int, length: int, u: float, v: float, p_err: float, err_runs: Runs | None) -> None:
        """End the session with a play_error inside the interval: its wake-up emits it."""
        if err_runs is None:
            t_x = t_prev + 1 + int(v * (length - 1))  # strictly inside the interval
            code = None
        else:
            t_x, mult = place(err_runs, v)
            # Given an error at t_x, u / p_err is a fresh uniform: 1 - 1/mult of them are the incident's.
            extra = mult > 1.0 and u * mult >= p_err
            code = code_override(self.incidents, t_x, "play_error_code") if extra else None
        self.pending_kind = 1
        self.pending_value = code or PLAY_ERROR_CODES.pick(self._u())
        self.model.push_wake(t_x, self)

    def _rebuffer(self, t_prev: int, t_next: int, v: float, p_rb: float, p_rb_base: float, rb_runs: Runs | None) -> int:
        """A stall inside the interval (and often a step down the ladder after it); returns the time stalled."""
        m = self.model
        length = t_next - t_prev
        if rb_runs is None:
            t_x, p_here = t_prev + 1 + int(v * (length - 1)), p_rb
        else:
            t_x, mult = place(rb_runs, v)
            p_here = p_rb_base * mult
        # A stall: rebuffer time grows with the incident's multiplier once the probability saturates.
        stretch = p_here if p_here > 1.0 else 1.0
        stalled = int(self._lognormal(m.rb_mu, m.rb_sigma) * stretch)
        stalled = min(stalled, length // 2)
        m.push(t_x, self._event(t_x, "rebuffer", {"rebuffer_ms": stalled}))
        if self.level > 0 and self._u() < 0.5 and t_x + 1 < t_next:  # players often step down after a stall
            self._switch(t_x + 1, -1)
        return stalled

    def _pause(self, t_x: int, t_next: int) -> int:
        """A pause at `t_x` and its resume before the interval ends; returns the time paused."""
        m = self.model
        paused = min(int(self._lognormal(m.pause_mu, m.pause_sigma)), t_next - t_x - 1)
        m.push(t_x, self._event(t_x, "pause", {}))
        m.push(t_x + paused, self._event(t_x + paused, "resume", {}))
        return paused

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
