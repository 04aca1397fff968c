"""The seasonal baseline of the volume series (`sps`): hour-of-the-week and minute-of-the-hour profiles.

A mixin of AnomalyDetector (flows/anomaly/detector.py): the expected count of `sps` is its short-term
level times these profiles, learned online, so daily peaks and troughs and the top of the hour are expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from flows.anomaly.config import DetectorConfig
from flows.anomaly.series import (
    Bools,
    Floats,
)
from flows.anomaly.state import SeriesArrays

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# The minute-of-the-hour profile: 60 bins of a minute, used once each has been seen in 12 hours (it learns
# from a few windows an hour), its memory halving in 48 hours.
MINUTE_MS = 60_000
_MINUTE_VISITS = 12.0
_MINUTE_HALFLIFE = 48.0


def _bins(at_ms: float, bin_ms: int, stepwise: bool) -> tuple[int, float]:
    """The profile bin whose centre is at or before `at_ms` (an absolute bin number), and how far towards the next.

    `stepwise`: the bin `at_ms` falls in, wholly (0 towards the next).
    """
    if stepwise:
        return math.floor(at_ms / bin_ms), 0.0
    position = at_ms / bin_ms - 0.5
    lower = math.floor(position)
    return lower, position - lower


class Profile(NamedTuple):
    """One seasonal profile: its bins (bins x series: Σk, Σ slow level, weight) and how it is read."""

    num: Floats
    den: Floats
    seen: Floats
    bin_ms: int
    visits: float  # visits of a bin before it is used
    stepwise: bool  # a step per bin, else interpolated between bin centres


class SeasonalBaseline:
    """The seasonal profiles' part of AnomalyDetector; the detector holds the state they live in."""

    config: DetectorConfig
    _state: SeriesArrays
    # One step's profile values, by (bins, bin ms, time, window size): the window's own time is read before the
    # step judges and again when it learns, from the same state (3 of a step's 8 reads). Emptied when a step
    # begins, when a baseline adopts a new level (it moves `b`, which the values rest on) and once the profiles learn.
    _profile_memo: dict[tuple[int, int, float, int], tuple[Floats, Bools]]

    def _profiles(self) -> tuple[Profile, ...]:
        """The seasonal profiles as `SeriesArrays` holds them, with their bin size and visits before use.

        The hour of the day and of the week are one profile (the week's where learned, else the day's),
        interpolated between bin centres: the daily curve is smooth. The minute of the hour is another (the top
        of the hour is busier), learned over many hours before use, and a step per minute: what is scheduled
        starts on the minute, and interpolating across that edge would expect the burst's first windows too low.
        """
        s, config = self._state, self.config
        return (
            Profile(s.day_num, s.day_den, s.day_w, config.season_bin_ms, 0.5, stepwise=False),
            Profile(s.week_num, s.week_den, s.week_w, config.season_bin_ms, 0.5, stepwise=False),
            Profile(s.minute_num, s.minute_den, s.minute_w, MINUTE_MS, _MINUTE_VISITS, stepwise=True),
        )

    def _profile_at(self, profile: Profile, at_ms: float, size: int, learned_only: bool = True) -> Floats:
        """One profile's value at `at_ms` per series (interpolated between bin centres); NaN where not learned.

        With `learned_only` False, its value wherever it has any (NaN only where nothing was seen).
        """
        value, enough = self._profile_values(profile, at_ms, size)
        return np.where(enough, value, np.nan) if learned_only else value

    def _profile_values(self, profile: Profile, at_ms: float, size: int) -> tuple[Floats, Bools]:
        """A profile's value at `at_ms` per series wherever it has any (NaN elsewhere), and where learned enough."""
        num, bin_ms = profile.num, profile.bin_ms
        key = (num.shape[0], bin_ms, at_ms, size)  # bins and their width tell the three profiles apart
        memo = self._profile_memo.get(key)
        if memo is None:
            memo = self._profile_memo[key] = self._compute_profile_values(profile, at_ms, size)
        return memo

    def _compute_profile_values(self, profile: Profile, at_ms: float, size: int) -> tuple[Floats, Bools]:
        num, den, seen, bin_ms, visits, stepwise = profile
        lower, upper = _bins(at_ms, bin_ms, stepwise)
        state = self._state
        # Only count series have profiles: the arithmetic runs on their columns alone, of the two nearest bins.
        cols = state.count_rows
        first, second = lower % num.shape[0], (lower + 1) % num.shape[0]
        num_0, num_1, den_0, den_1 = num[first, cols], num[second, cols], den[first, cols], den[second, cols]
        seen_0, seen_1 = seen[first, cols], seen[second, cols]
        learned = (den_0 > 0) & (den_1 > 0)
        needed = visits * bin_ms / size
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value = num_0 / den_0 * (1.0 - upper) + num_1 / den_1 * upper
            # Shrunk towards 1 by how sure it is: a bin rests on `seen` windows of about value x the slow level
            # events each, spread phi times Poisson's, so its relative variance is about phi / (that many events).
            # A deviation of d is kept in the share d² / (d² + 4 x variance): one well beyond two standard errors
            # (the top of the hour on a big series) nearly whole, one within them (noise) mostly not.
            events = value * state.b[cols] * (seen_0 * (1.0 - upper) + seen_1 * upper)
            variance = np.maximum(state.phi[0, cols], 1.0) / events
            deviation = (value - 1.0) ** 2
            value = 1.0 + (value - 1.0) * deviation / (deviation + 4.0 * variance)
        usable = learned & (value > 0) & np.isfinite(value)
        result: Floats = np.full(len(state), np.nan)
        result[cols] = np.where(usable, value, np.nan)
        enough: Bools = np.zeros(len(state), np.bool_)
        enough[cols] = usable & (seen_0 >= needed) & (seen_1 >= needed)
        return result, enough

    def _hour_factors(self, times: Sequence[float], size: int) -> list[Floats]:
        """The hour-of-the-day-or-week factor at each of `times`, 1 where not learned.

        The weekly profile only where learned at every one of `times`, else the daily one where learned at every
        one: a ratio of two factors is then always taken within one profile, so one switching on makes no jump.
        """
        day, week, _ = self._profiles()
        main = [np.ones(len(self._state)) for _ in times]
        for profile in (day, week):  # the weekly profile wins
            values = [self._profile_at(profile, at, size) for at in times]
            usable = np.logical_and.reduce([np.isfinite(v) for v in values])
            main = [np.where(usable, v, m) for v, m in zip(values, main, strict=True)]
        return main

    def _minute_factor(self, at_ms: float, size: int) -> tuple[Floats, Bools]:
        """The minute-of-the-hour factor at `at_ms` as learned so far (1 where nothing), and where learned enough."""
        value, learned = self._profile_values(self._profiles()[2], at_ms, size)
        return np.where(np.isfinite(value), value, 1.0), learned

    def _seasonal_ratio(self, start_ms: int, end_ms: int) -> Floats:
        """How much more a count should be in this window than its short-term level says (1 without a profile).

        The level is an EWMA of the counts. The hour of the day or week changes smoothly, so the level stands
        for it as it was about the level's mean age (1 / alpha windows) ago: the hour factor now over the one
        then. The minute of the hour changes sharply (the top of the hour), so the level's own EWMA of it is
        kept (`minute_level`, same weights): the minute factor now over that. So the expected count is the
        same hour of the week (of the day, until the week's bins are learned) and minute of the hour,
        blended with the short-term level.
        """
        config, s = self.config, self._state
        size = end_ms - start_ms
        lag_ms = (1.0 - config.alpha_count) / config.alpha_count * size
        middle = (start_ms + end_ms) / 2
        now, then = self._hour_factors((middle, middle - lag_ms), size)
        minute, learned = self._minute_factor(middle, size)
        # Used once learned enough; its level's EWMA followed the profile all along, so it starts without a jump.
        ratio: Floats = now / then * np.where(learned, minute / s.minute_level, 1.0)
        return ratio

    def _learn_season(self, k: Floats, weight: Floats, start_ms: int, end_ms: int) -> None:
        """Counts: the slow level learns this window (deseasonalized); each profile's two nearest bins learn k / it.

        Each profile learns k over the slow level times the other profile's factor, so each learns only its own
        shape; the level's EWMA of the minute factor moves with the level.
        """
        config, s = self.config, self._state
        if not s.count.any():
            return
        size = end_ms - start_ms
        middle = (start_ms + end_ms) / 2
        (main,) = self._hour_factors((middle,), size)
        raw_minute, learned = self._minute_factor(middle, size)
        minute = np.where(learned, raw_minute, 1.0)
        level_alpha = np.maximum(config.alpha_count, 1.0 / s.t) * weight
        s.minute_level = s.minute_level + level_alpha * (raw_minute - s.minute_level)
        slow = np.where(s.b > 0, s.b, s.a)  # a new series (or one restored from version 1) starts at its level
        alpha = np.maximum(config.alpha_slow, 1.0 / s.t) * weight
        s.b = np.where(s.count, slow + alpha * (k / (main * minute) - slow), s.b)
        day, week, minute_profile = self._profiles()
        self._profile_memo.clear()  # the profiles learn now
        cols = s.count_rows  # only count series have profiles
        for profile, halflife, other in (
            (day, config.season_halflife_days, minute),
            (week, config.season_halflife_weeks, minute),
            (minute_profile, _MINUTE_HALFLIFE, main),
        ):
            num, den, seen, bin_ms, _, stepwise = profile
            bins = num.shape[0]
            lower, upper = _bins(middle, bin_ms, stepwise)
            # Discounted per window of the bin, so what a visit (bin_ms / size windows) taught halves in
            # `halflife` visits.
            forget = 1.0 - 0.5 ** (size / (halflife * bin_ms))
            for slot, share in ((lower % bins, 1.0 - upper), ((lower + 1) % bins, upper)):
                w = share * weight[cols]
                keep = 1.0 - forget * w
                num[slot, cols] = num[slot, cols] * keep + w * k[cols] / other[cols]
                den[slot, cols] = den[slot, cols] * keep + w * slow[cols]
                seen[slot, cols] = seen[slot, cols] * keep + w
