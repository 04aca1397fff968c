"""Anomaly detection on the key series, learned online from final fine windows.

Fed every *final* fine window in order (`observe`, with the window's complete
aggregates), the detector keeps one small record per series — series id ×
country × device type, plus the roll-ups `country="all"` and/or
`device_type="all"` — and returns the anomalies that opened, escalated,
resolved or were accepted as the new normal in that window, and every series' current score. No I/O; its whole
state is plain data (`snapshot` / `restore`), so it rides in bytewax
recovery snapshots. In memory the records are arrays over all series
(numpy, struct of arrays): each window's common path — observations, the
recent-window sums, a cheap normal z per horizon, learning — is whole-array
arithmetic, and only the few series that need it (a z beyond the screen,
an open anomaly) go through the per-series Python of exact tails, alarms
and life cycles.

Series (`SERIES`) and the statistics that score them:

- `sps` (stream starts): a gamma–Poisson count per window (overdispersed:
  see `phi`) against an EWMA level with an 8-minute memory times seasonal
  factors — the hour of the week (of the day until a week is learned) and
  the minute of the hour, learned online (`_seasonal_ratio`) — so daily
  ramps, weekends and the top of the hour are expected, not flagged (a
  trend term was tried and dropped — it doubles the noise of small series
  and, held while a series is suspect, runs away); both directions (an
  outage drops starts).
- `vsf_rate`, `payment_failure_rate`: k of n attempts against a baseline
  share q (binomial); `signup_completion_ratio` likewise as completed out of
  (completed + started), the exact conditional test for a ratio of two
  Poisson counts (a completion can land in a later window than its start).
- `rebuffer_ratio`, `playback_error_rate`: rebuffer events and fatal errors
  as Poisson counts against a baseline rate per played millisecond (the
  rebuffer *ratio* is reported, but milliseconds are not independent
  trials: the events are).
- `startup_ms`: the mean of log(startup) over the window's starts (from the
  sketch buckets) against a baseline mean and per-start variance; startup
  time is log-normal, so this is a z-test; the value shown is the geometric
  mean (≈ the median).

Each score is an exact tail (flows/anomaly/stats.py, flows/anomaly/scoring.py) over several *horizons*
(the sums of the last 1 to 30 windows), widened by the spread beyond Poisson/binomial learned per horizon
(`phi`, flows/anomaly/learning.py) and by the baseline's own uncertainty; an alarm needs an effect and a
volume big enough to matter, an anomaly a few alarming windows, and it ends resolved or accepted as the new
normal (flows/anomaly/life_cycle.py). docs/anomalies.md explains each step and its parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from flows.anomaly.config import DetectorConfig
from flows.anomaly.events import AnomalyEvent, Detection, OpenAnomaly, SeriesScore
from flows.anomaly.learning import BaselineLearning
from flows.anomaly.life_cycle import life_cycle
from flows.anomaly.scoring import SeriesView, score_series
from flows.anomaly.seasonal import DAY_MS, HOUR_MS, MINUTE_MS
from flows.anomaly.series import (
    ALL,
    CELL_FIELDS,
    REBUFFER_MS,
    SERIES,
    SERIES_IDS,
    SLOT,
    Bools,
    Cells,
    Floats,
    Ints,
    cell_inputs,
    observations,
)
from flows.anomaly.state import SeriesArrays

# 2: a dispersion per horizon, the seasonal profiles; version 1 snapshots still restore (SeriesArrays.load).
SNAPSHOT_VERSION = 2


class AnomalyDetector(BaselineLearning):
    """Online baselines and anomaly life cycles for every key series; see the module docstring."""

    def __init__(self, config: DetectorConfig | None = None, roll_up: bool = True) -> None:
        """A detector; `roll_up=False` watches the groups fed as they are, without their roll-ups.

        Without roll-ups it adds no (country, all), (all, device_type) or (all, all) series: for a shard's cells,
        or for roll-ups already summed over the shards (flows/anomaly/steps.py).
        """
        self.config = config or DetectorConfig()
        self._roll_up = roll_up
        self._ring = self.config.horizons[-1]
        self._horizons: Ints = np.array(self.config.horizons, np.int64)
        self._state = SeriesArrays(self.config.horizons, DAY_MS // self.config.season_bin_ms, HOUR_MS // MINUTE_MS)
        self._keys: list[tuple[int, str, str]] = []  # per series number: (SERIES index, country, device_type)
        self._rows: dict[tuple[int, str, str], int] = {}  # the inverse
        self._open: dict[int, OpenAnomaly] = {}  # series number -> its open anomaly
        self._group_list: list[tuple[str, str]] = []  # group number -> (country, device_type)
        self._group_number: dict[tuple[str, str], int] = {}
        self._complete: set[tuple[str, str]] = set()  # groups that hold every series
        self._order: Ints = np.zeros(0, np.int64)  # series numbers in the order a window judges them
        self._groups: set[tuple[str, str]] = set()
        self._next_start: int | None = None
        self._window_ms: int | None = None
        self._now_reads = None

    # --- feeding -----------------------------------------------------------------------------------

    def observe(
        self,
        window_start_ms: int,
        window_end_ms: int,
        values: Mapping[str, Mapping[tuple[Any, ...], int]],
        scores: bool = True,
    ) -> list[Detection]:
        """Feed one final fine window's complete aggregates; windows must come in order (older are ignored).

        Returns one `Detection` per window processed: this one, preceded by any empty windows skipped since
        the last call. `scores=False` leaves the per-series scores out (cheaper when only events matter).
        """
        return self.observe_cells(window_start_ms, window_end_ms, cell_inputs(values), scores)

    def observe_cells(
        self, window_start_ms: int, window_end_ms: int, cells: Cells, scores: bool = True
    ) -> list[Detection]:
        """Like `observe`, from per-(country, device_type) inputs (`cell_inputs`).

        A window with no events at all is never published, so windows skipped since the last one are fed
        as empty first (up to `max_gap_windows`; a longer gap is a break in the data, not zero traffic:
        the recent-window sums restart, the baselines stay). A window holding none of the detector's
        inputs — after the last event of a backfill, only sessions still counted as open — is not taken
        as zero traffic either: it is left for a later window to fill in as empty, if one ever comes.
        """
        size = window_end_ms - window_start_ms
        if size <= 0:
            raise ValueError("a window must end after it starts")
        if self._next_start is not None and window_start_ms < self._next_start:
            return []  # already seen (a re-delivery after recovery): the state has it
        if not cells:
            return []
        detections: list[Detection] = []
        if self._next_start is not None and self._window_ms == size:
            gap = (window_start_ms - self._next_start) // size
            if gap > self.config.max_gap_windows:
                self._state.clear(np.ones(len(self._state), np.bool_))
            else:
                for i in range(gap):
                    start = self._next_start + i * size
                    detections.append(self._step(start, start + size, {}, scores))
        self._window_ms = size
        detections.append(self._step(window_start_ms, window_end_ms, cells, scores))
        self._next_start = window_end_ms
        return detections

    def _step(self, start_ms: int, end_ms: int, cells: Cells, scores: bool) -> Detection:
        # The window's cells and their roll-ups: (country, all), (all, device_type) and (all, all).
        roll_ups = [((country, ALL), (ALL, device), (ALL, ALL)) for country, device in cells] if self._roll_up else []
        groups = set(cells).union(*roll_ups)
        self._groups.update(groups)
        # A series starts with the first window of its group (nothing to learn from before).
        new = [
            (index, *group)
            for group in sorted(groups)
            if group not in self._complete
            for index in range(len(SERIES))
            if (index, *group) not in self._rows
        ]
        if new:
            self._add_series(new)
        detection = Detection(start_ms, end_ms)
        if not self._keys:
            return detection
        self._now_reads = None
        config, s = self.config, self._state
        inputs = self._inputs(cells, roll_ups)
        k_table, n_table = observations(inputs)
        k, n = k_table[s.group, s.index], n_table[s.group, s.index]
        cell = inputs[s.group]
        mean, var = self._expected(n, self._seasonal_ratio(start_ms, end_ms))
        # Judged only on a baseline learned from earlier windows; the horizons hold only windows so judged
        # (a window from before there was a baseline would count as "nothing expected").
        ready = self._ready()
        # A series not judged has no recent windows: its ring is empty (which the shared ring position relies on).
        stale = ~ready & (s.filled > 0)
        if stale.any():
            s.clear(stale)
        aux = np.where(s.rebuffer, cell[:, REBUFFER_MS], 0.0)
        self._push(ready, np.stack((k, n, mean, var, aux)))
        s.t += 1
        z, judged, inflate, phi, shape = self._screen(ready)
        up = np.where(judged, z, -np.inf).max(axis=0)
        down = np.where(judged, z, np.inf).min(axis=0)
        score = np.where(s.up_only, up, np.where(s.down_only, down, np.where(up >= -down, up, down)))
        score[up == -np.inf] = 0.0
        # The rare series go one by one: a z beyond the screen (the exact tail decides, and suspicion and
        # alarms start at z_learn), or an open anomaly (its life cycle). Every other series has no alarm and is
        # not suspect: its life cycle is only the alarm history moving on and the cooldown running down.
        rare: Bools = np.logical_or.reduce(judged & (np.abs(z) >= min(config.screen, config.z_learn)), axis=0)
        rare[list(self._open)] = True
        s.hits = np.where(rare, s.hits, (s.hits << 1) & ((1 << config.confirm_m) - 1))
        s.cooldown = np.where(rare | (s.cooldown <= 0), s.cooldown, s.cooldown - 1)
        suspect = self._one_by_one(rare, ready, (z, inflate, phi, shape), score, start_ms, end_ms, detection.events)
        self._learn(k, n, mean, var, cell, suspect, (start_ms, end_ms))
        if scores:
            scored = self._order[ready[self._order]]
            for row, value in zip(scored.tolist(), score[scored].tolist(), strict=True):
                index, country, device = self._keys[row]
                detection.scores.append(SeriesScore(SERIES_IDS[index], country, device, round(value, 3)))
        return detection

    def _one_by_one(
        self,
        rare: Bools,
        ready: Bools,
        screened: tuple[Floats, Floats, Floats, Floats],
        score: Floats,
        start_ms: int,
        end_ms: int,
        events: list[AnomalyEvent],
    ) -> Bools:
        """Judge the `rare` series one by one, in the window's order: exact tails, alarms, life cycles.

        `screened` is what `_screen` found (z, inflate, phi, shape); each judged series' `score` is replaced by
        its verdict's. Returns which series are suspect (or anomalous): their baselines learn slowly.
        """
        s = self._state
        z, inflate, phi, shape = screened
        suspect = np.zeros(len(s), np.bool_)
        window_s = (end_ms - start_ms) / 1000
        rare_rows = self._order[rare[self._order]]
        if not rare_rows.size:
            return suspect  # most windows of a shard's few series: skip taking the views apart
        rows = rare_rows.tolist()
        # Each rare series' numbers as Python ones, taken from the arrays in one go (in SeriesView' order).
        views = map(
            SeriesView,
            s.hits[rare_rows].tolist(),
            s.quiet[rare_rows].tolist(),
            s.cooldown[rare_rows].tolist(),
            [self._open.get(row) for row in rows],
            s.d[rare_rows].tolist(),
            s.d_num[rare_rows].tolist(),
            s.filled[rare_rows].tolist(),
            s.sums[:, :, rare_rows].transpose(2, 0, 1).reshape(len(rows), s.sums.shape[0] * SLOT).tolist(),
            z[:, rare_rows].T.tolist(),
            inflate[:, rare_rows].T.tolist(),
            phi[:, rare_rows].T.tolist(),
            shape[rare_rows].tolist(),
        )
        for row, is_ready, series in zip(rows, ready[rare_rows].tolist(), views, strict=True):
            index, country, device = self._keys[row]
            spec = SERIES[index]
            verdict = score_series(self.config, series, index, spec) if is_ready else None
            life_cycle(self.config, series, index, spec, verdict, start_ms, end_ms, window_s, events, (country, device))
            s.hits[row], s.quiet[row], s.cooldown[row] = series.hits, series.quiet, series.cooldown
            if series.accepted:
                s.accept(row)
                self._now_reads = None
            if series.open is None:
                self._open.pop(row, None)
            else:
                self._open[row] = series.open
            suspect[row] = series.open is not None or (verdict is not None and verdict.suspect)
            if verdict is not None:
                score[row] = verdict.score
        return suspect

    def _inputs(self, cells: Cells, roll_ups: Sequence[tuple[tuple[str, str], ...]]) -> Floats:
        """This window's inputs per group number (zeros for a group absent from it): groups x CELL_FIELDS."""
        number = self._group_number
        inputs = np.zeros((len(self._group_list), len(CELL_FIELDS)))
        if cells:
            # Which groups each cell counts in (itself and its roll-ups), as a groups x cells matrix of ones: the
            # inputs are its product with the cells'. Exact: counts are integers, and so are their sums (< 2**53).
            member = np.zeros((len(inputs), len(cells)))
            for keys in ([*cells], *zip(*roll_ups, strict=True)):
                member[[number[key] for key in keys], np.arange(len(cells))] = 1.0
            inputs = member @ np.array(list(cells.values()), np.float64)
        return inputs

    def _add_series(self, keys: list[tuple[int, str, str]]) -> None:
        """Fresh series at the end of the arrays, in this order (a snapshot lists them in order of creation)."""
        index, group = [], []
        for key in keys:
            country_device = (key[1], key[2])
            if country_device not in self._group_number:
                self._group_number[country_device] = len(self._group_list)
                self._group_list.append(country_device)
            self._rows[key] = len(self._keys)
            self._keys.append(key)
            index.append(key[0])
            group.append(self._group_number[country_device])
            if all((i, *country_device) in self._rows for i in range(len(SERIES))):
                self._complete.add(country_device)
        self._state.grow(index, group)
        # Windows judge groups in sorted order and each group's series in SERIES order: events come out so.
        keys_of = self._keys
        self._order = np.array(
            sorted(range(len(keys_of)), key=lambda row: (keys_of[row][1], keys_of[row][2], keys_of[row][0])), np.int64
        )

    # --- every series, one window: the common path, as arrays ---------------------------------------

    def _expected(self, n: Floats, seasonal: Floats) -> tuple[Floats, Floats]:
        """Expected k and its variance for this window, from the baseline before it learns this window.

        `seasonal` scales a count's short-term level to this window (`_seasonal_ratio`).
        """
        s = self._state
        with np.errstate(divide="ignore", invalid="ignore"):  # b = 0: nothing learned, masked below
            ratio = s.a / s.b
            mean = np.where(s.count, s.a * seasonal, np.where(s.b > 0, ratio * n, 0.0))
            share_var = n * ratio * (1.0 - ratio)
            lognormal_var = np.maximum(s.c / s.b - ratio * ratio, 1e-9) * n  # per-start variance x starts
            var = np.where(
                s.count,
                mean,
                np.where(s.b <= 0, 0.0, np.where(s.rate, mean, np.where(s.share, share_var, lognormal_var))),
            )
        return mean, var

    def _ready(self) -> Bools:
        """Whether each baseline, as learned from the windows before this one, can judge it."""
        config, s = self.config, self._state
        # lognormal: the per-start variance is learned too: from fewer starts it is too rough to divide by.
        enough = np.where(s.lognormal, s.b >= config.min_baseline_starts, s.count | (s.a >= config.min_baseline_events))
        ready: Bools = (s.t >= config.warmup_windows) & enough
        return ready

    def _push(self, ready: Bools, entry: Floats) -> None:
        """Add the newest window to the rings of the `ready` series and to every horizon's sums.

        `entry` is SLOT x series; the windows leaving the horizons are dropped from their sums.
        """
        s, size = self._state, self._ring
        # The slot each horizon's oldest window leaves (for the longest: the slot about to be reused).
        leaving = s.ring[(s.at - self._horizons) % size]
        s.sums = np.where(ready, s.sums + (entry - leaving), s.sums)
        s.ring[s.at] = np.where(ready, entry, s.ring[s.at])
        s.at = (s.at + 1) % size
        s.pos = np.where(ready, (s.pos + 1) % size, s.pos)
        s.filled = np.where(ready, np.minimum(s.filled + 1, size), s.filled)
        lap = np.flatnonzero(ready & (s.pos == 0))
        if lap.size:
            # Once a lap, sum afresh: adding and subtracting floats for days would let rounding creep in.
            fresh = np.zeros((SLOT, lap.size))
            back = 0
            for h, horizon in enumerate(self.config.horizons):
                while back < horizon:
                    back += 1
                    fresh = fresh + s.ring[(s.at - back) % size][:, lap]
                s.sums[h][:, lap] = fresh

    def _screen(self, ready: Bools) -> tuple[Floats, Bools, Floats, Floats, Floats]:
        """The cheap normal z of every horizon of every series (horizons x series; 0 where nothing to judge).

        Also which horizons are judged, and what the exact tails need: shares' variance inflation (per horizon),
        the dispersion and the negative binomial's shape (per series).
        """
        config, s = self.config, self._state
        phi = self._dispersion()
        # How many events the baseline rests on (∞ = Poisson): a level remembers at most 1 / alpha windows.
        shape = np.maximum(s.a, 1e-9) * np.where(s.count, np.minimum(s.t, 1.0 / config.alpha_count), 1.0)
        sk, sn, sm, sv = (s.sums[:, j] for j in range(4))
        with np.errstate(divide="ignore", invalid="ignore"):  # nothing expected: masked below
            # Negative binomial: Poisson noise plus the baseline's own (relative variance 1/shape).
            poisson = (sk - sm) / np.sqrt(sm * phi * (1.0 + sm / (shape * phi)))
            # The baseline was learned from b trials: its uncertainty adds sn / b of the variance.
            inflate = phi * (1.0 + sn / np.maximum(s.b, 1e-9))
            normal = (sk - sm) / np.sqrt(sv * inflate)
        z = np.where(s.count | s.rate, np.where(sm > 0.0, poisson, 0.0), np.where((sn > 0.0) & (sv > 0.0), normal, 0.0))
        judged = ready & (self._horizons[:, None] <= s.filled)
        return np.where(judged, z, 0.0), judged, inflate, phi, shape

    @property
    def next_window_start(self) -> int | None:
        """Where the next window is expected to start (the end of the last one stepped); None before any."""
        return self._next_start

    def break_in_data(self) -> None:
        """Take the next window as coming after a break: its recent-window sums restart, the baselines stay.

        What a gap longer than `max_gap_windows` does; for a replay resumed from live state whose windows up to
        its start it does not feed (flows/anomaly/warm_start.py), rather than judging them as empty.
        """
        self._state.clear(np.ones(len(self._state), np.bool_))
        self._next_start = None

    @property
    def series_count(self) -> int:
        """Series held (one small record each)."""
        return len(self._keys)

    def open_anomalies(self) -> list[tuple[str, str, str, str, str]]:
        """(series, country, device_type, direction, severity) of every open anomaly."""
        return [
            (SERIES[index].id, country, device, opened.direction, opened.severity)
            for (index, country, device), opened in ((self._keys[row], self._open[row]) for row in sorted(self._open))
        ]

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data (lists, dicts, numbers, strings)."""
        return {
            "version": SNAPSHOT_VERSION,
            "roll_up": self._roll_up,
            "config": {**asdict(self.config), "horizons": list(self.config.horizons)},
            "next_start": self._next_start,
            "window_ms": self._window_ms,
            "groups": sorted([list(g) for g in self._groups]),
            "series": [
                [SERIES[i].id, c, d, record]
                for (i, c, d), record in zip(self._keys, self._state.records(self._open), strict=True)
            ],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any], config: DetectorConfig | None = None) -> AnomalyDetector:
        """A detector continuing exactly from `snapshot` (with `config`, or the one it was taken with)."""
        version = snapshot.get("version")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"unknown anomaly detector snapshot version {snapshot.get('version')!r}")
        saved = dict(snapshot["config"])
        saved["horizons"] = tuple(saved["horizons"])
        detector = cls(config or DetectorConfig(**saved), roll_up=snapshot.get("roll_up", True))
        if detector._ring != saved["horizons"][-1]:
            raise ValueError("the snapshot's longest horizon differs from the config's: its windows do not fit")
        detector._next_start = snapshot["next_start"]
        detector._window_ms = snapshot["window_ms"]
        detector._groups = {(c, d) for c, d in snapshot["groups"]}
        index_of = {spec.id: i for i, spec in enumerate(SERIES)}
        keys: list[tuple[int, str, str]] = []
        records: list[list[Any]] = []
        for series_id, country, device, state in snapshot["series"]:
            if series_id in index_of:  # a series dropped since the snapshot is forgotten
                keys.append((index_of[series_id], country, device))
                records.append(state)
        detector._add_series(keys)
        detector._open = detector._state.load(records, version)
        return detector
