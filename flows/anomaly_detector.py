"""Anomaly detection on the key series, learned online from final fine windows.

Fed every *final* fine window in order (`observe`, with the window's complete
aggregates), the detector keeps one small record per series — series id ×
country × device type, plus the roll-ups `country="all"` and/or
`device_type="all"` — and returns the anomalies that opened, escalated or
resolved in that window, and every series' current score. Pure Python, no
I/O; its whole state is plain data (`snapshot` / `restore`), so it rides in
bytewax recovery snapshots.

Series (`SERIES`) and the statistics that score them:

- `sps` (stream starts): a Poisson count per window against an EWMA level
  with an 8-minute memory, so the diurnal curve is tracked rather than
  flagged (it moves at most ~0.7 % a minute: the level lags it by < 5 %,
  far inside the 30 % a drop must reach; a trend term was tried and
  dropped — it doubles the noise of small series and, held while a series
  is suspect, runs away); both directions (an outage drops starts).
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

Volume awareness: each score is the exact tail probability (Poisson,
binomial; flows/anomaly_stats.py) turned into a z-like number, and the
baseline's own uncertainty widens it (negative binomial for counts, whose
shape is the number of events the baseline rests on: the fewer, the more a
count must deviate; variance inflation for shares and means). Sparse series gather evidence over several
*horizons* — the sums of the last 1, 3, 6, 12 and 30 windows — so a
country with a few attempts per window is still judged on a minute of
them, while a big series flags within one or two windows.

Low false alarms: a horizon alarms only if its score passes `z_open`, the
relative effect is large enough to matter (`min_effect_up`/`_down`: +50 %
on a rate, -30 % on starts, …) and there is volume behind it (at least
`min_events` events, `min_trials` trials); an anomaly opens only when
`confirm_n` of the last `confirm_m` windows alarm, resolves after
`resolve_after` windows quiet at the scale it was seen at
(`resolve_horizon`), and the series then rests for `cooldown` windows, so
one incident is one anomaly. While a series looks suspicious (any horizon beyond
`z_learn`) or is anomalous, its baseline learns ten times slower, so an
incident does not become the new normal within minutes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flows.anomaly_stats import MAX_SCORE, binomial_score, log_beta_i, z_from_log_tail
from flows.sketch import GAMMA, ZERO_BUCKET

ALL = "all"
"""The roll-up label: `country="all"` sums every country, `device_type="all"` every device type."""

Kind = Literal["count", "rate", "share", "lognormal"]
Direction = Literal["up", "down"]
Severity = Literal["warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("warning", "critical")

_LOG_GAMMA = math.log(GAMMA)
_BUCKET_OFFSET = math.log(2 / (GAMMA + 1))  # log of a bucket's representative value = b * log γ + this
_HOUR_MS = 3_600_000

# The per-cell input vector: what each series needs from a window, summed over all other dimensions.
(
    STARTS,
    FAILURES,
    PLAYED_MS,
    REBUFFER_MS,
    REBUFFERS,
    ERRORS,
    SIGNUPS_STARTED,
    SIGNUPS_COMPLETED,
    PAYMENTS,
    DECLINES,
    STARTUP_N,
    STARTUP_B,
    STARTUP_B2,
) = range(13)
CELL_FIELDS: tuple[str, ...] = (
    "starts",
    "failures",
    "played_ms",
    "rebuffer_ms",
    "rebuffers",
    "errors",
    "signups_started",
    "signups_completed",
    "payments",
    "declines",
    "startup_n",
    "startup_b",
    "startup_b2",
)
_AGGREGATE_FIELD: dict[str, int] = {
    "stream_starts": STARTS,
    "start_failures": FAILURES,
    "played_ms": PLAYED_MS,
    "rebuffer_ms": REBUFFER_MS,
    "rebuffers": REBUFFERS,
    "playback_errors": ERRORS,
    "signups_started": SIGNUPS_STARTED,
    "signups_completed": SIGNUPS_COMPLETED,
    "payments_submitted": PAYMENTS,
    "payment_declines": DECLINES,
}
Cell = list[int]
Cells = dict[tuple[str, str], Cell]


@dataclass(frozen=True)
class SeriesSpec:
    """One key series: how it is scored, which directions matter, and how big an effect must be."""

    id: str
    kind: Kind
    directions: tuple[Direction, ...]
    unit: str
    description: str
    # Observed/expected beyond which an alarm counts (up: >=, down: <=), and beyond which it is critical.
    min_effect_up: float = 1.5
    critical_up: float = 3.0
    min_effect_down: float = 0.7
    critical_down: float = 0.5


SERIES: tuple[SeriesSpec, ...] = (
    SeriesSpec("sps", "count", ("up", "down"), "1/s", "stream starts per second", critical_up=2.0),
    SeriesSpec("vsf_rate", "share", ("up",), "ratio", "start failures / (starts + start failures)"),
    SeriesSpec("rebuffer_ratio", "rate", ("up",), "ratio", "Σrebuffer_ms / (Σplayed_ms + Σrebuffer_ms)"),
    SeriesSpec("playback_error_rate", "rate", ("up",), "1/h", "fatal playback errors per hour played"),
    SeriesSpec(
        "startup_ms",
        "lognormal",
        ("up",),
        "ms",
        "geometric mean startup time (≈ median)",
        min_effect_up=1.3,
        critical_up=2.0,
    ),
    SeriesSpec("signup_completion_ratio", "share", ("down",), "ratio", "sign-ups completed / started"),
    SeriesSpec("payment_failure_rate", "share", ("up",), "ratio", "payment declines / payments submitted"),
)
SERIES_IDS: tuple[str, ...] = tuple(s.id for s in SERIES)
_SPS, _VSF, _REBUFFER, _ERRORS, _STARTUP, _COMPLETION, _PAYMENT = range(len(SERIES))
_SLOT = 5


@dataclass(frozen=True)
class DetectorConfig:
    """The detector's parameters (docs/anomalies.md explains each; bench/anomaly_eval.py tuned them)."""

    horizons: tuple[int, ...] = (1, 3, 6, 12, 30)
    z_open: float = 5.0
    z_learn: float = 3.0
    z_resolve: float = 2.0
    confirm_n: int = 2
    confirm_m: int = 3
    resolve_after: int = 12
    # An open anomaly is quiet when no horizon up to max(the one that opened it, this) is beyond z_resolve:
    # judged at the scale it was seen at, not until the longest horizon has forgotten it.
    resolve_horizon: int = 6
    cooldown: int = 30
    warmup_windows: int = 30
    alpha_count: float = 0.02
    alpha_rate: float = 0.002
    slow_factor: float = 0.1
    alpha_phi: float = 0.01
    phi_min_expected: float = 5.0
    phi_max: float = 5.0
    min_baseline_events: float = 10.0
    min_baseline_starts: float = 200.0
    min_events: float = 3.0
    min_trials: float = 20.0
    min_starts: float = 10.0
    max_gap_windows: int = 30
    # A cheap normal z below this skips the exact tail: it cannot reach z_open (exact tails are never
    # more than ~1.4x the normal z in the regimes the detector meets), and learning only needs it roughly.
    screen: float = 2.5

    def __post_init__(self) -> None:
        if not self.horizons or any(h < 1 for h in self.horizons) or list(self.horizons) != sorted(self.horizons):
            raise ValueError("horizons must be ascending window counts >= 1")
        if not 1 <= self.confirm_n <= self.confirm_m <= 30:
            raise ValueError("need 1 <= confirm_n <= confirm_m <= 30")
        if not 0 < self.alpha_count < 1 or not 0 < self.alpha_rate < 1 or not 0 < self.slow_factor <= 1:
            raise ValueError("learning rates must be in (0, 1)")
        if not self.z_resolve < self.z_open:
            raise ValueError("z_resolve must be below z_open")


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """A change in an anomaly's life: it opened, escalated to critical, or resolved.

    `window_*` is the final window this change happened in; `onset_ms` the start of the evidence that
    opened it. `score` is the anomaly's strongest score so far (signed: negative for a drop), and
    `observed`/`expected` are the metric's values (in `unit`) over the `horizon_windows` windows of that
    evidence; `observed_count`/`expected_count` are the numbers the test compared (events, successes, or
    for startup_ms sums of log-buckets).
    """

    anomaly_id: str
    state: Literal["open", "escalated", "resolved"]
    series: str
    country: str
    device_type: str
    direction: Direction
    severity: Severity
    score: float
    window_start_ms: int
    window_end_ms: int
    onset_ms: int
    opened_ms: int
    resolved_ms: int | None
    observed: float | None
    expected: float | None
    observed_count: float
    expected_count: float
    horizon_windows: int
    unit: str

    @property
    def series_key(self) -> str:
        """`series:country:device_type`: the Kafka message key, and what Prometheus labels name."""
        return f"{self.series}:{self.country}:{self.device_type}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SeriesScore:
    """A series' current score: the signed z of its most anomalous horizon in a watched direction."""

    series: str
    country: str
    device_type: str
    score: float


