"""What crosses from a Kafka partition reader to the window store: one summary per batch.

Per-event objects never travel through the dataflow. Each reader folds a
consumed batch into additive partial aggregates keyed by window and
dimensions, and sends that, its partition's progress and the rejected
messages, as one item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# (window_start_ms, aggregate name, *dimension values) -> additive integer
PartialKey = tuple[int | str, ...]
Partials = dict[PartialKey, int]

PartitionState = Literal["active", "idle", "finished"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message: its original bytes, why, and where it came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


@dataclass(slots=True)
class BatchSummary:
    """One consumed batch of one partition, pre-aggregated.

    `fine` holds the events on time for their fine window (they count for
    the coarse window too). `coarse_only` holds the events already late for
    their fine window but not for their coarse one. `late` counts, per
    `(resolution, window_start_ms, event_type)`, the events that arrived
    after their window closed on this partition.
    """

    partition: str
    high_event_time_ms: int
    state: PartitionState
    fine: Partials = field(default_factory=dict)
    coarse_only: Partials = field(default_factory=dict)
    late: dict[tuple[str, int, str], int] = field(default_factory=dict)
    consumed: int = 0
    duplicates: int = 0
    rejects: list[DeadLetter] = field(default_factory=list)
