"""Anomaly detection on the key series, learned online from final fine windows.

Fed every *final* fine window in order (`observe`, with the window's complete
aggregates), the detector keeps one small record per series — series id ×
country × device type, plus the roll-ups `country="all"` and/or
`device_type="all"` — and returns the anomalies that opened, escalated or
resolved in that window, and every series' current score. No I/O; its whole
state is plain data (`snapshot` / `restore`), so it rides in bytewax
recovery snapshots. In memory the records are arrays over all series
(numpy, struct of arrays): each window's common path — observations, the
recent-window sums, a cheap normal z per horizon, learning — is whole-array
arithmetic, and only the few series that need it (a z beyond the screen,
an open anomaly) go through the per-series Python of exact tails, alarms
and life cycles.

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
binomial; flows/anomaly/stats.py) turned into a z-like number, and the
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from flows.anomaly.stats import MAX_SCORE, binomial_score, log_beta_i, z_from_log_tail
from flows.windows.sketch import GAMMA, ZERO_BUCKET

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
Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]


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


# What each series tests, as cell fields: k is one field, n the sum of these (none: sps, whose exposure is one
# window). One table, so the scalar `_observation` and the arrays' `_observations` cannot drift apart.
_K_FIELD: tuple[int, ...] = (STARTS, FAILURES, REBUFFERS, ERRORS, STARTUP_B, SIGNUPS_COMPLETED, DECLINES)
_N_FIELDS: tuple[tuple[int, ...], ...] = (
    (),
    (STARTS, FAILURES),
    (PLAYED_MS,),
    (PLAYED_MS,),
    (STARTUP_N,),
    (SIGNUPS_COMPLETED, SIGNUPS_STARTED),
    (PAYMENTS,),
)


def _observation(index: int, cell: Cell) -> tuple[float, float]:
    """(k, n) the test uses: events and exposure, successes and trials, or Σlog-bucket and starts."""
    fields = _N_FIELDS[index]
    n: float = sum(cell[f] for f in fields) if fields else 1.0
    k: float = cell[_K_FIELD[index]]
    if index == _PAYMENT:
        # A decline whose payment fell in the window before: at most one per payment counts, so k <= n.
        k = min(k, n)
    return k, n


def _observations(cells: Floats) -> tuple[Floats, Floats]:
    """`_observation` over arrays: k and n (groups x SERIES) from each group's cell (groups x CELL_FIELDS)."""
    k = cells[:, list(_K_FIELD)]
    n = np.ones_like(k)
    for index, fields in enumerate(_N_FIELDS):
        if fields:
            total = cells[:, fields[0]]
            for f in fields[1:]:
                total = total + cells[:, f]
            n[:, index] = total
    k[:, _PAYMENT] = np.minimum(k[:, _PAYMENT], n[:, _PAYMENT])
    return k, n


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


# Per SERIES index, what its arrays' common path needs to know (indexed by each series' SERIES index).
_IS_COUNT = np.array([spec.kind == "count" for spec in SERIES])
_IS_RATE = np.array([spec.kind == "rate" for spec in SERIES])
_IS_SHARE = np.array([spec.kind == "share" for spec in SERIES])
_IS_LOGNORMAL = np.array([spec.kind == "lognormal" for spec in SERIES])
_UP_ONLY = np.array([spec.directions == ("up",) for spec in SERIES])
_DOWN_ONLY = np.array([spec.directions == ("down",) for spec in SERIES])

# A series' record in a snapshot: these numbers, in this order (ring and sums as flat lists), then its open anomaly.
_RECORD: tuple[str, ...] = (
    "t",
    "a",
    "b",
    "c",
    "d",
    "d_num",
    "phi",
    "ring",
    "sums",
    "pos",
    "filled",
    "hits",
    "quiet",
    "cooldown",
)
_INTS: tuple[str, ...] = ("t", "pos", "filled", "hits", "quiet", "cooldown")