@dataclass(frozen=True, slots=True)
class Detection:
    """What one final window produced."""

    window_start_ms: int
    window_end_ms: int
    events: list[AnomalyEvent] = field(default_factory=list)
    scores: list[SeriesScore] = field(default_factory=list)


def cell_inputs(values: Mapping[str, Mapping[tuple[Any, ...], int]]) -> Cells:
    """The detector's inputs per (country, device_type) from a window's complete aggregates."""
    cells: Cells = {}
    for aggregate, index in _AGGREGATE_FIELD.items():
        for key, value in values.get(aggregate, {}).items():
            cell_key = (str(key[0]), str(key[1]))
            cell = cells.get(cell_key)
            if cell is None:
                cell = cells[cell_key] = [0] * len(CELL_FIELDS)
            cell[index] += value
    for key, count in values.get("startup_ms_sketch", {}).items():
        bucket = int(key[2])
        if bucket == ZERO_BUCKET:
            continue  # a 0 ms startup has no logarithm; one in millions, it cannot move a mean
        cell_key = (str(key[0]), str(key[1]))
        cell = cells.get(cell_key)
        if cell is None:
            cell = cells[cell_key] = [0] * len(CELL_FIELDS)
        cell[STARTUP_N] += count
        cell[STARTUP_B] += bucket * count
        cell[STARTUP_B2] += bucket * bucket * count
    return cells


