"""The metric catalogue: what is stored (additive aggregates) and what is queried (metrics).

Everything streampulse keeps per window is an *additive integer aggregate*
at its finest dimensions: counts, sums, and the bucket counts of the
startup-time sketch. Adding is all that merging partitions, rolling up
dimensions or combining windows needs, so every metric a user queries is
computed from these parts at read time — ratios from their sums, percentiles
from merged sketch buckets, top titles from summed title counts — and
"all countries" always agrees with the per-country numbers.

The one exception to "adds over time" is `concurrent_streams`, a count at
the window's end: a coarse window takes the value at the end of its last
fine window (`at_window_end`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BASE_DIMS: tuple[str, ...] = ("country", "device_type")
_B = BASE_DIMS


@dataclass(frozen=True)
class Aggregate:
    """An additive aggregate stored per window, keyed by its dimension values."""

    name: str
    family: str
    dims: tuple[str, ...]
    description: str
    at_window_end: bool = False


@dataclass(frozen=True)
class Metric:
    """A metric id a user queries, computed from stored aggregates.

    `kind` says how: `count` sums the `numerator` aggregates; `per_second`
    divides that by the window length; `ratio` divides it by the sum of the
    `denominator` aggregates (times `scale`); `quantile` reads the `q`-quantile
    of a sketch; `top` ranks the values of the last dimension of `numerator`.
    """

    id: str
    kind: Literal["count", "per_second", "ratio", "quantile", "top"]
    numerator: tuple[str, ...]
    denominator: tuple[str, ...] = ()
    description: str = ""
    scale: float = 1.0
    q: float = 0.0


AGGREGATES: dict[str, Aggregate] = {
    a.name: a
    for a in (
        Aggregate("events", "any", (*_B, "event_type"), "valid events counted, by event_type"),
        # playback
        Aggregate("play_attempts", "playback", _B, "count of play_attempt"),
        Aggregate("stream_starts", "playback", (*_B, "cdn"), "count of play_start"),
        Aggregate("start_failures", "playback", (*_B, "error_code"), "count of start_failure"),
        Aggregate("startup_ms_sketch", "playback", (*_B, "bucket"), "startup_ms sketch: count per log bucket"),
        Aggregate("title_starts", "playback", (*_B, "title_id"), "play_start count per title"),
        Aggregate("played_ms", "playback", _B, "Σ played_ms of heartbeat and play_stop"),
        Aggregate("rebuffer_ms", "playback", _B, "Σ rebuffer_ms"),
        Aggregate("rebuffers", "playback", _B, "count of rebuffer"),
        Aggregate("pauses", "playback", _B, "count of pause"),
        Aggregate("heartbeat_played_ms", "playback", _B, "Σ played_ms of heartbeats (bitrate weights)"),
        Aggregate("bitrate_x_played_ms", "playback", _B, "Σ bitrate_kbps × played_ms of heartbeats"),
        Aggregate("bitrate_downshifts", "playback", _B, "bitrate_change to a lower bitrate"),
        Aggregate("playback_errors", "playback", (*_B, "error_code"), "count of play_error"),
        Aggregate("concurrent_streams", "playback", _B, "open sessions at the window's end", at_window_end=True),
        # sign-up
        Aggregate("signups_started", "signup", (*_B, "channel"), "count of signup_started"),
        Aggregate("plans_selected", "signup", (*_B, "channel", "plan"), "count of plan_selected"),
        Aggregate(
            "payments_submitted", "signup", (*_B, "channel", "plan", "payment_method"), "count of payment_submitted"
        ),
        Aggregate(
            "signups_completed", "signup", (*_B, "channel", "plan", "payment_method"), "count of signup_completed"
        ),
        Aggregate("signups_failed", "signup", (*_B, "channel", "plan", "failure_reason"), "count of signup_failed"),
        Aggregate(
            "payment_declines",
            "signup",
            (*_B, "channel", "plan", "payment_method"),
            "signup_failed with payment_declined, by the funnel's payment method",
        ),
        Aggregate(
            "new_subscription_value_cents", "signup", (*_B, "plan", "currency"), "Σ price_cents of signup_completed"
        ),
    )
}

METRICS: dict[str, Metric] = {
    m.id: m
    for m in (
        Metric("play_attempts", "count", ("play_attempts",), description="count of play_attempt"),
        Metric("stream_starts", "count", ("stream_starts",), description="count of play_start"),
        Metric("sps", "per_second", ("stream_starts",), description="stream starts per second of the window"),
        Metric("start_failures", "count", ("start_failures",), description="count of start_failure"),
        Metric(
            "vsf_rate",
            "ratio",
            ("start_failures",),
            ("stream_starts", "start_failures"),
            description="video start failures / (starts + start failures)",
        ),
        Metric("startup_ms_p50", "quantile", ("startup_ms_sketch",), q=0.5, description="median startup_ms (±1 %)"),
        Metric("startup_ms_p90", "quantile", ("startup_ms_sketch",), q=0.9, description="90th pct startup_ms (±1 %)"),
        Metric("startup_ms_p99", "quantile", ("startup_ms_sketch",), q=0.99, description="99th pct startup_ms (±1 %)"),
        Metric(
            "rebuffer_ratio",
            "ratio",
            ("rebuffer_ms",),
            ("played_ms", "rebuffer_ms"),
            description="Σrebuffer_ms / (Σplayed_ms + Σrebuffer_ms)",
        ),
        Metric(
            "rebuffers_per_hour",
            "ratio",
            ("rebuffers",),
            ("played_ms",),
            scale=3_600_000,
            description="rebuffer events per hour played",
        ),
        Metric(
            "pauses_per_hour",
            "ratio",
            ("pauses",),
            ("played_ms",),
            scale=3_600_000,
            description="pause events per hour played",
        ),
        Metric("playback_errors", "count", ("playback_errors",), description="count of play_error"),
        Metric(
            "avg_bitrate_kbps",
            "ratio",
            ("bitrate_x_played_ms",),
            ("heartbeat_played_ms",),
            description="heartbeat bitrate weighted by played_ms",
        ),
        Metric("bitrate_downshifts", "count", ("bitrate_downshifts",), description="switches to a lower bitrate"),
        Metric("concurrent_streams", "count", ("concurrent_streams",), description="open sessions at window end"),
        Metric("top_titles", "top", ("title_starts",), description="top N title_id by stream starts"),
        Metric("signups_started", "count", ("signups_started",), description="count of signup_started"),
        Metric("plans_selected", "count", ("plans_selected",), description="count of plan_selected"),
        Metric("payments_submitted", "count", ("payments_submitted",), description="count of payment_submitted"),
        Metric("signups_completed", "count", ("signups_completed",), description="count of signup_completed"),
        Metric("signups_failed", "count", ("signups_failed",), description="count of signup_failed"),
        Metric(
            "signup_completion_ratio",
            "ratio",
            ("signups_completed",),
            ("signups_started",),
            description="signups completed / signups started in the window",
        ),
        Metric(
            "payment_failure_rate",
            "ratio",
            ("payment_declines",),
            ("payments_submitted",),
            description="payment declines / payments submitted",
        ),
        Metric(
            "new_subscription_value_cents",
            "count",
            ("new_subscription_value_cents",),
            description="Σ price_cents of completed sign-ups",
        ),
        Metric("events", "count", ("events",), description="valid events counted, by event_type"),
    )
}

AT_WINDOW_END: frozenset[str] = frozenset(a.name for a in AGGREGATES.values() if a.at_window_end)

# Dimensions that are an aggregate's internals, not something to group by.
_INTERNAL_DIMS = {"bucket"}


def dims_of(metric_id: str) -> tuple[str, ...]:
    """The dimensions a metric can be grouped or filtered by."""
    metric = METRICS[metric_id]
    dims = [AGGREGATES[name].dims for name in metric.numerator + metric.denominator]
    # A ratio can only be split by the dimensions all its parts share.
    return tuple(d for d in dims[0] if d not in _INTERNAL_DIMS and all(d in other for other in dims[1:]))
