"""What the detector publishes: anomaly life-cycle events, series scores, and its record of an open anomaly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flows.anomaly.series import Direction, Severity

State = Literal["open", "escalated", "resolved", "accepted"]
CLOSED_STATES: frozenset[str] = frozenset({"resolved", "accepted"})
"""The states that end an anomaly: its effect is gone (`resolved`), or it lasted long enough to be the new
normal (`accepted`: the baseline took its level; `DetectorConfig.accept_after`)."""


@dataclass(frozen=True, slots=True)
class AnomalyEvent:
    """A change in an anomaly's life: it opened, escalated to critical, resolved, or was accepted as the new normal.

    `window_*` is the final window this change happened in; `onset_ms` the start of the evidence that
    opened it. `score` is the anomaly's strongest score so far (signed: negative for a drop), and
    `observed`/`expected` are the metric's values (in `unit`) over the `horizon_windows` windows of that
    evidence; `observed_count`/`expected_count` are the numbers the test compared (events, successes, or
    for startup_ms sums of log-buckets).
    """

    anomaly_id: str
    state: State
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


@dataclass(slots=True)
class OpenAnomaly:
    """The detector's record of one open anomaly: what opened it, and its strongest evidence so far (the peak)."""

    id: str
    direction: Direction
    severity: Severity
    onset_ms: int
    opened_ms: int
    horizon: int  # the horizon (windows) that opened it: it is judged quiet at that scale
    peak: float = 0.0  # the strongest signed score so far, and the numbers behind it
    peak_k: float = 0.0
    peak_n: float = 0.0
    peak_expected: float = 0.0
    peak_aux: float = 0.0
    peak_horizon: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for recovery snapshots."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenAnomaly:
        """Back from `to_dict`."""
        return cls(**data)
