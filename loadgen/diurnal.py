"""Diurnal traffic curves: viewing follows local time, low before dawn, peaking in the evening.

The curve is tabulated per minute of the UTC day for every country (each in
its own fixed UTC offset), so the generator looks the intensity up instead of
doing date arithmetic per event.
"""

from __future__ import annotations

import bisect
import math
from itertools import accumulate

from loadgen.world import COUNTRIES

MINUTE_MS = 60_000
DAY_MINUTES = 1440
DAY_MS = DAY_MINUTES * MINUTE_MS

# Relative viewing intensity at each local hour 00..23 (prime time 20-22 h, trough 4-6 h).
_LOCAL_HOURLY: tuple[float, ...] = (
    0.90, 0.60, 0.40, 0.25, 0.18, 0.15, 0.20, 0.35, 0.50, 0.60, 0.65, 0.70,
    0.80, 0.85, 0.85, 0.90, 1.00, 1.20, 1.50, 1.90, 2.20, 2.30, 2.00, 1.40,
)  # fmt: skip


def local_curve(peak_trough: float | None = None) -> list[float]:
    """Intensity per local minute of the day, linearly interpolated between hours, mean 1.

    `peak_trough` raises the curve to the power that makes its peak that many times its trough (the standard
    curve's ratio is about 15): the same shape, shallower or deeper.
    """
    values = []
    for minute in range(DAY_MINUTES):
        hour, frac = divmod(minute, 60)
        a = _LOCAL_HOURLY[hour]
        b = _LOCAL_HOURLY[(hour + 1) % 24]
        values.append(a + (b - a) * frac / 60)
    if peak_trough is not None:
        power = math.log(peak_trough) / math.log(max(values) / min(values))
        values = [v**power for v in values]
    mean = sum(values) / len(values)
    return [v / mean for v in values]


class DiurnalTable:
    """Per UTC minute of day: total intensity and the cumulative share of each country.

    `flat` makes every minute alike (constant rate), for benchmarks and steady demos; `peak_trough` reshapes
    each country's local curve (see `local_curve`).
    """

    def __init__(self, flat: bool = False, peak_trough: float | None = None) -> None:
        curve = local_curve(peak_trough)
        self.total: list[float] = []
        self._cum: list[list[float]] = []
        for utc_minute in range(DAY_MINUTES):
            shares = []
            for c in COUNTRIES:
                local = (utc_minute + c.utc_offset_min) % DAY_MINUTES
                shares.append(c.weight * (1.0 if flat else curve[local]))
            cum = list(accumulate(shares))
            self.total.append(cum[-1])
            self._cum.append(cum)
        self.peak = max(self.total)
        self.mean = sum(self.total) / len(self.total)

    def minute(self, t_ms: int) -> int:
        """The UTC minute of day of an epoch-ms time."""
        return (t_ms // MINUTE_MS) % DAY_MINUTES

    def country_index(self, minute: int, u: float) -> int:
        """The country a uniform draw `u` selects, proportionally to each country's intensity at `minute`."""
        cum = self._cum[minute]
        i = bisect.bisect_right(cum, u * cum[-1])
        return i if i < len(cum) else len(cum) - 1