class _Arrays:
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

    def __init__(self, ring_size: int, horizons: int) -> None:
        self.index: Ints = np.zeros(0, np.int64)  # the series' SERIES index
        self.group: Ints = np.zeros(0, np.int64)  # its (country, device_type)'s number: AnomalyDetector._group_list
        self.t: Ints = np.zeros(0, np.int64)  # windows seen
        # count: a = EWMA level; rate/share/lognormal: a = Σk, b = Σn, c = Σk² (lognormal), all discounted
        self.a: Floats = np.zeros(0)
        self.b: Floats = np.zeros(0)
        self.c: Floats = np.zeros(0)
        # rebuffer_ratio's displayed ratio: discounted Σrebuffer_ms (d_num) and Σ(played + rebuffer) ms (d)
        self.d: Floats = np.zeros(0)
        self.d_num: Floats = np.zeros(0)
        self.phi: Floats = np.zeros(0)
        # Last windows, newest at slot at - 1: k, n, expected k, variance of k, and rebuffer_ms for
        # rebuffer_ratio's displayed value; ring slot x _SLOT x series.
        self.ring: Floats = np.zeros((ring_size, _SLOT, 0))
        self.at = 0  # the shared ring position: the slot this window goes to
        self.pos: Ints = np.zeros(0, np.int64)
        self.filled: Ints = np.zeros(0, np.int64)
        # The ring's sums over each horizon (the same _SLOT numbers), kept as windows come and go; horizon x
        # _SLOT x series.
        self.sums: Floats = np.zeros((horizons, _SLOT, 0))
        self.hits: Ints = np.zeros(0, np.int64)  # bit i: the window i windows ago alarmed
        self.quiet: Ints = np.zeros(0, np.int64)
        self.cooldown: Ints = np.zeros(0, np.int64)
        self._derive()

    def __len__(self) -> int:
        return len(self.index)

    def _derive(self) -> None:
        """The per-series constants that follow from the SERIES index."""
        self.count, self.rate = _IS_COUNT[self.index], _IS_RATE[self.index]
        self.share, self.lognormal = _IS_SHARE[self.index], _IS_LOGNORMAL[self.index]
        self.rebuffer = self.index == _REBUFFER
        self.up_only, self.down_only = _UP_ONLY[self.index], _DOWN_ONLY[self.index]

    def grow(self, index: list[int], group: list[int]) -> None:
        """Add fresh series (nothing learned yet, empty rings) at the end."""
        added = len(index)
        fresh: dict[str, Any] = {name: np.zeros(added, np.int64) for name in _INTS}
        fresh.update({name: np.zeros(added) for name in ("a", "b", "c", "d", "d_num")})
        fresh["phi"] = np.ones(added)
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

    def records(self, opened: Mapping[int, dict[str, Any]]) -> list[list[Any]]:
        """Each series' state as the plain list a snapshot holds (see _RECORD)."""
        count = len(self)
        slots, series = self._own_slots()
        columns: dict[str, Any] = {
            "ring": self.ring[slots, :, series].reshape(count, self.ring.shape[0] * _SLOT).tolist(),
            "sums": self.sums.transpose(2, 0, 1).reshape(count, self.sums.shape[0] * _SLOT).tolist(),
        }
        columns.update({name: getattr(self, name).tolist() for name in _RECORD if name not in columns})
        for row, index in enumerate(self.index.tolist()):
            # The ring held each window's counts as the ints they are (k, the trials n, rebuffer_ms): snapshot them
            # as ints, as before the arrays, so a snapshot's bytes do not change. Written slots: the first `filled`.
            ring = columns["ring"][row]
            integral = (0,) if index == _SPS else (0, 1, 4) if index == _REBUFFER else (0, 1)
            for slot in range(0, _SLOT * columns["filled"][row], _SLOT):
                for j in integral:
                    ring[slot + j] = int(ring[slot + j])
        return [
            [*(columns[name][row] for name in _RECORD), dict(opened[row]) if row in opened else None]
            for row in range(count)
        ]

    def load(self, records: list[list[Any]]) -> dict[int, dict[str, Any]]:
        """Set every series' state from its snapshot record; returns the open anomalies.

        One record per series, in order, into arrays already grown to hold them.
        """
        count = len(records)
        columns = {name: [record[at] for record in records] for at, name in enumerate(_RECORD)}
        for name in _RECORD:
            if name not in ("ring", "sums"):
                setattr(self, name, np.array(columns[name], getattr(self, name).dtype).reshape(count))
        self.at = 0
        slots, series = self._own_slots()
        self.ring[slots, :, series] = np.array(columns["ring"], np.float64).reshape(count, *self.ring.shape[:2])
        self.sums = np.ascontiguousarray(
            np.array(columns["sums"], np.float64).reshape(count, *self.sums.shape[:2]).transpose(1, 2, 0)
        )
        return {row: dict(record[-1]) for row, record in enumerate(records) if record[-1] is not None}


