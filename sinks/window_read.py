"""Reading stored windows back from Redis: every shard's rows together, final only once every shard says so.

The one place that knows how the writer (sinks/redis_sink.py) splits a window
across shards (sinks/redis_layout.py): `query`, `top` and the tests read
through it. Windows written before sharding (one `agg:` string per aggregate,
one `final` and `late:{event_type}` field per window) are still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import redis

from sinks.redis_layout import legacy_aggregate_key, shards_key, window_key

AggregateRows = dict[tuple[object, ...], int]


@dataclass(frozen=True)
class StoredWindow:
    """One window as stored: its status and the aggregates asked for (every shard's rows)."""

    start_ms: int
    end_ms: int
    final: bool
    watermark_ms: int
    late: dict[str, int]
    values: dict[str, AggregateRows] = field(default_factory=dict)


def final_through(shards: dict[bytes, bytes]) -> int | None:
    """Every window ending at or before this is final in every shard; None: no shard has said (or legacy data)."""
    count = int(shards.get(b"count", 0))
    if count <= 0:
        return None
    through = [shards.get(f"through:{shard}".encode()) for shard in range(count)]
    if any(t is None for t in through):
        return -1  # a shard not heard from yet: nothing is final everywhere
    return min(int(t) for t in through)  # type: ignore[arg-type]


def _window(start: int, fields: dict[bytes, bytes], through: int | None, wanted: set[str]) -> StoredWindow | None:
    end_ms = int(fields.get(b"end_ms", 0))
    if not end_ms:
        return None  # expired between the index read and now
    late: dict[str, int] = {}
    documents: dict[str, list[bytes]] = {}
    for name, value in fields.items():
        if name.startswith(b"late:"):
            event_type = name.decode().split(":")[1]  # late:{event_type}[:{shard}]
            late[event_type] = late.get(event_type, 0) + int(value)
        elif name.startswith(b"agg:"):
            aggregate = name.decode().split(":")[1]  # agg:{aggregate}:{shard}
            if aggregate in wanted:
                documents.setdefault(aggregate, []).append(value)
    final = end_ms <= through if through is not None else fields.get(b"final") == b"1"
    window = StoredWindow(start, end_ms, final, int(fields.get(b"watermark_ms", -1)), late)
    for aggregate, shards in documents.items():
        window.values[aggregate] = _rows(shards)
    return window


def _rows(documents: Iterable[bytes]) -> AggregateRows:
    rows: AggregateRows = {}
    for document in documents:
        for row in orjson.loads(document):
            dims = tuple(row[:-1])
            rows[dims] = rows.get(dims, 0) + row[-1]
    return rows


def read_windows(
    client: redis.Redis, namespace: str, resolution: str, starts: Sequence[int], aggregates: Sequence[str] = ()
) -> list[StoredWindow]:
    """The stored windows among `starts`, in their order (expired ones left out), with `aggregates`' rows."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(shards_key(namespace))
    for start in starts:
        pipe.hgetall(window_key(namespace, resolution, start))
        for aggregate in aggregates:
            pipe.get(legacy_aggregate_key(namespace, resolution, aggregate, start))
    replies = pipe.execute()
    through = final_through(replies[0])
    windows: list[StoredWindow] = []
    stride = 1 + len(aggregates)
    for i, start in enumerate(starts):
        at = 1 + i * stride
        window = _window(start, replies[at], through, set(aggregates))
        if window is None:
            continue
        # Written before sharding: one string per aggregate.
        for aggregate, legacy in zip(aggregates, replies[at + 1 : at + stride], strict=True):
            if legacy is not None and aggregate not in window.values:
                window.values[aggregate] = _rows([legacy])
        windows.append(window)
    return windows
