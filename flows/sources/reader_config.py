"""Settings of the partition readers, shared by the source and the window logic."""

from __future__ import annotations

from dataclasses import dataclass

from flows.sources.replay_range import ReplayRange
from settings.windows import WindowConfig


@dataclass(frozen=True)
class ReaderConfig:
    """How readers consume and judge events; one per dataflow."""

    windows: WindowConfig
    # Catching up, a batch covers ~2 min of event time per partition rather than ~36 s: fewer windows cut at a
    # batch edge, fewer summaries to merge (measured 8 % faster on all metrics); live batches stay small anyway.
    batch_size: int = 20_000
    start_at: str = "earliest"  # or "latest": where a partition with no snapshot starts
    exit_at_end: bool = False
    idle_after_ms: int = 10_000  # at the partition's end and quiet this long: stop holding the watermark
    max_message_bytes: int = 65536
    max_future_skew_ms: int = 3_600_000
    session_timeout_ms: int = 60_000  # 2 x the 30 s heartbeat interval
    signup_timeout_ms: int = 3_600_000
    # "all", or "stream_starts" alone: the like-for-like configuration of the benchmarks.
    metric_set: str = "all"
    # Set for `streampulse replay`: the event-time range re-run, its margins and pace (flows/sources/replay_range.py).
    replay: ReplayRange | None = None
