"""Realistic-noise traffic options (issue 15): overdispersion, a real daily curve, weekends, bursts, drift.

Real traffic is not Poisson around a smooth curve: correlated behaviour makes the rate itself vary from one
window to the next, the day swings 5-10x between peak and trough, weekends are busier, the top of every hour
brings a burst of starts, and the level drifts. Each option is off by default, and with all of them off the
generator produces exactly the bytes it always did (tests/unit/loadgen/test_loadgen_golden.py).

The options shape playback-session arrivals (loadgen/traffic_shape.py). Sign-up funnels follow only the
reshaped daily curve, and the warm start (sessions already playing at the run's start) replays the plain
curve: both are small next to the sessions the options act on.

A scenario file may set them in a `traffic:` object (keys as below, `dispersion_every` as a duration); a flag
or environment variable given on the command line wins over the scenario.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from settings.durations import parse_duration_ms

SHAPE_SLOT_MS = 10_000
"""The shaped arrival rate is constant over slots this long (they divide minutes and the 2-minute bursts)."""
TOP_OF_HOUR_MS = 120_000
"""How long the burst at the top of every local hour lasts."""


class RealismError(ValueError):
    """A realistic-traffic option that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class RealismParams:
    """How far playback-session arrivals depart from Poisson around the standard diurnal curve (all off)."""

    dispersion: float = 0.0
    """Coefficient of variation d of a gamma(shape 1/d², mean 1) factor on each country x device type's session
    rate, redrawn every `dispersion_every_ms`: a window's count then has variance mean + d² x mean²."""
    dispersion_every_ms: int = SHAPE_SLOT_MS
    peak_trough: float | None = None
    """Each country's daily peak/trough ratio (the standard local curve raised to a power); None: the standard
    curve, about 15x. Real services see 5-10x. Sign-ups follow it too."""
    weekend_boost: float = 1.0
    """Session rate on local Saturdays and Sundays against weekdays; the week's mean stays the configured rate."""
    top_of_hour_boost: float = 0.0
    """Extra share of sessions in the first 2 minutes of every local hour (0.25: +25 %)."""
    drift_per_day: float = 0.0
    """Growth of the session rate per day of event time since the run's start (0.03: +3 % a day, compounded)."""

    def __post_init__(self) -> None:
        if not 0 <= self.dispersion <= 5:
            raise RealismError(f"dispersion {self.dispersion} must be from 0 (Poisson) to 5")
        every = self.dispersion_every_ms
        if every <= 0 or every % SHAPE_SLOT_MS:
            raise RealismError(f"dispersion-every {every} ms must be a positive multiple of {SHAPE_SLOT_MS // 1000} s")
        if self.peak_trough is not None and not 1 <= self.peak_trough <= 1000:
            raise RealismError(f"peak/trough ratio {self.peak_trough} must be from 1 to 1000")
        if not 0 < self.weekend_boost <= 10:
            raise RealismError(f"weekend boost {self.weekend_boost} must be above 0 and at most 10")
        if not 0 <= self.top_of_hour_boost <= 10:
            raise RealismError(f"top-of-hour boost {self.top_of_hour_boost} must be from 0 to 10")
        if not -0.5 <= self.drift_per_day <= 1:
            raise RealismError(f"drift per day {self.drift_per_day} must be from -0.5 to 1")

    @property
    def shapes_arrivals(self) -> bool:
        """Whether session arrivals need the shaped (per slot, per cell) process rather than the plain curve."""
        return bool(self.dispersion or self.weekend_boost != 1.0 or self.top_of_hour_boost or self.drift_per_day)

    @property
    def any(self) -> bool:
        """Whether any option is on (the ground truth then records them under `run.realism`)."""
        return self != RealismParams()

    def describe(self) -> dict[str, Any]:
        """The options as plain JSON data."""
        return dataclasses.asdict(self)


_KEYS = {f.name for f in dataclasses.fields(RealismParams)} - {"dispersion_every_ms"} | {"dispersion_every"}


def parse_realism(raw: Any, source: str) -> dict[str, Any]:
    """The options a `traffic:` object sets (validated), as RealismParams keyword arguments."""
    if not isinstance(raw, dict):
        raise RealismError(f"{source}: traffic must be an object of options ({', '.join(sorted(_KEYS))})")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise RealismError(f"{source}: unknown traffic options {unknown}; use {', '.join(sorted(_KEYS))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "dispersion_every":
            try:
                values["dispersion_every_ms"] = parse_duration_ms(str(value))
            except ValueError as exc:
                raise RealismError(f"{source}: traffic.dispersion_every: {exc}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise RealismError(f"{source}: traffic.{key} must be a number")
        else:
            values[key] = float(value)
    RealismParams(**values)  # validate now, with the file named in the error
    return values


def scenario_realism(name: str) -> dict[str, Any]:
    """The realistic-traffic options the ready scenario `name` sets (empty when it sets none)."""
    text = resources.files("loadgen").joinpath("scenarios", f"{name}.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or "traffic" not in doc:
        return {}
    return parse_realism(doc["traffic"], f"scenario {name}")
