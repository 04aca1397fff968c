"""Every series' state as arrays (struct of arrays), and as the plain records a snapshot holds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flows.anomaly.events import OpenAnomaly
from flows.anomaly.series import (
    DOWN_ONLY,
    IS_COUNT,
    IS_LOGNORMAL,
    IS_RATE,
    IS_SHARE,
    REBUFFER,
    SLOT,
    SPS,
    UP_ONLY,
    Bools,
    Floats,
    Ints,
)

# A series' record in a snapshot: these numbers, in this order (ring and sums as flat lists), then its open anomaly.
_RECORD: tuple[str, ...] = (
    "t",
    "a",
    "b",
    "c",
    "d",
    "d_num",
    "phi",
    "phi_n",
    "ring",
    "sums",
    "pos",
    "filled",
    "hits",
    "quiet",
    "cooldown",
)
_INTS: tuple[str, ...] = ("t", "pos", "filled", "hits", "quiet", "cooldown")
# Per horizon (horizon x series), as flat lists in a record.
_PER_HORIZON: tuple[str, ...] = ("phi", "phi_n")
# A count series' seasonal profile (bin x series; see SeriesArrays): in its record after _RECORD, as flat lists;
# other series hold none (empty lists), so a snapshot carries profiles only for the few series that use them.
_SEASON: tuple[str, ...] = (
    "day_num",
    "day_den",
    "day_w",
    "week_num",
    "week_den",
    "week_w",
    "minute_num",
    "minute_den",
    "minute_w",
)


# The stacked arrays of the seasonal profiles' bins (see SeriesArrays.__init__).
_STACKED: tuple[str, ...] = ("season_num", "season_den", "season_w")


class _Bins:
    """One profile's bins of a stacked seasonal array, as a view (reads and writes go to the stacked array)."""

    def __init__(self, stacked: str, profile: int) -> None:
        self._stacked = stacked
        self._profile = profile

    def __get__(self, arrays: SeriesArrays, owner: type | None = None) -> Floats:
        view: Floats = getattr(arrays, self._stacked)[arrays.profile_bins[self._profile]]
        return view


