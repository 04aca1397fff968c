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

import hashlib
import random
from typing import TYPE_CHECKING

import numpy as np

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
# Gamma factors are drawn this many periods at a time: one NumPy call an hour instead of 84 draws a slot.
_GAMMA_BLOCK = 360


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
        self._offsets_ms = np.array([c.utc_offset_min * MINUTE_MS for c in COUNTRIES], np.int64)
        # Weekends x boost, weekdays scaled down so that the week's mean rate is the configured one.
        boost = realism.weekend_boost
        self._weekday_factor = 7 / (5 + 2 * boost)
        self._weekend_factor = boost * self._weekday_factor
        self._shape = 1 / realism.dispersion**2 if realism.dispersion else 0.0
        self._starts = starts_incidents
        self._slot = -1
        self._gamma_block = -1
        self._gamma = np.ones((0, len(COUNTRIES) * _DEVICES))
        self.row: list[float] = []
        """The current slot's multiplier per cell, index country x len(DEVICE_TYPES) + device."""
        self._starts_here: tuple[ResolvedIncident, ...] = ()
        self._bound = 1.0
        self._rate = 0.0

    def load(self, slot: int) -> None:
        """Compute the multipliers of 10 s slot `slot` (epoch ms // SHAPE_SLOT_MS)."""
        r = self.realism
        t0 = slot * SHAPE_SLOT_MS
        local = t0 + self._offsets_ms
        drift = (1 + r.drift_per_day) ** ((t0 - self._start_ms) / DAY_MS) if r.drift_per_day else 1.0
        factor = np.full(len(COUNTRIES), drift)
        if r.weekend_boost != 1.0:
            weekend = (local // DAY_MS + _EPOCH_WEEKDAY) % 7 >= _SATURDAY
            factor *= np.where(weekend, self._weekend_factor, self._weekday_factor)
        if r.top_of_hour_boost:
            factor *= np.where(local % HOUR_MS < TOP_OF_HOUR_MS, 1 + r.top_of_hour_boost, 1.0)
        cells = np.repeat(factor, _DEVICES)
        if self._shape:
            cells *= self._gamma_row(t0 // r.dispersion_every_ms)
        row: list[float] = cells.tolist()
        self.row = row
        self._starts_here = tuple(i for i in self._starts if i.start_ms < t0 + SHAPE_SLOT_MS and i.end_ms > t0)
        bound = max(row)
        for inc in self._starts_here:
            bound *= max(1.0, inc.effect.starts_multiplier)
        self._bound = bound
        self._rate = self._scale * self._total[(t0 // MINUTE_MS) % 1440] * bound
        self._slot = slot

    def _gamma_row(self, period: int) -> np.ndarray:
        # Each block of periods comes from its own stream, so no factor depends on which slots were visited.
        block, index = divmod(period, _GAMMA_BLOCK)
        if block != self._gamma_block:
            key = hashlib.blake2b(f"shape:{self._seed}:{block}".encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(key, "little"))
            self._gamma = rng.gamma(self._shape, 1 / self._shape, (_GAMMA_BLOCK, len(COUNTRIES) * _DEVICES))
            self._gamma_block = block
        row: np.ndarray = self._gamma[index]
        return row

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