def roll_up_cells(cells: Cells) -> Cells:
    """The cells plus their roll-ups: (country, all), (all, device_type) and (all, all)."""
    groups: Cells = dict(cells)
    for (country, device), cell in cells.items():
        for key in ((country, ALL), (ALL, device), (ALL, ALL)):
            total = groups.get(key)
            if total is None:
                groups[key] = list(cell)
            else:
                for i, value in enumerate(cell):
                    total[i] += value
    return groups


def _observation(index: int, cell: Cell) -> tuple[float, float]:
    """(k, n) the test uses: events and exposure, successes and trials, or Σlog-bucket and starts."""
    if index == _SPS:
        return cell[STARTS], 1.0
    if index == _VSF:
        return cell[FAILURES], cell[STARTS] + cell[FAILURES]
    if index == _REBUFFER:
        return cell[REBUFFERS], cell[PLAYED_MS]
    if index == _ERRORS:
        return cell[ERRORS], cell[PLAYED_MS]
    if index == _STARTUP:
        return cell[STARTUP_B], cell[STARTUP_N]
    if index == _COMPLETION:
        return cell[SIGNUPS_COMPLETED], cell[SIGNUPS_COMPLETED] + cell[SIGNUPS_STARTED]
    # A decline whose payment fell in the window before: at most one per payment counts, so k <= n.
    return min(cell[DECLINES], cell[PAYMENTS]), cell[PAYMENTS]


def _metric_value(index: int, k: float, n: float, window_s: float, windows: int) -> float | None:
    """The metric's value from the test's (k, n) summed over `windows` windows (rebuffer: see _display)."""
    if index == _SPS:
        return k / (window_s * windows)
    if n <= 0:
        return None
    if index == _ERRORS:
        return k / n * _HOUR_MS
    if index == _STARTUP:
        return math.exp(k / n * _LOG_GAMMA + _BUCKET_OFFSET)
    if index == _COMPLETION:
        started = n - k
        return k / started if started > 0 else None
    return k / n


