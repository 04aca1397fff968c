"""Reading window aggregates back from Redis and rolling them up (used by `streampulse query`).

Aggregates are stored at their finest dimensions, each shard's cells apart
(sinks/window_read.py puts them together); a query adds them up over
the dimensions it does not group by, then computes the metric from the
sums, so a ratio is always recomputed from its parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import redis

from flows.windows.catalog import METRICS, dims_of
from flows.windows.metric_values import Group, detail_dim, parts_of, roll_up, top, value_of
from sinks.redis_layout import index_key
from sinks.window_read import read_windows

DEFAULT_LAST_WINDOWS = 30
DEFAULT_TOP_N = 10


class QueryError(ValueError):
    """A query that cannot be answered as asked; the message says why."""


@dataclass(frozen=True)
class Row:
    """One metric value for one window and one group of dimension values."""

    metric: str
    window_start_ms: int
    window_end_ms: int
    dims: dict[str, str]
    value: float | int | None
    final: bool

    def as_json(self) -> bytes:
        """The row as the JSON object `query --format json` prints."""
        return orjson.dumps(
            {
                "metric": self.metric,
                "window_start_ms": self.window_start_ms,
                "window_end_ms": self.window_end_ms,
                "dims": self.dims,
                "value": self.value,
                "final": self.final,
            }
        )


def validate(metric: str, by: Sequence[str], where: Mapping[str, str]) -> None:
    """Raise QueryError if the metric is unknown or a dimension does not apply to it."""
    if metric not in METRICS:
        raise QueryError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
    allowed = dims_of(metric)
    for dim in [*by, *where]:
        if dim not in allowed:
            raise QueryError(f"{metric} has no dimension {dim!r}; it can be split by: {', '.join(allowed)}")
    ranked = detail_dim(METRICS[metric])
    if METRICS[metric].kind == "top" and ranked in by:
        raise QueryError(f"{metric} ranks {ranked} within each group: leave it out of --by")


def window_starts(
    client: redis.Redis, namespace: str, resolution: str, from_ms: int | None, to_ms: int | None
) -> list[int]:
    """Starts of the stored windows in [from_ms, to_ms), or the newest ones when no range is given."""
    key = index_key(namespace, resolution)
    if from_ms is None and to_ms is None:
        members = client.zrevrange(key, 0, DEFAULT_LAST_WINDOWS - 1)
        return sorted(int(m) for m in members)  # type: ignore[arg-type]
    low = "-inf" if from_ms is None else from_ms
    high = "+inf" if to_ms is None else f"({to_ms}"
    return [int(m) for m in client.zrangebyscore(key, low, high)]  # type: ignore[arg-type]


def query(
    client: redis.Redis,
    namespace: str,
    metric: str,
    resolution: str,
    from_ms: int | None = None,
    to_ms: int | None = None,
    by: Sequence[str] = (),
    where: Mapping[str, str] | None = None,
    top_n: int = DEFAULT_TOP_N,
) -> list[Row]:
    """The metric per window in the range, grouped by `by`, filtered by `where`."""
    where = dict(where or {})
    validate(metric, by, where)
    spec = METRICS[metric]
    parts = parts_of(spec)
    inner = detail_dim(spec)
    starts = window_starts(client, namespace, resolution, from_ms, to_ms)
    rows: list[Row] = []
    for window in read_windows(client, namespace, resolution, starts, parts):
        start, end_ms, final, values = window.start_ms, window.end_ms, window.final, window.values
        groups = roll_up(spec, values, by, where)
        if not groups and not by and spec.kind != "top":
            groups[()] = Group()
        for group_key, group in sorted(groups.items()):
            dims = dict(zip(by, group_key, strict=True))
            if spec.kind == "top":
                for rank, (name, count) in enumerate(top(group, top_n), start=1):
                    rows.append(Row(metric, start, end_ms, {**dims, str(inner): name, "rank": str(rank)}, count, final))
            else:
                rows.append(Row(metric, start, end_ms, dims, value_of(spec, group, (end_ms - start) / 1000), final))
    return rows
