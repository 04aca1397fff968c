"""Realistic-noise traffic as the detector's per-window inputs: overdispersed, seasonal, bursty, drifting.

Real traffic is not Poisson around a smooth curve (issue 15). This draws, for every country x device type and
every 10 s window, the inputs the detector reads (`flows.anomaly.series.CELL_FIELDS`) directly at the level of
window aggregates — folding the billions of events of two weeks would take days on this machine:

- volume: each country's daily curve in its local time with a real peak/trough ratio (5 to 10x, steeper
  ramps than a sinusoid), a weekly cycle (weekends busier), a slow drift (a random walk of a few % a day),
  a short burst at the top of every hour (x1.25 for 2 minutes), and gamma–Poisson noise: the rate itself
  varies window to window (gamma shape `dispersion`), as correlated behaviour makes it;
- rates and shares (start failures, rebuffers, fatal errors, sign-up completion, payment declines, startup
  time) with their own overdispersion (a gamma factor on each rate per window);
- a benign premiere (one title's starts x5 for 20 minutes in one country: its whole starts x1.6), labelled
  benign in the truth;
- the incident library: the load generator's incident kinds (a CDN's start failures, an app's crash that
  drops starts, a rebuffer storm, slow startup, card declines, fatal errors), and a persistent one: a
  degraded CDN whose start failures stay x3 to the end of the run.

Deterministic for a seed. `Traffic.window(w)` returns one window's cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flows.anomaly.series import CELL_FIELDS, Cells
from flows.windows.sketch import LOG_GAMMA

WINDOW_MS = 10_000
DAY_WINDOWS = 86_400_000 // WINDOW_MS
T0_MS = 1_714_262_400_000  # a Monday, 00:00 UTC (event time; nothing reads the clock)

COUNTRIES: tuple[tuple[str, float, int], ...] = (
    # country, share of the world's starts, UTC offset (h)
    ("US", 0.25, -5),
    ("BR", 0.12, -3),
    ("IN", 0.10, 5),
    ("GB", 0.07, 0),
    ("DE", 0.07, 1),
    ("FR", 0.06, 1),
    ("JP", 0.06, 9),
    ("MX", 0.06, -6),
    ("CA", 0.05, -5),
    ("ES", 0.04, 1),
    ("IT", 0.04, 1),
    ("KR", 0.03, 9),
    ("AU", 0.03, 10),
    ("AR", 0.02, -3),
)
DEVICES: tuple[tuple[str, float], ...] = (
    ("tv", 0.35),
    ("android", 0.2),
    ("ios", 0.15),
    ("web", 0.15),
    ("tablet", 0.1),
    ("console", 0.05),
)
F = {name: i for i, name in enumerate(CELL_FIELDS)}


@dataclass(frozen=True)
class Incident:
    """An effect on some cells over [start, end) windows; `benign` ones are expected and must not page critical."""

    name: str
    start: int
    end: int  # exclusive; a persistent one lasts to the end of the run
    countries: tuple[str, ...]  # empty: every country
    devices: tuple[str, ...]  # empty: every device type
    effects: dict[str, float]  # multiplier per rate: starts, vsf, rebuffer, errors, startup, decline
    series: tuple[str, ...]  # the detector series it moves
    benign: bool = False
    persistent: bool = False


@dataclass
class Traffic:
    """The per-window cells of `days` simulated days, world `starts_per_s` at the daily mean."""

    days: int = 14
    starts_per_s: float = 600.0
    dispersion: float = 30.0  # gamma shape of the per-window rate variation (CV ~18 %)
    seed: int = 1
    incidents: list[Incident] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._rng = rng
        self.cells = [(c, d) for c, _, _ in COUNTRIES for d, _ in DEVICES]
        share = np.array([cs * ds for _, cs, _ in COUNTRIES for _, ds in DEVICES])
        self._base = share * self.starts_per_s * WINDOW_MS / 1000  # starts a window at the daily mean
        self._offset_h = np.array([off for _, _, off in COUNTRIES for _ in DEVICES], np.float64)
        # Each country's own trough depth: peak/trough between 5 and 10.
        depth = {c: 5.0 + 5.0 * rng.random() for c, _, _ in COUNTRIES}
        self._depth = np.array([depth[c] for c, _ in self.cells])
        self._drift = np.zeros(len(self.cells))
        self._drift_step = 0.05 / math.sqrt(DAY_WINDOWS)  # a random walk of ~5 % a day (in log)
        self._masks = {i.name: self._mask(i) for i in self.incidents}
        if not self.incidents:
            self.incidents.extend(default_incidents(self.days))
            self._masks = {i.name: self._mask(i) for i in self.incidents}

    def _mask(self, incident: Incident) -> np.ndarray:
        mask: np.ndarray = np.array(
            [
                (not incident.countries or c in incident.countries) and (not incident.devices or d in incident.devices)
                for c, d in self.cells
            ]
        )
        return mask

    def curve(self, w: int) -> np.ndarray:
        """Each cell's expected starts a window before noise: daily x weekly x top-of-the-hour x drift."""
        hours = (w * WINDOW_MS / 3_600_000 + self._offset_h) % 168
        day_phase = (hours % 24) / 24
        # Peak about 21:00 local, trough about 05:00; tanh sharpens the ramps (up to ~1.5 % a minute).
        shape = np.tanh(2.5 * np.cos(2 * math.pi * (day_phase - 21 / 24))) / math.tanh(2.5)  # -1 .. 1
        daily = self._depth ** ((shape - 1) / 2)  # 1 at the peak, 1 / depth at the trough
        weekend = np.where(hours // 24 >= 5, 1.25, 1.0)
        minute = (w * WINDOW_MS / 60_000) % 60
        top_of_hour = 1.25 if minute < 2 else 1.0
        mean: np.ndarray = self._base * 2.0 * daily * weekend * top_of_hour * np.exp(self._drift)
        return mean

    def window(self, w: int) -> tuple[Cells, list[Incident]]:
        """Window `w`'s cells (only cells with any input), and the incidents active in it."""
        rng, gamma = self._rng, self.dispersion
        self._drift += rng.normal(0.0, self._drift_step, len(self._drift))
        count = len(self.cells)
        effect = {name: np.ones(count) for name in ("starts", "vsf", "rebuffer", "errors", "startup", "decline")}
        active = [i for i in self.incidents if i.start <= w < i.end]
        for incident in active:
            for name, factor in incident.effects.items():
                effect[name] = np.where(self._masks[incident.name], effect[name] * factor, effect[name])

        def noisy(mean: np.ndarray, shape: float = gamma) -> np.ndarray:
            drawn: np.ndarray = rng.poisson(mean * rng.gamma(shape, 1.0 / shape, count))
            return drawn

        starts = noisy(self.curve(w) * effect["starts"])
        attempts = starts.astype(np.float64)
        failures = noisy(attempts * 0.012 * effect["vsf"], 20.0)
        # Time played this window: concurrent sessions (~90 windows of playback per start) x 10 s, smooth.
        played = np.round(self.curve(w) * effect["starts"] * 90 * WINDOW_MS * rng.gamma(200.0, 1 / 200.0, count))
        rebuffers = noisy(played * 2e-7 * effect["rebuffer"], 20.0)
        errors = noisy(played * 1e-8 * effect["errors"], 20.0)
        signups_started = noisy(attempts * 0.03, 20.0)
        completed = noisy(signups_started * 0.6, 20.0)
        payments = noisy(completed.astype(np.float64) * 0.9, 20.0)
        declines = np.minimum(noisy(payments * 0.05 * effect["decline"], 20.0), payments)
        # Startup: log-normal, median 900 ms (x the incident's effect), sigma 0.6; the window's sum of log
        # buckets and of their squares as the sketch gives them.
        mu = (math.log(900.0) + np.log(effect["startup"])) / LOG_GAMMA
        sigma = 0.6 / LOG_GAMMA
        n = attempts
        mean_b = mu + rng.normal(0.0, 1.0, count) * sigma / np.sqrt(np.maximum(n, 1.0))
        sum_b = np.round(n * mean_b)
        sum_b2 = np.round(n * (mean_b * mean_b + sigma * sigma))
        cells: Cells = {}
        columns = {
            "starts": starts,
            "failures": failures,
            "played_ms": played,
            "rebuffer_ms": rebuffers * 2000,
            "rebuffers": rebuffers,
            "errors": errors,
            "signups_started": signups_started,
            "signups_completed": completed,
            "payments": payments,
            "declines": declines,
            "startup_n": n,
            "startup_b": sum_b,
            "startup_b2": sum_b2,
        }
        table = np.zeros((count, len(CELL_FIELDS)), np.int64)
        for name, column in columns.items():
            table[:, F[name]] = column
        for key, row in zip(self.cells, table.tolist(), strict=True):
            if any(row):
                cells[key] = row
        return cells, active


def _at(day: int, utc_hour: float) -> int:
    return round((day * 24 + utc_hour) * 3600_000 / WINDOW_MS)


def default_incidents(days: int) -> list[Incident]:
    """The incident library, in the second week (the first is the detector's to learn the week)."""
    m = 6  # windows a minute
    end_of_run = days * DAY_WINDOWS
    return [
        Incident("premiere-br (benign)", _at(8, 23.0), _at(8, 23.0) + 20 * m, ("BR",), (), {"starts": 1.6}, ("sps",),
                 benign=True),
        Incident("cdn-failures-br", _at(8, 22.5), _at(8, 22.5) + 30 * m, ("BR",), (), {"vsf": 5.0}, ("vsf_rate",)),
        Incident("app-crash-in-android", _at(9, 15.0), _at(9, 15.0) + 30 * m, ("IN",), ("android",),
                 {"starts": 0.3, "errors": 8.0}, ("sps", "playback_error_rate")),
        Incident("rebuffer-storm-us-tv", _at(9, 2.0), _at(9, 2.0) + 15 * m, ("US",), ("tv",), {"rebuffer": 4.0},
                 ("rebuffer_ratio",)),
        Incident("slow-startup-jp", _at(10, 12.0), _at(10, 12.0) + 20 * m, ("JP",), (), {"startup": 1.8},
                 ("startup_ms",)),
        Incident("card-declines-gb", _at(10, 20.0), _at(10, 20.0) + 30 * m, ("GB",), (), {"decline": 8.0},
                 ("payment_failure_rate",)),
        Incident("fatal-errors-de-web", _at(11, 19.0), _at(11, 19.0) + 15 * m, ("DE",), ("web",), {"errors": 10.0},
                 ("playback_error_rate",)),
        Incident("outage-fr", _at(11, 20.0), _at(11, 20.0) + 20 * m, ("FR",), (), {"starts": 0.2}, ("sps",)),
        Incident("cdn-degraded-mx (persistent)", _at(12, 1.0), end_of_run, ("MX",), (), {"vsf": 3.0},
                 ("vsf_rate",), persistent=True),
    ]  # fmt: skip