class _Series:
    """One series' whole state: baseline, recent windows, anomaly life cycle. Plain numbers and lists."""

    __slots__ = (
        "a",
        "b",
        "c",
        "cooldown",
        "d",
        "d_num",
        "filled",
        "hits",
        "open",
        "phi",
        "pos",
        "quiet",
        "ring",
        "sums",
        "t",
    )

    def __init__(self, ring_size: int, horizons: int) -> None:
        self.t = 0  # windows seen
        # count: a = EWMA level; rate/share/lognormal: a = Σk, b = Σn, c = Σk² (lognormal), all discounted
        self.a = 0.0
        self.b = 0.0
        self.c = 0.0
        # rebuffer_ratio's displayed ratio: discounted Σrebuffer_ms (d_num) and Σ(played + rebuffer) ms (d)
        self.d = 0.0
        self.d_num = 0.0
        self.phi = 1.0
        # Last windows, newest at pos - 1: k, n, expected k, variance of k, and rebuffer_ms for
        # rebuffer_ratio's displayed value (_SLOT numbers each).
        self.ring = [0.0] * (_SLOT * ring_size)
        self.pos = 0
        self.filled = 0
        # The ring's sums over each horizon (the same _SLOT numbers each), kept as windows come and go.
        self.sums = [0.0] * (_SLOT * horizons)
        self.hits = 0  # bit i: the window i windows ago alarmed
        self.quiet = 0
        self.cooldown = 0
        self.open: dict[str, Any] | None = None

    def to_list(self) -> list[Any]:
        return [
            self.t,
            self.a,
            self.b,
            self.c,
            self.d,
            self.d_num,
            self.phi,
            list(self.ring),
            list(self.sums),
            self.pos,
            self.filled,
            self.hits,
            self.quiet,
            self.cooldown,
            dict(self.open) if self.open is not None else None,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> _Series:
        series = cls.__new__(cls)
        (
            series.t,
            series.a,
            series.b,
            series.c,
            series.d,
            series.d_num,
            series.phi,
            ring,
            sums,
            series.pos,
            series.filled,
            series.hits,
            series.quiet,
            series.cooldown,
            opened,
        ) = data
        series.ring = list(ring)
        series.sums = list(sums)
        series.open = dict(opened) if opened is not None else None
        return series


@dataclass(slots=True)
class _Verdict:
    """The scoring of one series in one window."""

    score: float = 0.0  # signed, most anomalous horizon in a watched direction
    # The highest and lowest signed scores of the horizons an open anomaly's quiet check looks at.
    quiet_up: float = 0.0
    quiet_down: float = 0.0
    suspect: bool = False
    alarm: Direction | None = None
    alarm_score: float = 0.0
    # The alarming horizon: its length and its sums of k, n, expected k and rebuffer_ms.
    horizon: int = 1
    k: float = 0.0
    n: float = 0.0
    expected: float = 0.0
    aux: float = 0.0
    effect: float = 1.0


class AnomalyDetector:
    """Online baselines and anomaly life cycles for every key series; see the module docstring."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._ring = self.config.horizons[-1]
        self._series: dict[tuple[int, str, str], _Series] = {}
        self._groups: set[tuple[str, str]] = set()
        self._next_start: int | None = None
        self._window_ms: int | None = None

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
                for series in self._series.values():
                    self._clear_horizons(series)
            else:
                for i in range(gap):
                    start = self._next_start + i * size
                    detections.append(self._step(start, start + size, {}, scores))
        self._window_ms = size
        detections.append(self._step(window_start_ms, window_end_ms, cells, scores))
        self._next_start = window_end_ms
        return detections

    def _step(self, start_ms: int, end_ms: int, cells: Cells, scores: bool) -> Detection:
        groups = roll_up_cells(cells)
        self._groups.update(groups)
        detection = Detection(start_ms, end_ms)
        window_s = (end_ms - start_ms) / 1000
        empty = [0] * len(CELL_FIELDS)
        for group in sorted(self._groups):
            cell = groups.get(group, empty)
            country, device = group
            for index, spec in enumerate(SERIES):
                key = (index, country, device)
                series = self._series.get(key)
                if series is None:
                    if group not in groups:
                        continue  # nothing to learn from yet
                    series = self._series[key] = _Series(self._ring, len(self.config.horizons))
                verdict = self._update(series, index, spec, cell, start_ms, end_ms, window_s, detection.events, group)
                if scores and verdict is not None:
                    detection.scores.append(SeriesScore(spec.id, country, device, round(verdict.score, 3)))
        return detection

    # --- one series, one window ---------------------------------------------------------------------

    def _expected(self, series: _Series, kind: Kind, n: float) -> tuple[float, float]:
        """Expected k and its variance for this window, from the baseline before it learns this window."""
        if kind == "count":
            return series.a, series.a
        if series.b <= 0:
            return 0.0, 0.0
        ratio = series.a / series.b
        if kind == "rate":
            mean = ratio * n
            return mean, mean
        if kind == "share":
            return ratio * n, n * ratio * (1.0 - ratio)
        variance = max(series.c / series.b - ratio * ratio, 1e-9)
        return ratio * n, variance * n

    def _ready(self, series: _Series, kind: Kind) -> bool:
        """Whether the baseline, as learned from the windows before this one, can judge it."""
        config = self.config
        if series.t < config.warmup_windows:
            return False
        if kind == "count":
            return True
        if kind == "lognormal":
            # The per-start variance is learned too: from fewer starts it is too rough to divide by.
            return series.b >= config.min_baseline_starts
        return series.a >= config.min_baseline_events

    def _shape(self, series: _Series, kind: Kind) -> float:
        """How many events the baseline rests on: the negative binomial's shape (∞ = Poisson)."""
        if kind == "count":
            return max(series.a, 1e-9) * min(series.t, 1.0 / self.config.alpha_count)
        return max(series.a, 1e-9)

    def _update(
        self,
        series: _Series,
        index: int,
        spec: SeriesSpec,
        cell: Cell,
        start_ms: int,
        end_ms: int,
        window_s: float,
        events: list[AnomalyEvent],
        group: tuple[str, str],
    ) -> _Verdict | None:
        kind = spec.kind
        k, n = _observation(index, cell)
        mean, var = self._expected(series, kind, n)
        # Judged only on a baseline learned from earlier windows; the horizons hold only windows so judged
        # (a window from before there was a baseline would count as "nothing expected").
        ready = self._ready(series, kind)
        if ready:
            self._push(series, (k, n, mean, var, cell[REBUFFER_MS] if index == _REBUFFER else 0.0))
        elif series.filled:
            self._clear_horizons(series)
        series.t += 1
        verdict = self._score(series, index, spec) if ready else None
        self._life_cycle(series, index, spec, verdict, start_ms, end_ms, window_s, events, group)
        suspect = series.open is not None or (verdict is not None and verdict.suspect)
        self._learn(series, index, kind, cell, k, n, mean, var, suspect)
        return verdict

    @staticmethod
    def _clear_horizons(series: _Series) -> None:
        series.ring = [0.0] * len(series.ring)
        series.sums = [0.0] * len(series.sums)
        series.pos = series.filled = series.hits = 0

    def _push(self, series: _Series, entry: tuple[float, float, float, float, float]) -> None:
        """Add the newest window to the ring and to every horizon's sums; drop the windows leaving them."""
        ring, sums, size, pos = series.ring, series.sums, self._ring, series.pos
        k, n, mean, var, aux = entry
        at = 0
        for horizon in self.config.horizons:
            out = _SLOT * ((pos - horizon) % size)  # for the longest horizon: the slot about to be reused
            sums[at] += k - ring[out]
            sums[at + 1] += n - ring[out + 1]
            sums[at + 2] += mean - ring[out + 2]
            sums[at + 3] += var - ring[out + 3]
            sums[at + 4] += aux - ring[out + 4]
            at += _SLOT
        slot = _SLOT * pos
        ring[slot : slot + _SLOT] = entry
        series.pos = pos = (pos + 1) % size
        if series.filled < size:
            series.filled += 1
        if pos == 0:
            # Once a lap, sum afresh: adding and subtracting floats for days would let rounding creep in.
            fresh = [0.0] * _SLOT
            at = 0
            back = 0
            for horizon in self.config.horizons:
                while back < horizon:
                    back += 1
                    slot = _SLOT * (size - back)
                    for j in range(_SLOT):
                        fresh[j] += ring[slot + j]
                sums[at : at + _SLOT] = fresh
                at += _SLOT

    def _score(self, series: _Series, index: int, spec: SeriesSpec) -> _Verdict:
        config = self.config
        kind = spec.kind
        sums = series.sums
        phi = min(max(series.phi, 1.0), config.phi_max)
        shape = self._shape(series, kind)
        base_n = max(series.b, 1e-9)
        screen, z_learn = config.screen, config.z_learn
        poisson_like = kind in ("count", "rate")
        verdict = _Verdict()
        best_up, best_down = -math.inf, math.inf
        opened = series.open
        quiet_limit = max(opened.get("horizon", self._ring), config.resolve_horizon) if opened is not None else 0
        at = 0
        for horizon in config.horizons:
            if horizon > series.filled:
                break
            sk, sn, sm, sv = sums[at], sums[at + 1], sums[at + 2], sums[at + 3]
            # A cheap normal z first; the exact tail only where it might matter (see anomaly_stats).
            if poisson_like:
                if sm <= 0.0:
                    z = 0.0
                else:
                    # Negative binomial: Poisson noise plus the baseline's own (relative variance 1/shape).
                    z = (sk - sm) / math.sqrt(sm * phi * (1.0 + sm / (shape * phi)))
                    if z >= screen or z <= -screen:
                        z = _negative_binomial_score(sk / phi, sm / phi, shape)
            elif sn <= 0.0 or sv <= 0.0:
                z = 0.0
            else:
                # The baseline was learned from base_n trials: its uncertainty adds sn / base_n of the variance.
                inflate = phi * (1.0 + sn / base_n)
                z = (sk - sm) / math.sqrt(sv * inflate)
                if kind == "share" and (z >= screen or z <= -screen):
                    z = binomial_score(sk, sn, sm / sn, inflate)
                elif z > MAX_SCORE or z < -MAX_SCORE:
                    z = math.copysign(MAX_SCORE, z)
            if z > best_up:
                best_up = z
            if z < best_down:
                best_down = z
            if horizon <= quiet_limit:
                verdict.quiet_up, verdict.quiet_down = max(verdict.quiet_up, z), min(verdict.quiet_down, z)
            if z >= z_learn or z <= -z_learn:
                effect = self._effect(index, kind, sk, sn, sm)
                # Only a material change holds learning back: a big series' slow drift must still be learned.
                if effect >= spec.min_effect_up or effect <= spec.min_effect_down:
                    verdict.suspect = True
                direction: Direction = "up" if z > 0 else "down"
                if (
                    direction in spec.directions
                    and abs(z) >= config.z_open
                    and abs(z) > abs(verdict.alarm_score)
                    and self._passes(spec, kind, direction, effect, sk, sn, sm)
                ):
                    verdict.alarm, verdict.alarm_score, verdict.horizon = direction, z, horizon
                    verdict.k, verdict.n, verdict.expected, verdict.aux = sk, sn, sm, sums[at + 4]
                    verdict.effect = effect
            at += _SLOT
        if best_up == -math.inf:
            return verdict
        if spec.directions == ("up",):
            verdict.score = best_up
        elif spec.directions == ("down",):
            verdict.score = best_down
        else:
            verdict.score = best_up if best_up >= -best_down else best_down
        return verdict

    @staticmethod
    def _effect(index: int, kind: Kind, k: float, n: float, mean: float) -> float:
        """Observed / expected, in the metric's own terms."""
        if kind == "lognormal":
            return math.exp((k - mean) / n * _LOG_GAMMA) if n > 0 else 1.0
        if index == _COMPLETION:
            # completed / started, not completed / (completed + started)
            if n <= 0 or mean <= 0 or mean >= n or k >= n:
                return 1.0
            return (k / (n - k)) / (mean / (n - mean))
        if mean <= 0:
            return math.inf if k > 0 else 1.0
        return k / mean

    def _passes(
        self, spec: SeriesSpec, kind: Kind, direction: Direction, effect: float, k: float, n: float, mean: float
    ) -> bool:
        """Big enough to matter, with enough volume behind it (small denominators never flag)."""
        config = self.config
        if direction == "up":
            if effect < spec.min_effect_up:
                return False
        elif effect > spec.min_effect_down:
            return False
        if kind == "lognormal":
            return n >= config.min_starts
        if kind == "share" and n < config.min_trials:
            return False
        # Up: at least a few events; down: enough expected that their absence means something.
        return (k if direction == "up" else mean) >= config.min_events

    def _life_cycle(
        self,
        series: _Series,
        index: int,
        spec: SeriesSpec,
        verdict: _Verdict | None,
        start_ms: int,
        end_ms: int,
        window_s: float,
        events: list[AnomalyEvent],
        group: tuple[str, str],
    ) -> None:
        config = self.config
        alarm = verdict.alarm if verdict is not None else None
        series.hits = ((series.hits << 1) | (alarm is not None)) & ((1 << config.confirm_m) - 1)
        if series.cooldown > 0:
            series.cooldown -= 1
        opened = series.open
        if opened is None:
            if verdict is None or alarm is None or series.cooldown > 0:
                return
            if bin(series.hits).count("1") < config.confirm_n:
                return
            onset = end_ms - verdict.horizon * (end_ms - start_ms)
            series.open = opened = {
                "id": f"{spec.id}:{group[0]}:{group[1]}:{alarm}:{onset}",
                "direction": alarm,
                "severity": self._severity(spec, alarm, verdict.effect),
                "onset_ms": onset,
                "opened_ms": end_ms,
                "horizon": verdict.horizon,
            }
            self._keep_peak(opened, verdict)
            series.quiet = 0
            events.append(self._event(series, index, spec, opened, "open", start_ms, end_ms, window_s, group))
            return
        direction = opened["direction"]
        # Quiet: no horizon it is judged on (see resolve_horizon) beyond z_resolve in its direction, or no
        # baseline to judge by.
        if verdict is None:
            still = False
        elif direction == "up":
            still = verdict.quiet_up >= config.z_resolve
        else:
            still = verdict.quiet_down <= -config.z_resolve
        series.quiet = 0 if still else series.quiet + 1
        if verdict is not None and alarm == direction:
            if abs(verdict.alarm_score) > abs(opened["peak"]):
                self._keep_peak(opened, verdict)
            if opened["severity"] != "critical" and self._severity(spec, direction, verdict.effect) == "critical":
                opened["severity"] = "critical"
                self._keep_peak(opened, verdict)
                events.append(self._event(series, index, spec, opened, "escalated", start_ms, end_ms, window_s, group))
        if series.quiet >= config.resolve_after:
            events.append(self._event(series, index, spec, opened, "resolved", start_ms, end_ms, window_s, group))
            series.open = None
            series.quiet = 0
            series.hits = 0
            series.cooldown = config.cooldown

    @staticmethod
    def _keep_peak(opened: dict[str, Any], verdict: _Verdict) -> None:
        opened.update(
            peak=verdict.alarm_score,
            peak_k=verdict.k,
            peak_n=verdict.n,
            peak_expected=verdict.expected,
            peak_aux=verdict.aux,
            peak_horizon=verdict.horizon,
        )

    @staticmethod
    def _severity(spec: SeriesSpec, direction: Direction, effect: float) -> Severity:
        if direction == "up":
            return "critical" if effect >= spec.critical_up else "warning"
        return "critical" if effect <= spec.critical_down else "warning"

    def _event(
        self,
        series: _Series,
        index: int,
        spec: SeriesSpec,
        opened: dict[str, Any],
        state: Literal["open", "escalated", "resolved"],
        start_ms: int,
        end_ms: int,
        window_s: float,
        group: tuple[str, str],
    ) -> AnomalyEvent:
        # The numbers of the anomaly's strongest evidence so far (at opening: what opened it).
        k, n, mean, horizon = opened["peak_k"], opened["peak_n"], opened["peak_expected"], opened["peak_horizon"]
        if index == _REBUFFER:
            # The ratio itself: Σrebuffer_ms / (Σplayed_ms + Σrebuffer_ms) over the horizon, against the baseline's.
            aux = opened["peak_aux"]
            observed = aux / (n + aux) if n + aux > 0 else None
            expected = series.d_num / series.d if series.d > 0 else None
        else:
            observed = _metric_value(index, k, n, window_s, horizon)
            expected = _metric_value(index, mean, n, window_s, horizon)
        return AnomalyEvent(
            anomaly_id=opened["id"],
            state=state,
            series=spec.id,
            country=group[0],
            device_type=group[1],
            direction=opened["direction"],
            severity=opened["severity"],
            score=round(opened["peak"], 3),
            window_start_ms=start_ms,
            window_end_ms=end_ms,
            onset_ms=opened["onset_ms"],
            opened_ms=opened["opened_ms"],
            resolved_ms=end_ms if state == "resolved" else None,
            observed=_round(observed),
            expected=_round(expected),
            observed_count=round(k, 3),
            expected_count=round(mean, 3),
            horizon_windows=horizon,
            unit=spec.unit,
        )

    # --- learning -----------------------------------------------------------------------------------

    def _learn(
        self,
        series: _Series,
        index: int,
        kind: Kind,
        cell: Cell,
        k: float,
        n: float,
        mean: float,
        var: float,
        suspect: bool,
    ) -> None:
        config = self.config
        weight = config.slow_factor if suspect else 1.0
        if kind == "count":
            # A running mean at first, then the EWMA.
            series.a += max(config.alpha_count, 1.0 / series.t) * weight * (k - series.a)
        else:
            keep = 1.0 - config.alpha_rate * weight
            series.a = series.a * keep + weight * k
            series.b = series.b * keep + weight * n
            if kind == "lognormal":
                series.c = series.c * keep + weight * cell[STARTUP_B2]
            elif index == _REBUFFER:
                series.d_num = series.d_num * keep + weight * cell[REBUFFER_MS]
                series.d = series.d * keep + weight * (cell[PLAYED_MS] + cell[REBUFFER_MS])
        if not suspect and mean >= config.phi_min_expected and var > 0:
            # Quasi-likelihood dispersion: the mean squared Pearson residual, 1 for pure Poisson/binomial noise.
            pearson = min((k - mean) ** 2 / var, 25.0)
            series.phi += config.alpha_phi * (pearson - series.phi)

    # --- state --------------------------------------------------------------------------------------

    @property
    def series_count(self) -> int:
        """Series held (one small record each)."""
        return len(self._series)

    def open_anomalies(self) -> list[tuple[str, str, str, str, str]]:
        """(series, country, device_type, direction, severity) of every open anomaly."""
        return [
            (SERIES[index].id, country, device, series.open["direction"], series.open["severity"])
            for (index, country, device), series in self._series.items()
            if series.open is not None
        ]

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data (lists, dicts, numbers, strings)."""
        return {
            "version": 1,
            "config": {**asdict(self.config), "horizons": list(self.config.horizons)},
            "next_start": self._next_start,
            "window_ms": self._window_ms,
            "groups": sorted([list(g) for g in self._groups]),
            "series": [[SERIES[i].id, c, d, s.to_list()] for (i, c, d), s in self._series.items()],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any], config: DetectorConfig | None = None) -> AnomalyDetector:
        """A detector continuing exactly from `snapshot` (with `config`, or the one it was taken with)."""
        if snapshot.get("version") != 1:
            raise ValueError(f"unknown anomaly detector snapshot version {snapshot.get('version')!r}")
        saved = dict(snapshot["config"])
        saved["horizons"] = tuple(saved["horizons"])
        detector = cls(config or DetectorConfig(**saved))
        if detector._ring != saved["horizons"][-1]:
            raise ValueError("the snapshot's longest horizon differs from the config's: its windows do not fit")
        detector._next_start = snapshot["next_start"]
        detector._window_ms = snapshot["window_ms"]
        detector._groups = {(c, d) for c, d in snapshot["groups"]}
        index_of = {spec.id: i for i, spec in enumerate(SERIES)}
        for series_id, country, device, state in snapshot["series"]:
            if series_id in index_of:  # a series dropped since the snapshot is forgotten
                detector._series[(index_of[series_id], country, device)] = _Series.from_list(state)
        return detector


def _negative_binomial_score(k: float, mean: float, shape: float) -> float:
    """Signed score of `k` against a negative binomial with this mean and shape (Poisson as shape -> ∞).

    The predictive of a Poisson count whose rate was learned from `shape` events: P(X >= k) = I_{1-p}(k, r)
    with r = shape and p = r / (r + mean).
    """
    if mean <= 0.0:
        return MAX_SCORE if k > 0 else 0.0
    p = shape / (shape + mean)
    if k > mean:
        return z_from_log_tail(log_beta_i(k, shape, 1.0 - p))
    if k < mean:
        # P(X <= k) = 1 - I_{1-p}(k + 1, r) = I_p(r, k + 1)
        return -z_from_log_tail(log_beta_i(shape, k + 1.0, p))
    return 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")
