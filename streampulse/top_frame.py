"""What `streampulse top` shows, read from Redis alone: one `Frame` per refresh.

Metric values come from `sinks.redis_query.query`, the code behind
`streampulse query`, so a figure on screen is the figure `query` prints for
the same window: nothing is rolled up here. The pipeline's health is the
document the flow writes at each publish (sinks/health_sink.py), anomalies
are the recent ones the detector stored (sinks/anomaly_sink.py).

The window shown is the newest one the watermark has passed (all its events
are in, though stragglers may still come until it is final), else the newest
final one, else the newest: a window still being filled would show half its
starts, and windows ahead of the watermark hold only the concurrency changes
of sessions timing out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import redis

from flows.anomaly.events import CLOSED_STATES
from sinks.anomaly_sink import recent_anomalies
from sinks.redis_layout import health_key, index_key
from sinks.redis_query import Row, query
from sinks.window_read import StoredWindow, read_windows

# The country table's columns, in order.
COUNTRY_METRICS: tuple[str, ...] = (
    "sps",
    "vsf_rate",
    "rebuffer_ratio",
    "startup_ms_p50",
    "startup_ms_p90",
    "playback_errors",
    "concurrent_streams",
)
FUNNEL_METRICS: tuple[str, ...] = (
    "signups_started",
    "plans_selected",
    "payments_submitted",
    "signups_completed",
    "signup_completion_ratio",
    "payment_failure_rate",
)
# The dimensions `top` filters by: the ones every metric it shows has.
FILTER_DIMS: tuple[str, ...] = ("country", "device_type")
HISTORY_WINDOWS = 12  # windows in the SPS sparkline
FUNNEL_WINDOWS = 3
MAX_ANOMALIES = 20
SEVERITY_ORDER = {"critical": 0, "warning": 1}

Value = float | int | None


@dataclass(frozen=True)
class CountryRow:
    """One country's figures in the shown window, and its SPS over the recent windows (oldest first)."""

    country: str
    values: dict[str, Value]
    sps_history: tuple[Value, ...]


@dataclass(frozen=True)
class FunnelRow:
    """The sign-up funnel of one window, all countries (within the filter)."""

    window_start_ms: int
    final: bool
    values: dict[str, Value]


@dataclass(frozen=True)
class AnomalyRow:
    """An open anomaly, as the detector last stored it."""

    severity: str
    series: str
    country: str
    device_type: str
    score: float
    observed: float | None
    expected: float | None
    unit: str
    opened_ms: int
    state: str


