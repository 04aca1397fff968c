"""Metric values from a window's stored aggregates: roll up, then compute.

Shared by `query` (reading Redis) and `/metrics` (the newest final window in
memory), so both compute every metric the same way: counts add, ratios are
recomputed from their summed parts, percentiles come from merged sketch
buckets, top titles from summed title counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.windows.catalog import AGGREGATES, METRICS, Metric
from flows.windows.sketch import quantile

# aggregate -> (dimension values...) -> value, for one window
WindowValues = Mapping[str, Mapping[tuple[Any, ...], int]]


@dataclass
class Group:
    """The parts of a metric summed over one group of dimension values."""

    sums: dict[str, int] = field(default_factory=dict)
    # For quantile and top metrics: value of the inner dimension (sketch bucket, title) -> sum.
    detail: dict[object, int] = field(default_factory=dict)


def detail_dim(metric: Metric) -> str | None:
    """The dimension a quantile or top metric looks inside of, rather than adding over."""
    if metric.kind in ("quantile", "top"):
        return AGGREGATES[metric.numerator[0]].dims[-1]
    return None


def parts_of(metric: Metric) -> list[str]:
    """The stored aggregates a metric is computed from."""
    return list(dict.fromkeys(metric.numerator + metric.denominator))


def roll_up(
    metric: Metric, values: WindowValues, by: Sequence[str], where: Mapping[str, str] | None = None
) -> dict[tuple[str, ...], Group]:
    """Sum the metric's parts over every dimension not in `by`, keeping only `where` matches."""
    inner = detail_dim(metric)
    groups: dict[tuple[str, ...], Group] = {}
    for aggregate in parts_of(metric):
        names = AGGREGATES[aggregate].dims
        for key, value in values.get(aggregate, {}).items():
            dims = dict(zip(names, key, strict=True))
            if where and any(str(dims.get(d)) != v for d, v in where.items()):
                continue
            group = groups.setdefault(tuple(str(dims[d]) for d in by), Group())
            group.sums[aggregate] = group.sums.get(aggregate, 0) + value
            if inner is not None:
                group.detail[dims[inner]] = group.detail.get(dims[inner], 0) + value
    return groups


def value_of(metric: Metric, group: Group, window_seconds: float) -> float | int | None:
    """The metric's value for one rolled-up group (not for `top`, which has many values)."""
    numerator = sum(group.sums.get(p, 0) for p in metric.numerator)
    if metric.kind == "count":
        return numerator
    if metric.kind == "per_second":
        return numerator / window_seconds
    if metric.kind == "quantile":
        return quantile({int(str(b)): n for b, n in group.detail.items()}, metric.q)
    denominator = sum(group.sums.get(p, 0) for p in metric.denominator)
    return numerator * metric.scale / denominator if denominator else None


def top(group: Group, n: int) -> list[tuple[str, int]]:
    """The `n` largest inner values (e.g. titles by starts), ties broken by name."""
    ranked = sorted(group.detail.items(), key=lambda item: (-item[1], str(item[0])))
    return [(str(name), count) for name, count in ranked[:n]]


def metric(metric_id: str) -> Metric:
    """The catalogue entry of a metric id."""
    return METRICS[metric_id]
