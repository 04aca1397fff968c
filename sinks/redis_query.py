"""Reading window aggregates back from Redis and rolling them up (used by `streampulse query`).

Aggregates are stored at their finest dimensions; a query adds them up over
the dimensions it does not group by, then computes the metric from the
sums, so a ratio is always recomputed from its parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import redis

from flows.catalog import AGGREGATES, METRICS, Metric, dims_of
from flows.sketch import quantile as sketch_quantile
from sinks.redis_layout import aggregate_key, index_key, window_key

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
    ranked = _detail_dim(metric)
    if METRICS[metric].kind == "top" and ranked in by:
        raise QueryError(f"{metric} ranks {ranked} within each group: leave it out of --by")


def _detail_dim(metric: str) -> str | None:
    """The dimension a quantile or top metric looks inside of, rather than adding over."""
    spec = METRICS[metric]
    if spec.kind in ("quantile", "top"):
        return AGGREGATES[spec.numerator[0]].dims[-1]
    return None


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
    detail_dim = _detail_dim(metric)
    parts = list(dict.fromkeys(spec.numerator + spec.denominator))
    starts = window_starts(client, namespace, resolution, from_ms, to_ms)
    pipe = client.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(window_key(namespace, resolution, start))
        for part in parts:
            pipe.hgetall(aggregate_key(namespace, resolution, part, start))
    replies = pipe.execute()
    rows: list[Row] = []
    stride = 1 + len(parts)
    for i, start in enumerate(starts):
        meta = replies[i * stride]
        end_ms = int(meta.get(b"end_ms", 0)) or None
        if end_ms is None:
            continue  # expired between the index read and now
        sums: dict[tuple[str, ...], dict[str, int]] = {}
        details: dict[tuple[str, ...], dict[object, int]] = {}
        for part, fields in zip(parts, replies[i * stride + 1 : (i + 1) * stride], strict=True):
            part_dims = AGGREGATES[part].dims
            for raw_dims, raw_value in fields.items():
                values = dict(zip(part_dims, orjson.loads(raw_dims), strict=True))
                if any(str(values.get(d)) != v for d, v in where.items()):
                    continue
                group = tuple(str(values[d]) for d in by)
                by_part = sums.setdefault(group, {})
                by_part[part] = by_part.get(part, 0) + int(raw_value)
                if detail_dim is not None:
                    detail = details.setdefault(group, {})
                    detail[values[detail_dim]] = detail.get(values[detail_dim], 0) + int(raw_value)
        if not sums and not by:
            sums[()] = {}
        final = meta.get(b"final") == b"1"
        seconds = (end_ms - start) / 1000
        for group, by_part in sorted(sums.items()):
            dims = dict(zip(by, group, strict=True))
            if spec.kind == "top":
                ranked = sorted(details.get(group, {}).items(), key=lambda item: (-item[1], str(item[0])))
                for rank, (title, title_starts) in enumerate(ranked[:top_n], start=1):
                    top_dims = {**dims, str(detail_dim): str(title), "rank": str(rank)}
                    rows.append(Row(metric, start, end_ms, top_dims, title_starts, final))
                continue
            rows.append(Row(metric, start, end_ms, dims, _value(spec, by_part, details.get(group), seconds), final))
    return rows


def _value(
    spec: Metric, by_part: Mapping[str, int], detail: Mapping[object, int] | None, seconds: float
) -> float | int | None:
    numerator = sum(by_part.get(p, 0) for p in spec.numerator)
    if spec.kind == "count":
        return numerator
    if spec.kind == "per_second":
        return numerator / seconds
    if spec.kind == "quantile":
        buckets = {int(b): n for b, n in (detail or {}).items()}  # type: ignore[call-overload]
        return sketch_quantile(buckets, spec.q)
    denominator = sum(by_part.get(p, 0) for p in spec.denominator)
    return numerator * spec.scale / denominator if denominator else None
