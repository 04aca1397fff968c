"""Event-time windows: sizes, lateness and the arithmetic on epoch milliseconds.

Windows are tumbling and aligned to the epoch, so a window is named by its
start in ms and every process, worker and replay agrees on it without
coordination. No `datetime` is made per event: it is integer arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowConfig:
    """Window sizes and how long a window stays open for late events.

    `coarse_ms` is a whole multiple of `fine_ms` so a coarse window is
    exactly a run of fine ones.
    """

    fine_ms: int = 10_000
    coarse_ms: int = 60_000
    allowed_lateness_ms: int = 30_000
    publish_interval_ms: int = 1_000

    def __post_init__(self) -> None:
        if self.fine_ms <= 0 or self.coarse_ms <= 0:
            raise ValueError("window sizes must be positive")
        if self.coarse_ms % self.fine_ms:
            raise ValueError(
                f"the coarse window ({self.coarse_ms} ms) must be a whole multiple of the fine one ({self.fine_ms} ms)"
            )
        if self.allowed_lateness_ms < 0:
            raise ValueError("allowed lateness cannot be negative")
        if self.publish_interval_ms <= 0:
            raise ValueError("the publish interval must be positive")

    @property
    def fine_name(self) -> str:
        """The fine resolution's name in Redis keys, `query --resolution` and /metrics (`10s`)."""
        return resolution_name(self.fine_ms)

    @property
    def coarse_name(self) -> str:
        """The coarse resolution's name (`1m`)."""
        return resolution_name(self.coarse_ms)

    @property
    def resolutions(self) -> dict[str, int]:
        """Window sizes by the name used in Redis keys and `query --resolution`."""
        return {self.fine_name: self.fine_ms, self.coarse_name: self.coarse_ms}


def resolution_name(size_ms: int) -> str:
    """`10000` -> `10s`, `60000` -> `1m`, `3600000` -> `1h`, `250` -> `250ms`."""
    for unit, ms in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if size_ms % ms == 0:
            return f"{size_ms // ms}{unit}"
    return f"{size_ms}ms"


def window_start(event_time_ms: int, size_ms: int) -> int:
    """Start of the window of `size_ms` that holds `event_time_ms`."""
    return event_time_ms - event_time_ms % size_ms