class SeriesArrays:
    """Every series' state as arrays indexed by series number (in order of creation): struct of arrays.

    So the per-window common path — observations, ring and horizon sums, the normal-z screen, learning — runs
    as whole-array operations over all series at once, not as ~10 µs of Python per series. The series number
    is the last axis everywhere, so a window's work is contiguous rows of these arrays. Each series' open
    anomaly (a dict, rare) is kept by `AnomalyDetector._open`.

    The rings share one position, `at`, moved on by every window: a judged series' window goes to slot `at`
    and one that is not judged has an empty ring (`AnomalyDetector._step` clears it), so a series' own ring
    position `pos` (where its snapshot ring has the next slot) moves in step with `at` while it has windows.
    Its own slot i is shared slot (i + at - pos) % ring size, and a window's push is whole slices of the ring.
    """

    day_num, day_den, day_w = (_Bins(name, 0) for name in _STACKED)
    week_num, week_den, week_w = (_Bins(name, 1) for name in _STACKED)
    minute_num, minute_den, minute_w = (_Bins(name, 2) for name in _STACKED)

    def __init__(self, horizons: tuple[int, ...], day_bins: int, minute_bins: int) -> None:
        self.horizons = horizons
        ring_size = horizons[-1]
        self.index: Ints = np.zeros(0, np.int64)  # the series' SERIES index
        self.group: Ints = np.zeros(0, np.int64)  # its (country, device_type)'s number: AnomalyDetector._group_list
        self.t: Ints = np.zeros(0, np.int64)  # windows seen
        # count: a = the short-term level and b = the slow (about a day) level, both deseasonalized (k divided
        # by the seasonal factor); rate/share/lognormal: a = Σk, b = Σn, c = Σk² (lognormal), all discounted
        self.a: Floats = np.zeros(0)
        self.b: Floats = np.zeros(0)
        self.c: Floats = np.zeros(0)
        # rebuffer_ratio's displayed ratio: discounted Σrebuffer_ms (d_num) and Σ(played + rebuffer) ms (d)
        self.d: Floats = np.zeros(0)
        self.d_num: Floats = np.zeros(0)
        # Dispersion per horizon (variance of a horizon's sum / the Poisson or binomial one), and how many windows
        # it has learned from (a running mean at first): horizon x series.
        self.phi: Floats = np.ones((len(horizons), 0))
        self.phi_n: Floats = np.zeros((len(horizons), 0))
        # count series: the seasonal profile, per bin of the day (day_*) and of the week (week_*): discounted Σk
        # (num) over Σ slow level (den) of the windows in the bin, and their weight (w, windows, for "seen yet");
        # bin x series, zero for other series. The three profiles' bins (day, week, then minute of the hour) are
        # stacked in one array per quantity (season_*), so a step reads and learns all of them with one gather
        # and one scatter each (SeasonalBaseline): a step's fixed cost, paid by every shard whatever its series.
        # day_num, week_num, ... are views of their bins.
        self.profile_bins = (slice(0, day_bins), slice(day_bins, 8 * day_bins), slice(8 * day_bins, None))
        self.season_num: Floats = np.zeros((8 * day_bins + minute_bins, 0))
        self.season_den: Floats = np.zeros((8 * day_bins + minute_bins, 0))
        self.season_w: Floats = np.zeros((8 * day_bins + minute_bins, 0))
        # count series: the short-term level's EWMA of the minute factor (its weights), 1 while none is learned
        self.minute_level: Floats = np.ones(0)
        # Last windows, newest at slot at - 1: k, n, expected k, variance of k, and rebuffer_ms for
        # rebuffer_ratio's displayed value; ring slot x SLOT x series.
        self.ring: Floats = np.zeros((ring_size, SLOT, 0))
        self.at = 0  # the shared ring position: the slot this window goes to
        self.pos: Ints = np.zeros(0, np.int64)
        self.filled: Ints = np.zeros(0, np.int64)
        # The ring's sums over each horizon (the same SLOT numbers), kept as windows come and go; horizon x
        # SLOT x series.
        self.sums: Floats = np.zeros((len(horizons), SLOT, 0))
        self.hits: Ints = np.zeros(0, np.int64)  # bit i: the window i windows ago alarmed
        self.quiet: Ints = np.zeros(0, np.int64)
        self.cooldown: Ints = np.zeros(0, np.int64)
        self._derive()

    def __len__(self) -> int:
        return len(self.index)

    def _derive(self) -> None:
        """The per-series constants that follow from the SERIES index."""
        self.count, self.rate = IS_COUNT[self.index], IS_RATE[self.index]
        self.count_rows: Ints = np.flatnonzero(self.count)
        self.share, self.lognormal = IS_SHARE[self.index], IS_LOGNORMAL[self.index]
        self.rebuffer = self.index == REBUFFER
        self.up_only, self.down_only = UP_ONLY[self.index], DOWN_ONLY[self.index]

    def grow(self, index: list[int], group: list[int]) -> None:
        """Add fresh series (nothing learned yet, empty rings) at the end."""
        added = len(index)
        fresh: dict[str, Any] = {name: np.zeros(added, np.int64) for name in _INTS}
        fresh.update({name: np.zeros(added) for name in ("a", "b", "c", "d", "d_num")})
        fresh["phi"] = np.ones((self.phi.shape[0], added))
        fresh["phi_n"] = np.zeros((self.phi.shape[0], added))
        for name in _STACKED:
            fresh[name] = np.zeros((getattr(self, name).shape[0], added))
        fresh["minute_level"] = np.ones(added)
        fresh["ring"] = np.zeros((*self.ring.shape[:-1], added))
        fresh["sums"] = np.zeros((*self.sums.shape[:-1], added))
        fresh["index"] = np.array(index, np.int64)
        fresh["group"] = np.array(group, np.int64)
        for name, column in fresh.items():
            setattr(self, name, np.concatenate((getattr(self, name), column), axis=-1))
        self._derive()

    def clear(self, rows: Bools) -> None:
        """Forget the recent windows of `rows` (the baselines stay)."""
        self.ring[:, :, rows] = 0.0
        self.sums[:, :, rows] = 0.0
        self.pos[rows] = self.filled[rows] = self.hits[rows] = 0

    def _own_slots(self) -> tuple[Ints, Ints]:
        """Indices of each series' ring in its own order (series x slot), into the shared ring's slot and series."""
        size, count = self.ring.shape[0], len(self)
        slots = (np.arange(size) + self.at - self.pos[:, None]) % size
        return slots, np.arange(count)[:, None]

    def records(self, opened: Mapping[int, OpenAnomaly]) -> list[list[Any]]:
        """Each series' state as the plain list a snapshot holds (see _RECORD)."""
        count = len(self)
        slots, series = self._own_slots()
        columns: dict[str, Any] = {
            "ring": self.ring[slots, :, series].reshape(count, self.ring.shape[0] * SLOT).tolist(),
            "sums": self.sums.transpose(2, 0, 1).reshape(count, self.sums.shape[0] * SLOT).tolist(),
        }
        columns.update({name: getattr(self, name).T.tolist() for name in _PER_HORIZON})
        columns.update({name: getattr(self, name).tolist() for name in _RECORD if name not in columns})
        seasonal = self.count.tolist()
        minute_level = self.minute_level.tolist()
        season = {name: getattr(self, name).T.tolist() for name in _SEASON}
        for row, index in enumerate(self.index.tolist()):
            # The ring held each window's counts as the ints they are (k, the trials n, rebuffer_ms): snapshot them
            # as ints, as before the arrays, so a snapshot's bytes do not change. Written slots: the first `filled`.
            ring = columns["ring"][row]
            integral = (0,) if index == SPS else (0, 1, 4) if index == REBUFFER else (0, 1)
            for slot in range(0, SLOT * columns["filled"][row], SLOT):
                for j in integral:
                    ring[slot + j] = int(ring[slot + j])
        return [
            [
                *(columns[name][row] for name in _RECORD),
                opened[row].to_dict() if row in opened else None,
                *(season[name][row] if seasonal[row] else [] for name in _SEASON),
                minute_level[row],
            ]
            for row in range(count)
        ]

    def load(self, records: list[list[Any]], version: int) -> dict[int, OpenAnomaly]:
        """Set every series' state from its snapshot record; returns the open anomalies.

        One record per series, in order, into arrays already grown to hold them. A version 1 record (one
        dispersion per series, capped at 5, no seasonal profile) starts every horizon from that dispersion, as
        if learned all along, and its profiles empty (so learned afresh from then on).
        """
        count = len(records)
        if version == 1:
            records = [_from_version_1(record) for record in records]
        columns = {name: [record[at] for record in records] for at, name in enumerate(_RECORD)}
        for name in _RECORD:
            if name in _PER_HORIZON:
                shape = getattr(self, name).shape[0]
                setattr(self, name, np.array(columns[name], np.float64).reshape(count, shape).T.copy())
            elif name not in ("ring", "sums"):
                setattr(self, name, np.array(columns[name], getattr(self, name).dtype).reshape(count))
        at_season = len(_RECORD) + 1
        self.minute_level = np.array([record[at_season + len(_SEASON)] for record in records], np.float64)
        for offset, name in enumerate(_SEASON):
            profile = getattr(self, name)
            for row, record in enumerate(records):
                if record[at_season + offset]:
                    profile[:, row] = record[at_season + offset]
        self.at = 0
        slots, series = self._own_slots()
        self.ring[slots, :, series] = np.array(columns["ring"], np.float64).reshape(count, *self.ring.shape[:2])
        self.sums = np.ascontiguousarray(
            np.array(columns["sums"], np.float64).reshape(count, *self.sums.shape[:2]).transpose(1, 2, 0)
        )
        opened = len(_RECORD)
        return {
            row: OpenAnomaly.from_dict(record[opened])
            for row, record in enumerate(records)
            if record[opened] is not None
        }

    def accept(self, row: int) -> None:
        """The level of `row`'s recent windows is the new normal: its baseline adopts it, its windows restart.

        Taken over the longest horizon its ring holds: counts scale their levels by observed / expected, rates
        and shares keep their weight but take the recent ratio, a log-normal mean moves keeping its variance.
        """
        filled = int(self.filled[row])
        if filled > 0:
            h = max(i for i, horizon in enumerate(self.horizons) if horizon <= filled)
            k, n, mean = self.sums[h, 0, row], self.sums[h, 1, row], self.sums[h, 2, row]
            if self.count[row]:
                if mean > 0:
                    self.a[row] *= k / mean
                    self.b[row] *= k / mean
            elif n > 0 and self.b[row] > 0:
                old_mean = self.a[row] / self.b[row]
                new_mean = k / n
                if self.lognormal[row]:
                    variance = max(self.c[row] / self.b[row] - old_mean * old_mean, 0.0)
                    self.c[row] = self.b[row] * (variance + new_mean * new_mean)
                self.a[row] = self.b[row] * new_mean
        rows = np.zeros(len(self), np.bool_)
        rows[row] = True
        self.clear(rows)


def _from_version_1(record: list[Any]) -> list[Any]:
    """A version 1 record in today's shape (see `SeriesArrays.load`)."""
    at = _RECORD.index("phi")
    phi, t = record[at], record[_RECORD.index("t")]
    horizons = len(record[_RECORD.index("sums") - 1]) // SLOT  # v1 has no phi_n: sums sits one place earlier
    return [*record[:at], [phi] * horizons, [float(t)] * horizons, *record[at + 1 :], *([] for _ in _SEASON), 1.0]
