"""Shaped session arrivals: the diurnal curve x weekends x top-of-hour bursts x drift x gamma noise x premieres.

Arrivals are still thinned from a homogeneous process, one 10 s slot at a time (the exponential gap is
memoryless, so restarting it at a slot's end is exact): in each slot the candidate rate is the plain curve's
rate times the largest multiplier any country x device type cell has in it (and any `starts_multiplier`
incident overlapping it). A candidate picks its viewer exactly as a plain arrival does (country from the
curve's mix, account, device, title, CDN), then is kept with probability its own multiplier over that largest
one. So each cell's sessions arrive as a Poisson process at exactly its plain rate x its multiplier, and
nothing per event changes: the multipliers are one table row per slot, computed once when the slot begins.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from loadgen.diurnal import DAY_MS, MINUTE_MS, DiurnalTable
from loadgen.realism import SHAPE_SLOT_MS, TOP_OF_HOUR_MS, RealismParams
from loadgen.world import COUNTRIES, DEVICE_TYPES

if TYPE_CHECKING:
    from loadgen.incidents import ResolvedIncident

HOUR_MS = 3_600_000
_DEVICES = len(DEVICE_TYPES)
# 1970-01-01 was a Thursday: day number + 3, modulo 7, counts weekdays from Monday = 0.
_EPOCH_WEEKDAY = 3
_SATURDAY = 5


def weekday(local_ms: int) -> int:
    """The weekday (Monday 0 .. Sunday 6) of a local time given as epoch ms shifted by its UTC offset."""
    return (local_ms // DAY_MS + _EPOCH_WEEKDAY) % 7


class TrafficShape:
    """Per-slot multipliers of each country x device type's session rate, and the candidate rate they need."""

    def __init__(
        self,
        realism: RealismParams,
        seed: int,
        start_ms: int,
        diurnal: DiurnalTable,
        session_rate_ms: float,
        starts_incidents: tuple[ResolvedIncident, ...],
    ) -> None:
        self.realism = realism
        self._seed = seed
        self._start_ms = start_ms
        self._total = diurnal.total
        self._scale = session_rate_ms / diurnal.mean
        self._offsets_ms = tuple(c.utc_offset_min * MINUTE_MS for c in COUNTRIES)
        # Weekends x boost, weekdays scaled down so that the week's mean rate is the configured one.
        boost = realism.weekend_boost
        self._weekday_factor = 7 / (5 + 2 * boost)
        self._weekend_factor = boost * self._weekday_factor
        self._shape = 1 / realism.dispersion**2 if realism.dispersion else 0.0
        self._starts = starts_incidents
        self._slot = -1
        self._gamma_slot = -1
        self._gamma: list[float] = []
        self.row: list[float] = []
        """The current slot's multiplier per cell, index country x len(DEVICE_TYPES) + device."""
        self._starts_here: tuple[ResolvedIncident, ...] = ()
        self._bound = 1.0
        self._rate = 0.0

    def load(self, slot: int) -> None:
        """Compute the multipliers of 10 s slot `slot` (epoch ms // SHAPE_SLOT_MS)."""
        r = self.realism
        t0 = slot * SHAPE_SLOT_MS
        drift = (1 + r.drift_per_day) ** ((t0 - self._start_ms) / DAY_MS) if r.drift_per_day else 1.0
        gamma = self._gamma_row(t0 // r.dispersion_every_ms) if self._shape else None
        row: list[float] = []
        for ci, offset in enumerate(self._offsets_ms):
            local = t0 + offset
            factor = drift
            if r.weekend_boost != 1.0:
                factor *= self._weekend_factor if weekday(local) >= _SATURDAY else self._weekday_factor
            if r.top_of_hour_boost and local % HOUR_MS < TOP_OF_HOUR_MS:
                factor *= 1 + r.top_of_hour_boost
            if gamma is None:
                row.extend([factor] * _DEVICES)
            else:
                row.extend(factor * g for g in gamma[ci * _DEVICES : (ci + 1) * _DEVICES])
        self.row = row
        self._starts_here = tuple(i for i in self._starts if i.start_ms < t0 + SHAPE_SLOT_MS and i.end_ms > t0)
        bound = max(row)
        for inc in self._starts_here:
            bound *= max(1.0, inc.effect.starts_multiplier)
        self._bound = bound
        self._rate = self._scale * self._total[(t0 // MINUTE_MS) % 1440] * bound
        self._slot = slot

    def _gamma_row(self, gamma_slot: int) -> list[float]:
        # Each period's factors come from their own stream, so they do not depend on what was drawn before.
        if gamma_slot != self._gamma_slot:
            rng = random.Random(f"shape:{self._seed}:{gamma_slot}")
            alpha, beta = self._shape, 1 / self._shape
            self._gamma = [rng.gammavariate(alpha, beta) for _ in range(len(COUNTRIES) * _DEVICES)]
            self._gamma_slot = gamma_slot
        return self._gamma

    def next_candidate(self, t: float, rng: random.Random) -> float:
        """The next candidate arrival after `t` (to be kept with probability `keep`)."""
        while True:
            slot = int(t // SHAPE_SLOT_MS)
            if slot != self._slot:
                self.load(slot)
            end = (slot + 1) * SHAPE_SLOT_MS
            if self._rate > 0:
                nxt = t + rng.expovariate(self._rate)
                if nxt < end:
                    return nxt
            t = float(end)

    def keep(self, t: float, country_index: int, device: int) -> float:
        """The probability of keeping a candidate at `t` in this cell, before any `starts_multiplier`."""
        slot = int(t // SHAPE_SLOT_MS)
        if slot != self._slot:
            self.load(slot)
        return self.row[country_index * _DEVICES + device] / self._bound

    @property
    def starts_incidents_here(self) -> tuple[ResolvedIncident, ...]:
        """The `starts_multiplier` incidents overlapping the current slot (usually none)."""
        return self._starts_here
