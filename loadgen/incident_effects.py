"""Incidents applied while generating: which are in scope, and their effects over time (loadgen/incidents.py parses them).

The generator's hot loops ask these per entity or per run of time, never per event with a parse behind it.
"""

from __future__ import annotations

import itertools

from loadgen.incidents import Effect, ResolvedIncident


class IncidentSet:
    """Resolved incidents, with fast look-ups for the generator's hot loop."""

    def __init__(self, incidents: tuple[ResolvedIncident, ...]) -> None:
        self.incidents = incidents
        self.dropped_attempts: dict[str, int] = {i.name: 0 for i in incidents}

    def __bool__(self) -> bool:
        return bool(self.incidents)

    def in_scope(self, attrs: dict[str, str]) -> tuple[ResolvedIncident, ...]:
        """Incidents whose scope covers an entity, whatever the time."""
        return tuple(i for i in self.incidents if i.matches(attrs))


def multiplier(incidents: tuple[ResolvedIncident, ...], t_ms: int, effect: str) -> float:
    """Product of one multiplier effect over the incidents active at `t_ms`."""
    m = 1.0
    for inc in incidents:
        if inc.start_ms <= t_ms < inc.end_ms:
            m *= getattr(inc.effect, effect)
    return m


def code_override(incidents: tuple[ResolvedIncident, ...], t_ms: int, effect: str) -> str | None:
    """The error code an active incident imposes on its extra errors (the first one wins)."""
    for inc in incidents:
        if inc.start_ms <= t_ms < inc.end_ms:
            code: str | None = getattr(inc.effect, effect)
            if code is not None:
                return code
    return None


_NEUTRAL = Effect()


def active_throughout(
    incidents: tuple[ResolvedIncident, ...], effect: str, *times: int
) -> tuple[ResolvedIncident, ...]:
    """The incidents that change `effect` and are active at every one of `times`.

    A decision that moves or replaces events (a start that fails instead, a start that comes later, an attempt
    that never happens) touches an event on each side: the incident takes it only when all of them lie inside
    its [start, end), so no event outside that range changes.
    """
    neutral = getattr(_NEUTRAL, effect)
    return tuple(
        inc
        for inc in incidents
        if getattr(inc.effect, effect) != neutral and all(inc.start_ms <= t < inc.end_ms for t in times)
    )


def product(incidents: tuple[ResolvedIncident, ...], effect: str) -> float:
    """Product of one multiplier effect over `incidents` (1 for none)."""
    m = 1.0
    for inc in incidents:
        m *= getattr(inc.effect, effect)
    return m


def rate_runs(
    incidents: tuple[ResolvedIncident, ...], effect: str, lo: int, hi: int
) -> tuple[tuple[int, int, float], ...]:
    """[lo, hi) cut where an incident changing `effect` starts or ends, as (from, to, multiplier) runs.

    One run when nothing starts or ends inside the range: the common case, which callers treat as a constant
    multiplier so their arithmetic (and output) is exactly that of a constant rate.
    """
    neutral = getattr(_NEUTRAL, effect)
    cuts = {lo, hi}
    for inc in incidents:
        if getattr(inc.effect, effect) != neutral:
            if lo < inc.start_ms < hi:
                cuts.add(inc.start_ms)
            if lo < inc.end_ms < hi:
                cuts.add(inc.end_ms)
    if len(cuts) <= 2:
        return ((lo, hi, multiplier(incidents, lo, effect)),)
    edges = sorted(cuts)
    return tuple((a, b, multiplier(incidents, a, effect)) for a, b in itertools.pairwise(edges))


def mean_multiplier(runs: tuple[tuple[int, int, float], ...]) -> float:
    """The time-weighted mean multiplier of `rate_runs` (exactly the multiplier when there is one run)."""
    if len(runs) == 1:
        return runs[0][2]
    return sum((b - a) * m for a, b, m in runs) / (runs[-1][1] - runs[0][0])


def place(runs: tuple[tuple[int, int, float], ...], v: float) -> tuple[int, float]:
    """The time an occurrence falls at for a uniform draw `v`, with density proportional to the multiplier.

    Returns (time, multiplier there). With one run this is `lo + int(v * (hi - lo))`, a uniform time.
    """
    if len(runs) == 1:
        lo, hi, m = runs[0]
        return lo + int(v * (hi - lo)), m
    target = v * sum((b - a) * m for a, b, m in runs)
    for a, b, m in runs:
        weight = (b - a) * m
        if target < weight:
            return min(b - 1, a + int(target / m)), m
        target -= weight
    a, b, m = next(r for r in reversed(runs) if r[2] > 0)  # rounding at the very top: the last slot that can have it
    return b - 1, m