@dataclass(slots=True)
class _Series:
    """One series as the rare per-series path sees it: exact tails, alarms, life cycle.

    Read from the arrays; its life cycle (hits, quiet, cooldown, open) is written back.
    """

    hits: int
    quiet: int
    cooldown: int
    open: dict[str, Any] | None
    d: float  # rebuffer_ratio's baseline ratio is d_num / d
    d_num: float
    filled: int
    sums: list[float]  # _SLOT numbers per horizon, as _Arrays.sums
    z: list[float]  # the screen's normal z per horizon
    inflate: list[float]  # shares: the variance inflation per horizon
    phi: float  # the dispersion as the tests use it (clamped)
    shape: float  # counts and rates: the negative binomial's shape


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
        self._horizons: Ints = np.array(self.config.horizons, np.int64)
        self._state = _Arrays(self._ring, len(self.config.horizons))
        self._keys: list[tuple[int, str, str]] = []  # per series number: (SERIES index, country, device_type)
        self._rows: dict[tuple[int, str, str], int] = {}  # the inverse
        self._open: dict[int, dict[str, Any]] = {}  # series number -> its open anomaly
        self._group_list: list[tuple[str, str]] = []  # group number -> (country, device_type)
        self._group_number: dict[tuple[str, str], int] = {}
        self._complete: set[tuple[str, str]] = set()  # groups that hold every series
        self._order: Ints = np.zeros(0, np.int64)  # series numbers in the order a window judges them
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
        roll_ups = [((country, ALL), (ALL, device), (ALL, ALL)) for country, device in cells]
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
        config, s = self.config, self._state
        inputs = self._inputs(cells, roll_ups)
        k_table, n_table = _observations(inputs)
        k, n = k_table[s.group, s.index], n_table[s.group, s.index]
        cell = inputs[s.group]
        mean, var = self._expected(n)
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
        self._learn(k, n, mean, var, cell, suspect)
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
        rows = rare_rows.tolist()
        # Each rare series' numbers as Python ones, taken from the arrays in one go (in _Series' order).
        views = map(
            _Series,
            s.hits[rare_rows].tolist(),
            s.quiet[rare_rows].tolist(),
            s.cooldown[rare_rows].tolist(),
            [self._open.get(row) for row in rows],
            s.d[rare_rows].tolist(),
            s.d_num[rare_rows].tolist(),
            s.filled[rare_rows].tolist(),
            s.sums[:, :, rare_rows].transpose(2, 0, 1).reshape(len(rows), s.sums.shape[0] * _SLOT).tolist(),
            z[:, rare_rows].T.tolist(),
            inflate[:, rare_rows].T.tolist(),
            phi[rare_rows].tolist(),
            shape[rare_rows].tolist(),
        )
        for row, is_ready, series in zip(rows, ready[rare_rows].tolist(), views, strict=True):
            index, country, device = self._keys[row]
            spec = SERIES[index]
            verdict = self._score(series, index, spec) if is_ready else None
            self._life_cycle(series, index, spec, verdict, start_ms, end_ms, window_s, events, (country, device))
            s.hits[row], s.quiet[row], s.cooldown[row] = series.hits, series.quiet, series.cooldown
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

    def _expected(self, n: Floats) -> tuple[Floats, Floats]:
        """Expected k and its variance for this window, from the baseline before it learns this window."""
        s = self._state
        with np.errstate(divide="ignore", invalid="ignore"):  # b = 0: nothing learned, masked below
            ratio = s.a / s.b
            mean = np.where(s.count, s.a, np.where(s.b > 0, ratio * n, 0.0))
            share_var = n * ratio * (1.0 - ratio)
            lognormal_var = np.maximum(s.c / s.b - ratio * ratio, 1e-9) * n  # per-start variance x starts
            var = np.where(
                s.count,
                s.a,
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

        `entry` is _SLOT x series; the windows leaving the horizons are dropped from their sums.
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
            fresh = np.zeros((_SLOT, lap.size))
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
        phi = np.minimum(np.maximum(s.phi, 1.0), config.phi_max)
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

    def _learn(self, k: Floats, n: Floats, mean: Floats, var: Floats, cell: Floats, suspect: Bools) -> None:
        """Every baseline learns this window; a suspect one (or one with an open anomaly) ten times slower."""
        config, s = self.config, self._state
        weight = np.where(suspect, config.slow_factor, 1.0)
        # count: a running mean at first, then the EWMA.
        level = s.a + np.maximum(config.alpha_count, 1.0 / s.t) * weight * (k - s.a)
        keep = 1.0 - config.alpha_rate * weight
        s.a = np.where(s.count, level, s.a * keep + weight * k)
        s.b = np.where(s.count, s.b, s.b * keep + weight * n)
        s.c = np.where(s.lognormal, s.c * keep + weight * cell[:, STARTUP_B2], s.c)
        s.d_num = np.where(s.rebuffer, s.d_num * keep + weight * cell[:, REBUFFER_MS], s.d_num)
        s.d = np.where(s.rebuffer, s.d * keep + weight * (cell[:, PLAYED_MS] + cell[:, REBUFFER_MS]), s.d)
        rows = np.flatnonzero(~suspect & (mean >= config.phi_min_expected) & (var > 0))
        if rows.size:
            # Quasi-likelihood dispersion: the mean squared Pearson residual, 1 for pure Poisson/binomial noise.
            # Squared by Python's ** (the C library's pow), not numpy's x * x: they differ in the last bit about
            # once in a thousand, and the detector's outputs stay bit for bit what they were.
            squares = np.array([x**2 for x in (k[rows] - mean[rows]).tolist()])
            pearson = np.minimum(squares / var[rows], 25.0)
            s.phi[rows] += config.alpha_phi * (pearson - s.phi[rows])

    # --- one rare series, one window ----------------------------------------------------------------

    def _score(self, series: _Series, index: int, spec: SeriesSpec) -> _Verdict:
        """The verdict on one series, from the screen's normal z per horizon.

        Where that z is beyond `screen`, the exact tail (anomaly_stats) replaces it; a z beyond `z_learn` makes
        the series suspect, and beyond `z_open`, with effect and volume enough, an alarm.
        """
        config = self.config
        kind = spec.kind
        sums = series.sums
        screen, z_learn = config.screen, config.z_learn
        poisson_like = kind in ("count", "rate")
        verdict = _Verdict()
        best_up, best_down = -math.inf, math.inf
        opened = series.open
        quiet_limit = max(opened.get("horizon", self._ring), config.resolve_horizon) if opened is not None else 0
        at = 0
        for horizon, normal_z, inflate in zip(config.horizons, series.z, series.inflate, strict=True):
            if horizon > series.filled:
                break
            sk, sn, sm = sums[at], sums[at + 1], sums[at + 2]
            z = normal_z
            beyond = z >= screen or z <= -screen
            if beyond and poisson_like:
                z = _negative_binomial_score(sk / series.phi, sm / series.phi, series.shape)
            elif beyond and kind == "share":
                z = binomial_score(sk, sn, sm / sn, inflate)
            elif not poisson_like and (z > MAX_SCORE or z < -MAX_SCORE):
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

    # --- state --------------------------------------------------------------------------------------

    @property
    def series_count(self) -> int:
        """Series held (one small record each)."""
        return len(self._keys)

    def open_anomalies(self) -> list[tuple[str, str, str, str, str]]:
        """(series, country, device_type, direction, severity) of every open anomaly."""
        return [
            (SERIES[index].id, country, device, opened["direction"], opened["severity"])
            for (index, country, device), opened in ((self._keys[row], self._open[row]) for row in sorted(self._open))
        ]

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data (lists, dicts, numbers, strings)."""
        return {
            "version": 1,
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
        keys: list[tuple[int, str, str]] = []
        records: list[list[Any]] = []
        for series_id, country, device, state in snapshot["series"]:
            if series_id in index_of:  # a series dropped since the snapshot is forgotten
                keys.append((index_of[series_id], country, device))
                records.append(state)
        detector._add_series(keys)
        detector._open = detector._state.load(records)
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
