"""Everything one load-generator run depends on, in one immutable value.

Two runs with equal `LoadgenConfig`s produce byte-identical output (in
realtime mode: identical content given the same `start_ms`), so the config
is also what the ground truth records about the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from loadgen.diurnal import DAY_MS
from loadgen.incidents import Incident, IncidentError, ResolvedIncident
from loadgen.realism import RealismParams
from loadgen.world import Catalogue

Mode = Literal["simulated", "realtime"]
DEFAULT_RATE = 1000.0
DEFAULT_SPAN_MS = DAY_MS
DEFAULT_WINDOWS_MS: tuple[int, ...] = (10_000, 60_000)
# With --events N and no --rate, aim a little above N/span so that N is reached just before the span ends.
EVENTS_RATE_HEADROOM = 1.05


@dataclass(frozen=True)
class ModelParams:
    """The knobs of the traffic model; the defaults aim at a plausible streaming service."""

    heartbeat_interval_ms: int = 30_000
    accounts: int = 100_000
    titles: int = 5_000
    zipf_s: float = 1.0
    signup_share: float = 0.03
    """Sign-up funnels started per playback session started."""
    start_failure_rate: float = 0.025
    silence_rate: float = 0.03
    """Share of sessions that just stop sending (no play_stop)."""
    watch_median_ms: int = 18 * 60_000
    watch_sigma: float = 1.1
    max_session_ms: int = 3 * 3_600_000
    rebuffers_per_hour: float = 4.0
    bitrate_changes_per_hour: float = 6.0
    pauses_per_hour: float = 2.0
    play_errors_per_hour: float = 0.03
    diurnal: bool = True
    warm_start: bool = True
    """Begin with the sessions that would already be playing at the start, so the rate is steady at once."""

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms < 1000:
            raise ValueError("the heartbeat interval must be at least 1 s")
        if self.accounts < 1 or self.titles < 1:
            raise ValueError("accounts and titles must be at least 1")
        for name in ("signup_share", "start_failure_rate", "silence_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction 0..1")
        if self.watch_median_ms <= 0 or self.max_session_ms <= 0:
            raise ValueError("session durations must be positive")


@dataclass(frozen=True)
class FaultConfig:
    """Delivery faults; every one is off by default."""

    jitter_ms: int = 0
    """Deliver each event up to this much after its event time, so events arrive out of order within the bound."""
    late_fraction: float = 0.0
    late_by_ms: int = 300_000
    duplicate_fraction: float = 0.0
    duplicate_delay_ms: int = 2_000
    """A re-delivered copy follows its original by up to this much."""
    malformed_fraction: float = 0.0
    """Malformed messages per valid event, on top of the valid events."""

    def __post_init__(self) -> None:
        for name in ("late_fraction", "duplicate_fraction", "malformed_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction 0..1")
        for name in ("jitter_ms", "late_by_ms", "duplicate_delay_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def any(self) -> bool:
        """Whether any fault is switched on."""
        return bool(self.jitter_ms or self.late_fraction or self.duplicate_fraction or self.malformed_fraction)


@dataclass(frozen=True)
class LoadgenConfig:
    """One run: what to generate, over which event times, with which faults and incidents."""

    start_ms: int
    seed: int = 1
    mode: Mode = "simulated"
    events: int | None = None
    """Stop after this many distinct valid events (duplicates and malformed messages come on top)."""
    span_ms: int | None = DEFAULT_SPAN_MS
    """Event time covered: [start_ms, start_ms + span_ms); None = no end (realtime until stopped). See `soft_span`."""
    rate: float | None = None
    """Mean events per second of event time, over a day; None = derived (see `effective_rate`)."""
    params: ModelParams = field(default_factory=ModelParams)
    faults: FaultConfig = field(default_factory=FaultConfig)
    incidents: tuple[Incident, ...] = ()
    windows_ms: tuple[int, ...] = DEFAULT_WINDOWS_MS
    session_timeout_ms: int | None = None
    realism: RealismParams = field(default_factory=RealismParams)
    """Realistic-noise traffic (loadgen/realism.py); all off by default."""

    def __post_init__(self) -> None:
        if self.events is not None and self.events < 1:
            raise ValueError("events must be at least 1")
        if self.span_ms is not None and self.span_ms <= 0:
            raise ValueError("span must be longer than zero")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("rate must be greater than zero")
        if not self.windows_ms or any(w <= 0 for w in self.windows_ms):
            raise ValueError("truth windows must be positive durations")
        if self.events is None and self.span_ms is None and self.mode == "simulated":
            raise ValueError("a simulated run needs --events or --span, or it never ends")
        for incident in self.incidents:
            if incident.title_rank is not None and incident.title_rank > self.params.titles:
                raise IncidentError(
                    f"incident {incident.name!r}: where.title_rank {incident.title_rank} is beyond the "
                    f"catalogue's {self.params.titles} titles"
                )

    @property
    def end_ms(self) -> int | None:
        """Exclusive end of the event-time span, if any."""
        return None if self.span_ms is None else self.start_ms + self.span_ms

    @property
    def soft_span(self) -> bool:
        """Whether the span only sets the rate rather than ending the run.

        With --events and no --rate (simulated), the run ends after exactly `events` events: a little before the
        span's end as a rule, a little after it when chance has it.
        """
        return self.events is not None and self.rate is None and self.mode == "simulated" and self.span_ms is not None

    @property
    def effective_rate(self) -> float:
        """Events per second the model aims at (mean over a day)."""
        if self.rate is not None:
            return self.rate
        if self.events is not None and self.span_ms is not None and self.mode == "simulated":
            return max(self.events * 1000 / self.span_ms * EVENTS_RATE_HEADROOM, 1e-3)
        return DEFAULT_RATE

    @property
    def timeout_ms(self) -> int:
        """Session timeout for concurrent streams (default: two heartbeat intervals)."""
        return self.session_timeout_ms or 2 * self.params.heartbeat_interval_ms

    @property
    def run_tag(self) -> str:
        """A short id of (seed, start), prefixed to every generated id so runs never share ids."""
        digest = hashlib.blake2b(f"{self.seed}:{self.start_ms}".encode(), digest_size=4).hexdigest()
        return digest

    def resolved_incidents(self) -> tuple[ResolvedIncident, ...]:
        """The incidents with absolute event times (a persistent one to the span's end) and titles for this run."""
        return tuple(i.resolve(self.start_ms, self.end_ms, self.title_at_rank) for i in self.incidents)

    def title_at_rank(self, rank: int) -> str:
        """The id of the run's `rank`-th most popular title (the model's catalogue: same seed, same shuffle)."""
        catalogue = Catalogue(self.params.titles, self.params.zipf_s, random.Random(f"world:{self.seed}"))
        return catalogue.ids[rank - 1]

    def describe(self) -> dict[str, Any]:
        """The config as plain JSON data, for the ground truth."""
        return {
            "seed": self.seed,
            "mode": self.mode,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "events": self.events,
            "rate": self.effective_rate,
            "params": dataclasses.asdict(self.params),
            "faults": dataclasses.asdict(self.faults),
            "windows_ms": list(self.windows_ms),
            "session_timeout_ms": self.timeout_ms,
            "run_tag": self.run_tag,
        } | ({"realism": self.realism.describe()} if self.realism.any else {})
