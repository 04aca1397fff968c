"""The anomaly detector's parameters."""

from __future__ import annotations

from dataclasses import dataclass


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
    # The dispersion is learned per horizon with no upper bound (a million starts a window can vary by
    # thousands of times Poisson); one window's squared residual counts at most this many times the current
    # dispersion, so a single outlier moves it by a bounded step (winsorized) while a real spread still grows it.
    phi_clip: float = 16.0
    # An anomaly still open this many windows after it opened (1 hour of 10 s windows) is the new normal:
    # published as "accepted", the baseline adopts the level of its last windows, and it closes.
    accept_after: int = 360
    # Critical pages: the effect must pass the critical bound even moved this many standard errors towards
    # the expected value, so a small series' noise on a warning-sized effect (a premiere's ×1.6) is not critical.
    critical_margin_z: float = 2.0
    # sps: a seasonal profile (hour of the day, and of the week once a week has been seen) times the
    # short-term level. Bins of this many ms, linearly interpolated; each learns with this half-life in visits.
    season_bin_ms: int = 3_600_000
    season_halflife_days: float = 3.0
    season_halflife_weeks: float = 2.0
    # The slow level the profile is learned against (deseasonalized, ~a day's memory, in windows of 10 s).
    alpha_slow: float = 1.0 / 8640
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
        if self.phi_clip <= 1 or self.accept_after < self.resolve_after:
            raise ValueError("need phi_clip > 1 and accept_after >= resolve_after")
        if self.season_bin_ms <= 0 or 86_400_000 % self.season_bin_ms:
            raise ValueError("season_bin_ms must divide a day")
        if not 0 < self.alpha_slow < 1 or self.season_halflife_days <= 0 or self.season_halflife_weeks <= 0:
            raise ValueError("the seasonal memories must be positive (alpha_slow in (0, 1))")
