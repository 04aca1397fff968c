"""The key series the detector watches, and what each reads from a window's aggregates.

A series is a metric of the catalogue (flows/windows/catalog.py) per (country, device_type) and its
roll-ups; `cell_inputs` sums a window's aggregates into one small vector per cell, and each series
tests a count `k` against an exposure `n` taken from that vector (`observation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from flows.windows.catalog import AGGREGATES, METRICS
from flows.windows.sketch import GAMMA, ZERO_BUCKET

ALL = "all"
"""The roll-up label: `country="all"` sums every country, `device_type="all"` every device type."""

Kind = Literal["count", "rate", "share", "lognormal"]
Direction = Literal["up", "down"]
Severity = Literal["warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("warning", "critical")

LOG_GAMMA = math.log(GAMMA)
BUCKET_OFFSET = math.log(2 / (GAMMA + 1))  # log of a bucket's representative value = b * log γ + this
HOUR_MS = 3_600_000

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
# Every input is an aggregate of the catalogue: a renamed aggregate fails here, at import, not in production.
if not set(_AGGREGATE_FIELD) | {"startup_ms_sketch"} <= set(AGGREGATES):
    raise ImportError(
        f"the anomaly detector reads aggregates the catalogue lacks: {set(_AGGREGATE_FIELD) - set(AGGREGATES)}"
    )
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


def _spec(metric_id: str, kind: Kind, directions: tuple[Direction, ...], unit: str, **bounds: float) -> SeriesSpec:
    """A series that watches a metric of the catalogue: its id and description are the metric's."""
    return SeriesSpec(metric_id, kind, directions, unit, METRICS[metric_id].description, **bounds)


SERIES: tuple[SeriesSpec, ...] = (
    _spec("sps", "count", ("up", "down"), "1/s", critical_up=2.0),
    _spec("vsf_rate", "share", ("up",), "ratio"),
    _spec("rebuffer_ratio", "rate", ("up",), "ratio"),
    # Not a catalogue metric: errors per played hour, the rate the test judges (the catalogue counts errors).
    SeriesSpec("playback_error_rate", "rate", ("up",), "1/h", "fatal playback errors per hour played"),
    # The geometric mean of startup_ms (≈ the median, the catalogue's startup_ms_p50), tested on log buckets.
    SeriesSpec(
        "startup_ms",
        "lognormal",
        ("up",),
        "ms",
        "geometric mean startup time (≈ median)",
        min_effect_up=1.3,
        critical_up=2.0,
    ),
    _spec("signup_completion_ratio", "share", ("down",), "ratio"),
    _spec("payment_failure_rate", "share", ("up",), "ratio"),
)
SERIES_IDS: tuple[str, ...] = tuple(s.id for s in SERIES)
# Each series's index in SERIES.
SPS, VSF, REBUFFER, ERROR_RATE, STARTUP, COMPLETION, PAYMENT = range(len(SERIES))
SLOT = 5


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
# window). One table, so the scalar `observation` and the arrays' `observations` cannot drift apart.
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


def observation(index: int, cell: Cell) -> tuple[float, float]:
    """(k, n) the test uses: events and exposure, successes and trials, or Σlog-bucket and starts."""
    fields = _N_FIELDS[index]
    n: float = sum(cell[f] for f in fields) if fields else 1.0
    k: float = cell[_K_FIELD[index]]
    if index == PAYMENT:
        # A decline whose payment fell in the window before: at most one per payment counts, so k <= n.
        k = min(k, n)
    return k, n


# The same table as arrays, so a window's observations are a few numpy calls whatever the number of series: k
# gathers its field, n is the cells' product with a 0/1 matrix (CELL_FIELDS x SERIES) plus sps' exposure of 1.
# Exact: the cells are integer counts, so every sum of them is too (< 2**53), in any order.
_K_COLUMNS = np.array(_K_FIELD)
_N_MATRIX = np.array([[1.0 if field in fields else 0.0 for fields in _N_FIELDS] for field in range(len(CELL_FIELDS))])
_N_WITHOUT_FIELDS = np.array([0.0 if fields else 1.0 for fields in _N_FIELDS])


def observations(cells: Floats) -> tuple[Floats, Floats]:
    """`observation` over arrays: k and n (groups x SERIES) from each group's cell (groups x CELL_FIELDS)."""
    k = cells[:, _K_COLUMNS]
    n: Floats = cells @ _N_MATRIX + _N_WITHOUT_FIELDS
    k[:, PAYMENT] = np.minimum(k[:, PAYMENT], n[:, PAYMENT])
    return k, n


def metric_value(index: int, k: float, n: float, window_s: float, windows: int) -> float | None:
    """The metric's value from the test's (k, n) summed over `windows` windows (rebuffer: see _display)."""
    if index == SPS:
        return k / (window_s * windows)
    if n <= 0:
        return None
    if index == ERROR_RATE:
        return k / n * HOUR_MS
    if index == STARTUP:
        return math.exp(k / n * LOG_GAMMA + BUCKET_OFFSET)
    if index == COMPLETION:
        started = n - k
        return k / started if started > 0 else None
    return k / n


# Per SERIES index, what its arrays' common path needs to know (indexed by each series' SERIES index).
IS_COUNT = np.array([spec.kind == "count" for spec in SERIES])
IS_RATE = np.array([spec.kind == "rate" for spec in SERIES])
IS_SHARE = np.array([spec.kind == "share" for spec in SERIES])
IS_LOGNORMAL = np.array([spec.kind == "lognormal" for spec in SERIES])
UP_ONLY = np.array([spec.directions == ("up",) for spec in SERIES])
DOWN_ONLY = np.array([spec.directions == ("down",) for spec in SERIES])
