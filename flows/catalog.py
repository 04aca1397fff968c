"""The metric catalogue: what is stored (additive aggregates) and what is queried (metrics).

Everything streampulse keeps per window is an *additive integer aggregate*
at its finest dimensions: counts, sums, and the bucket counts of the
startup-time sketch. Adding is all that merging partitions, rolling up
dimensions or combining replays ever needs, so every metric a user queries
is computed from these parts at read time — ratios from their sums,
percentiles from merged sketch buckets — and "all countries" always agrees
with the per-country numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BASE_DIMS: tuple[str, ...] = ("country", "device_type")


@dataclass(frozen=True)
class Aggregate:
    """An additive aggregate stored per window, keyed by its dimension values."""

    name: str
    family: str
    dims: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Metric:
    """A metric id a user queries, computed from stored aggregates.

    `kind` says how: `count` reads one aggregate; `per_second` divides it by
    the window length; `ratio` divides the sum of `numerator` aggregates by
    the sum of `denominator` ones.
    """

    id: str
    kind: Literal["count", "per_second", "ratio"]
    numerator: tuple[str, ...]
    denominator: tuple[str, ...] = ()
    description: str = ""


AGGREGATES: dict[str, Aggregate] = {
    a.name: a
    for a in (
        Aggregate("stream_starts", "playback", (*BASE_DIMS, "cdn"), "count of play_start events"),
        Aggregate("events", "any", (*BASE_DIMS, "event_type"), "valid events counted, by event_type"),
    )
}

METRICS: dict[str, Metric] = {
    m.id: m
    for m in (
        Metric("stream_starts", "count", ("stream_starts",), description="count of play_start"),
        Metric("sps", "per_second", ("stream_starts",), description="stream starts per second of the window"),
        Metric("events", "count", ("events",), description="valid events counted, by event_type"),
    )
}


def dims_of(metric_id: str) -> tuple[str, ...]:
    """The dimensions a metric can be grouped or filtered by."""
    metric = METRICS[metric_id]
    dims = [AGGREGATES[name].dims for name in metric.numerator + metric.denominator]
    # A ratio can only be split by the dimensions its parts share.
    shared = [d for d in dims[0] if all(d in other for other in dims[1:])]
    return tuple(shared)