@dataclass(frozen=True)
class Frame:
    """Everything one refresh of `top` shows."""

    namespace: str
    resolution: str
    where: dict[str, str]
    read_ms: int
    window_start_ms: int | None = None
    window_end_ms: int | None = None
    final: bool = False
    countries: list[CountryRow] = field(default_factory=list)
    total: dict[str, Value] = field(default_factory=dict)
    funnel: list[FunnelRow] = field(default_factory=list)
    anomalies: list[AnomalyRow] = field(default_factory=list)
    health: dict[str, Any] | None = None
    redis_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what `top --format json` prints)."""
        return asdict(self)


def _shown_window(windows: Sequence[StoredWindow], watermark_ms: int) -> tuple[int, int, bool] | None:
    """(start, end, final) of the window to show among windows starting at or before the watermark, newest first."""
    stored = [(w.start_ms, w.end_ms, w.final) for w in windows]
    for window in stored:
        if window[1] <= watermark_ms:
            return window
    return next((w for w in stored if w[2]), stored[0] if stored else None)


def open_anomalies(documents: Sequence[Mapping[str, Any]], where: Mapping[str, str]) -> list[AnomalyRow]:
    """The anomalies not resolved, within the filter (roll-ups over a filtered dimension stay), worst first."""
    rows = []
    for doc in documents:
        if doc.get("state") in CLOSED_STATES:
            continue
        if any(doc.get(dim) not in (value, "all") for dim, value in where.items()):
            continue
        rows.append(
            AnomalyRow(
                severity=str(doc.get("severity", "")),
                series=str(doc.get("series", "")),
                country=str(doc.get("country", "")),
                device_type=str(doc.get("device_type", "")),
                score=float(doc.get("score", 0.0)),
                observed=doc.get("observed"),
                expected=doc.get("expected"),
                unit=str(doc.get("unit", "")),
                opened_ms=int(doc.get("opened_ms", 0)),
                state=str(doc.get("state", "")),
            )
        )
    rows.sort(key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), -abs(a.score), -a.opened_ms))
    return rows[:MAX_ANOMALIES]


def read_frame(client: redis.Redis, namespace: str, resolution: str, where: Mapping[str, str], now_ms: int) -> Frame:
    """Read one frame; a Redis failure comes back as `redis_error`, never as an exception."""
    where = dict(where)
    frame = Frame(namespace, resolution, where, now_ms)
    try:
        return _read(client, frame)
    except redis.RedisError as exc:
        return Frame(namespace, resolution, where, now_ms, redis_error=f"{type(exc).__name__}: {exc}")


def _read(client: redis.Redis, frame: Frame) -> Frame:
    ns, res, where = frame.namespace, frame.resolution, frame.where
    health_doc: bytes | None = client.get(health_key(ns))  # type: ignore[assignment]
    health = orjson.loads(health_doc) if health_doc else None
    anomalies = open_anomalies(recent_anomalies(client, ns), where)
    # The watermark: the flow's own, else the newest a window was written with. Windows far ahead of it exist
    # (sessions timing out), so the candidates are the ones starting before it.
    index = index_key(ns, res)
    newest: list[bytes] = client.zrevrange(index, 0, 0)  # type: ignore[assignment]
    watermark = int((health or {}).get("watermark_ms", -1))
    for window in read_windows(client, ns, res, [int(n) for n in newest]):
        watermark = max(watermark, window.watermark_ms)
    high = watermark if watermark >= 0 else "+inf"
    candidates: list[bytes] = client.zrevrangebyscore(index, high, "-inf", start=0, num=HISTORY_WINDOWS + 4)  # type: ignore[assignment]
    starts = [int(m) for m in candidates or newest]
    shown = _shown_window(read_windows(client, ns, res, starts), watermark)
    if shown is None:
        return Frame(ns, res, where, frame.read_ms, anomalies=anomalies, health=health)
    start, end, final = shown
    history = sorted(s for s in starts if s <= start)[-HISTORY_WINDOWS:]

    def per_country(metric: str, first: int) -> list[Row]:
        return query(client, ns, metric, res, first, start + 1, by=["country"], where=where)

    def overall(metric: str, first: int) -> list[Row]:
        return query(client, ns, metric, res, first, start + 1, where=where)

    countries: dict[str, dict[str, Value]] = {}
    sps_history: dict[str, dict[int, Value]] = {}
    for row in per_country("sps", history[0]):
        sps_history.setdefault(row.dims["country"], {})[row.window_start_ms] = row.value
        if row.window_start_ms == start:
            countries.setdefault(row.dims["country"], {})["sps"] = row.value
    for metric in COUNTRY_METRICS[1:]:
        for row in per_country(metric, start):
            countries.setdefault(row.dims["country"], {})[metric] = row.value
    total = {metric: next((r.value for r in overall(metric, start)), None) for metric in COUNTRY_METRICS}
    funnel_starts = history[-FUNNEL_WINDOWS:]
    funnel_values: dict[int, dict[str, Value]] = {s: {} for s in funnel_starts}
    funnel_final: dict[int, bool] = {}
    for metric in FUNNEL_METRICS:
        for row in overall(metric, funnel_starts[0]):
            funnel_values.setdefault(row.window_start_ms, {})[metric] = row.value
            funnel_final[row.window_start_ms] = row.final
    rows = [
        CountryRow(
            country,
            # A country with traffic but no playback error has no error row: that is a count of 0, not unknown.
            {m: values.get(m, 0 if m == "playback_errors" else None) for m in COUNTRY_METRICS},
            tuple(sps_history.get(country, {}).get(s) for s in history),
        )
        for country, values in sorted(countries.items())
    ]
    funnel = [
        FunnelRow(s, funnel_final.get(s, False), {m: funnel_values[s].get(m) for m in FUNNEL_METRICS})
        for s in sorted(funnel_values, reverse=True)
    ]
    return Frame(ns, res, where, frame.read_ms, start, end, final, rows, total, funnel, anomalies, health)
