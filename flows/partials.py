"""What crosses from a Kafka partition reader to the window store: one summary per batch.

Per-event objects never travel through the dataflow. Each reader folds a
consumed batch into additive partial aggregates keyed by window and
dimensions, and sends that, its partition's progress and the rejected
messages, as one item. The dataflow splits the rejected messages off at once
(`BatchSummary.without_rejects`): their bytes go to the dead-letter sink on the
worker that read them, only their counts travel on to the window store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

# (window_start_ms, aggregate name, *dimension values) -> additive integer
PartialKey = tuple[int | str, ...]
Partials = dict[PartialKey, int]

PartitionState = Literal["active", "idle", "finished"]

# Within a batch, the aggregates without extra dimensions are counted per (window_start_ms, country,
# device_type) in one list of integers, a slot per aggregate; RowLayout says, per slot, which
# (aggregate, extra dimension values) it adds to.
RowKey = tuple[int, str, str]
Rows = dict[RowKey, list[int]]
RowLayout = tuple[tuple[tuple[str, tuple[str, ...]], ...], ...]

# The change in open sessions at a fine window's end, per (country, device_type): concurrent streams are
# sent as changes, which the window store adds up in window order (flows/fold/playback.py says why).
CONCURRENCY_CHANGE = "concurrent_streams_change"


def expand_rows(
    rows: dict[tuple[str, str], list[int]], layout: RowLayout, out: dict[str, dict[tuple[str, ...], int]]
) -> None:
    """Add one window's rows, keyed by (country, device_type), to `out` as aggregate -> dims -> value."""
    for (country, device), row in rows.items():
        for slot, value in enumerate(row):
            if value:
                for aggregate, extra in layout[slot]:
                    values = out.get(aggregate)
                    if values is None:
                        values = out[aggregate] = {}
                    dims = (country, device, *extra)
                    values[dims] = values.get(dims, 0) + value


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
    # The same split for the aggregates counted in rows (`fine_rows` also count for the coarse window).
    fine_rows: Rows = field(default_factory=dict)
    coarse_rows: Rows = field(default_factory=dict)
    layout: RowLayout = ()
    duplicates: int = 0
    rejects: list[DeadLetter] = field(default_factory=list)
    # Rejects split off to the dead-letter sink on the worker that read them (`without_rejects`), counted by reason.
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    # The reader's view of its partition, for the pipeline-health document (flows/pipeline_health.py):
    consumed: int = 0  # messages in this batch, valid or not
    lag: int = -1  # messages between the next offset and the partition's end when last measured; -1: not yet
    kafka_error: str = ""  # the last Kafka error since the reader last got a message from its partition
    # The window-store shard this part of the batch is for (flows/sharding.py); 0 when there is one.
    shard: int = 0

    def without_rejects(self) -> BatchSummary:
        """This summary with its rejected messages left out and counted by reason instead (the summary is unchanged)."""
        if not self.rejects:
            return self
        by_reason = dict(self.rejected_by_reason)
        for letter in self.rejects:
            by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
        return replace(self, rejects=[], rejected_by_reason=by_reason)
