"""The seasonal baseline of the volume series (`sps`): hour-of-the-week and minute-of-the-hour profiles.

A mixin of AnomalyDetector (flows/anomaly/detector.py): the expected count of `sps` is its short-term
level times these profiles, learned online, so daily peaks and troughs and the top of the hour are expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
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


# The profiles, in the order SeriesArrays stacks their bins.
DAY, WEEK, MINUTE = range(3)


class _Layout(NamedTuple):
    """Where one profile's bins are in the stacked arrays, and how it is read and learned."""

    first: int  # its first bin's row in SeriesArrays.season_*
    bins: int
    bin_ms: int
    visits: float  # visits of a bin before it is used
    stepwise: bool  # a step per bin, else interpolated between bin centres
    halflife: float  # in visits of a bin


class SeasonalBaseline:
    """The seasonal profiles' part of AnomalyDetector; the detector holds the state they live in.

    A step reads the profiles five times (the hour of the day and of the week now and at the level's age, the
    minute of the hour now) and learns all three: each as one batch over the stacked bins (`_read_profiles`,
    `_learn_season`), since on a shard's few series numpy's cost per call, not per element, is what counts.
    Every number is computed as `_compute_profile_values` computes it alone, element for element, so the
    results are the same bit for bit (tests/unit/flows/anomaly/test_seasonal_batched.py holds them equal).
    """

    config: DetectorConfig
    _state: SeriesArrays
    # This step's reads at the window's middle (day, week, minute: values and where learned enough, on the count
    # series' columns): made before the step judges and used again when it learns. None when a step begins and
    # when a baseline adopts a new level (it moves `b`, which the values rest on): then read afresh.
    _now_reads: tuple[Floats, Bools] | None

    @cached_property
    def _layouts(self) -> tuple[_Layout, ...]:
        """The profiles' places and parameters (see `_profiles`), fixed for the detector's life."""
        config, bins = self.config, self._state.profile_bins
        rows = [range(self._state.season_num.shape[0])[part] for part in bins]
        return (
            _Layout(rows[DAY].start, len(rows[DAY]), config.season_bin_ms, 0.5, False, config.season_halflife_days),
            _Layout(rows[WEEK].start, len(rows[WEEK]), config.season_bin_ms, 0.5, False, config.season_halflife_weeks),
            _Layout(rows[MINUTE].start, len(rows[MINUTE]), MINUTE_MS, _MINUTE_VISITS, True, _MINUTE_HALFLIFE),
        )

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

    def _compute_profile_values(self, profile: Profile, at_ms: float, size: int) -> tuple[Floats, Bools]:
        """One profile's value at `at_ms` per series wherever it has any (NaN elsewhere), and where learned enough.

        The reference for one read: `_read_profiles` makes several at once, with the same numbers.
        """
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

    def _read_profiles(self, reads: Sequence[tuple[int, float]], size: int) -> tuple[Floats, Bools]:
        """Profile values at (profile, at_ms) for each of `reads`, on the count series' columns (reads x columns).

        Per read, its values (NaN where it has none) and where learned enough: `_compute_profile_values` at those
        columns, all reads' bins gathered at once.
        """
        rows: list[int] = []
        upper: list[float] = []
        needed: list[float] = []
        for which, at_ms in reads:
            layout = self._layouts[which]
            lower, towards = _bins(at_ms, layout.bin_ms, layout.stepwise)
            rows += (layout.first + lower % layout.bins, layout.first + (lower + 1) % layout.bins)
            upper.append(towards)
            needed.append(layout.visits * layout.bin_ms / size)
        state = self._state
        cols = state.count_rows
        at = (np.array(rows)[:, None], cols)
        num, den, seen = state.season_num[at], state.season_den[at], state.season_w[at]
        num_0, num_1, den_0, den_1, seen_0, seen_1 = num[0::2], num[1::2], den[0::2], den[1::2], seen[0::2], seen[1::2]
        up = np.array(upper)[:, None]
        down = 1.0 - up
        learned = (den_0 > 0) & (den_1 > 0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # as _compute_profile_values
            value = num_0 / den_0 * down + num_1 / den_1 * up
            events = value * state.b[cols] * (seen_0 * down + seen_1 * up)
            variance = np.maximum(state.phi[0, cols], 1.0) / events
            deviation = (value - 1.0) ** 2
            value = 1.0 + (value - 1.0) * deviation / (deviation + 4.0 * variance)
        usable = learned & (value > 0) & np.isfinite(value)
        need = np.array(needed)[:, None]
        enough: Bools = usable & (seen_0 >= need) & (seen_1 >= need)
        values: Floats = np.where(usable, value, np.nan)
        return values, enough

    @staticmethod
    def _hour_factor(values: Floats, enough: Bools, day: slice, week: slice) -> Floats:
        """The hour-of-the-day-or-week factor at each time read (rows `day` and `week` of reads), 1 where not learned.

        The weekly profile only where learned at every one of the times, else the daily one where learned at every
        one: a ratio of two factors is then always taken within one profile, so one switching on makes no jump.
        """
        factor: Floats = np.where(
            enough[week].all(axis=0), values[week], np.where(enough[day].all(axis=0), values[day], 1.0)
        )
        return factor

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
        reads = ((DAY, middle), (WEEK, middle), (MINUTE, middle), (DAY, middle - lag_ms), (WEEK, middle - lag_ms))
        values, enough = self._read_profiles(reads, size)
        self._now_reads = (values[:3], enough[:3])
        # Rows: 0 and 3 the day's, 1 and 4 the week's (now, then): a factor per time, each within one profile.
        now, then = self._hour_factor(values, enough, slice(0, 4, 3), slice(1, 5, 3))
        raw_minute = values[2]
        minute = np.where(np.isfinite(raw_minute), raw_minute, 1.0)
        cols = s.count_rows
        # Used once learned enough; its level's EWMA followed the profile all along, so it starts without a jump.
        ratio: Floats = np.ones(len(s))  # other series have no profile: their factors are all 1
        ratio[cols] = now / then * np.where(enough[2], minute / s.minute_level[cols], 1.0)
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
        if self._now_reads is None:
            self._now_reads = self._read_profiles(((DAY, middle), (WEEK, middle), (MINUTE, middle)), size)
        values, enough = self._now_reads
        self._now_reads = None  # the profiles learn now
        cols = s.count_rows
        (main,) = self._hour_factor(values, enough, slice(0, 1), slice(1, 2))
        raw_minute = np.where(np.isfinite(values[2]), values[2], 1.0)
        minute = np.where(enough[2], raw_minute, 1.0)
        level_alpha = np.maximum(config.alpha_count, 1.0 / s.t) * weight
        other_minute = np.ones(len(s))  # other series have no profile: a factor of 1
        other_minute[cols] = raw_minute
        s.minute_level = s.minute_level + level_alpha * (other_minute - s.minute_level)
        k, weight, b, a, t = k[cols], weight[cols], s.b[cols], s.a[cols], s.t[cols]
        slow = np.where(b > 0, b, a)  # a new series (or one restored from version 1) starts at its level
        alpha = np.maximum(config.alpha_slow, 1.0 / t) * weight
        s.b[cols] = slow + alpha * (k / (main * minute) - slow)
        # Each profile's two nearest bins (rows of the stacked arrays), the share of this window each learns, and
        # its discount per window of the bin, so what a visit (bin_ms / size windows) taught halves in `halflife`
        # visits; the hour profiles learn k over the minute factor, the minute profile k over the hour factor.
        rows: list[int] = []
        shares: list[float] = []
        forgets: list[float] = []
        for layout in self._layouts:
            lower, upper = _bins(middle, layout.bin_ms, layout.stepwise)
            rows += (layout.first + lower % layout.bins, layout.first + (lower + 1) % layout.bins)
            shares += (1.0 - upper, upper)
            forgets += [1.0 - 0.5 ** (size / (layout.halflife * layout.bin_ms))] * 2
        other = np.empty((len(rows), len(cols)))
        other[:4], other[4:] = minute, main  # rows 0-3: the hour profiles'
        # A bin learns twice only if a profile has a single bin (a day-long season_bin_ms): then one after another.
        batches = [slice(None)] if len(set(rows)) == len(rows) else [slice(i, i + 1) for i in range(len(rows))]
        for batch in batches:
            at = (np.array(rows[batch])[:, None], cols)
            w = np.array(shares[batch])[:, None] * weight
            keep = 1.0 - np.array(forgets[batch])[:, None] * w
            s.season_num[at] = s.season_num[at] * keep + w * k / other[batch]
            s.season_den[at] = s.season_den[at] * keep + w * slow
            s.season_w[at] = s.season_w[at] * keep + w
