"""Everything streampulse exports on `/metrics`, declared in one place.

Names follow `streampulse_<what>_<unit>`; labels are bounded: `country`
(ISO codes seen), `device_type` (6 values), `reason` (the decoder's fixed
set), `event_type` (contract enum), `topic`/`partition` (the configured
topics), `series` (the anomaly detector's 7 series) and `severity`
(warning, critical); the anomaly metrics add `country="all"` and
`device_type="all"` for roll-ups. Titles are never labels, except the top
10 of the newest final window. The catalogue is rendered in docs/metrics.md.

Window aggregates are counters that advance at every publish by what the
windows counted since the previous one, and startup time is a histogram
(flows/window_counters.py): query them with `rate()`/`increase()`, ratios
of summed rates and `histogram_quantile()`, exact for any roll-up. Gauges of
the newest *final* fine window are kept only where a counter cannot serve:
`streampulse_concurrent_streams` (a level, not a count) and
`streampulse_top_title_stream_starts` (titles are too many for labels).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flows.anomaly.events import CLOSED_STATES, Detection
from flows.anomaly.series import SERIES_IDS, SEVERITIES
from flows.window_counters import WindowCounters
from flows.windows.catalog import METRICS
from flows.windows.metric_values import roll_up, value_of
from flows.windows.store import WindowUpdate

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


BY_COUNTRY_DEVICE = ("country", "device_type")


TOP_TITLES = 10


# Gauges of the newest final fine window: (Prometheus name, metric id, help).
WINDOW_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("streampulse_concurrent_streams", "concurrent_streams", "Open sessions at the end of the newest final window"),
)


class PipelineMetrics:
    """The metric objects of one registry (one per process; tests make their own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._newest_final_end_ms: dict[str, int] = {}
        # What each shard of this process last exported as window gauges and title counts (flows/sharding.py).
        self._gauge_cells: dict[int, dict[str, set[tuple[str, str]]]] = {}
        self._shard_titles: dict[int, dict[str, int]] = {}
        self._export_lock = threading.Lock()
        self._emitted_children: dict[tuple[str, bool], Counter] = {}
        # Window values of the newest final fine window, by country and device type.
        self.window_gauges = {
            metric_id: Gauge(name, help_text, ["country", "device_type"], registry=registry)
            for name, metric_id, help_text in WINDOW_GAUGES
        }
        # Every additive aggregate as a counter, startup time as a histogram.
        self.window_counters = WindowCounters(registry)
        self.top_titles = Gauge(
            "streampulse_top_title_stream_starts",
            "Stream starts of the top titles (all countries) in the newest final fine window",
            ["rank", "title_id"],
            registry=registry,
        )
        self.final_window_end = Gauge(
            "streampulse_final_window_end_timestamp_seconds",
            "End of the newest final window, by resolution",
            ["resolution"],
            registry=registry,
        )
        # Pipeline health.
        self.events_consumed = Counter(
            "streampulse_events_consumed",
            "Kafka messages consumed, valid or not",
            ["topic", "partition"],
            registry=registry,
        )
        self.bad_events = Counter(
            "streampulse_bad_events",
            "Messages rejected to the dead-letter topic, by reason",
            ["topic", "reason"],
            registry=registry,
        )
        self.duplicate_events = Counter(
            "streampulse_duplicate_events",
            "Re-delivered events (same event_id) dropped",
            ["topic"],
            registry=registry,
        )
        self.late_events = Counter(
            "streampulse_late_events",
            "Events that arrived after their window closed, by resolution",
            ["resolution"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streampulse_consumer_lag_messages",
            "Messages between the reader's position and the partition's end offset, asked of the broker every 5 s "
            "on a thread of its own (true while the flow is stuck); NaN while the broker does not answer",
            ["topic", "partition"],
            registry=registry,
        )
        self.kafka_reachable = Gauge(
            "streampulse_kafka_reachable",
            "1 if the broker answered the last end-offset query (every 5 s), 0 if not; NaN before the first",
            registry=registry,
        )
        self.kafka_reachable.set(math.nan)
        self.watermark = Gauge(
            "streampulse_watermark_timestamp_seconds",
            "Event-time watermark: the slowest active partition's newest event time",
            registry=registry,
        )
        self.watermark_delay = Gauge(
            "streampulse_watermark_delay_seconds",
            "Wall clock at the scrape minus the watermark: how far behind real time the numbers are (grows while "
            "the flow is stuck); NaN before the first watermark",
            registry=registry,
        )
        self._watermark_s = math.nan
        # Computed when scraped, not when windows are published: a stuck flow publishes nothing, and a value set at
        # the last publish would freeze exactly when it should grow.
        self.watermark_delay.set_function(lambda: max(time.time() - self._watermark_s, 0.0))
        self.keys_held = Gauge(
            "streampulse_open_keys",
            "Per-key state held by a partition reader: open sessions (playback) or open funnels (sign-up)",
            ["topic", "partition"],
            registry=registry,
        )
        self.remembered_event_ids = Gauge(
            "streampulse_remembered_event_ids",
            "Event ids a partition reader remembers to drop re-deliveries (coarse window + allowed lateness)",
            ["topic", "partition"],
            registry=registry,
        )
        self.open_windows = Gauge(
            "streampulse_open_windows", "Windows held open in memory, all resolutions", registry=registry
        )
        self.windows_emitted = Counter(
            "streampulse_windows_emitted",
            "Window writes published, partial or final",
            ["resolution", "state"],
            registry=registry,
        )
        self.redis_write_seconds = Histogram(
            "streampulse_redis_write_seconds",
            "Duration of one pipelined Redis write of window updates",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.redis_write_errors = Counter(
            "streampulse_redis_write_errors",
            "Redis writes that failed and were retried",
            registry=registry,
        )
        self.dead_letters_written = Counter(
            "streampulse_dead_letters_written",
            "Rejected messages delivered to the dead-letter topic",
            registry=registry,
        )
        self.dead_letters_truncated = Counter(
            "streampulse_dead_letters_truncated",
            "Dead letters written truncated (over the dead-letter topic's size limit), by rejection reason",
            ["reason"],
            registry=registry,
        )
        self.dead_letters_undeliverable = Counter(
            "streampulse_dead_letters_undeliverable",
            "Dead letters the broker refused for good (e.g. no write permission), dropped, by Kafka error",
            ["error"],
            registry=registry,
        )

        # Anomaly detection (flows/anomaly/detector.py, docs/anomalies.md).
        self.anomaly_score = Gauge(
            "streampulse_anomaly_score",
            "Current anomaly score of a series: signed z of its most anomalous recent horizon (alarms from 5)",
            ["series", "country", "device_type"],
            registry=registry,
        )
        self.anomalies = Counter(
            "streampulse_anomalies",
            "Anomalies opened, by series and the severity they opened with",
            ["series", "severity"],
            registry=registry,
        )
        # Every series and severity at 0 from the start, so `increase()` sees the first anomaly too (a counter
        # born at 1 has no increase to show).
        for series in SERIES_IDS:
            for severity in SEVERITIES:
                self.anomalies.labels(series, severity)
        self.anomaly_active = Gauge(
            "streampulse_anomaly_active",
            "1 while an anomaly is open on the series (removed when it resolves)",
            ["series", "country", "device_type", "severity"],
            registry=registry,
        )

    def observe_watermark(self, watermark_ms: int) -> None:
        """The window store's watermark after a publish (ignored until the first event sets one)."""
        if watermark_ms >= 0:
            self._watermark_s = watermark_ms / 1000
            self.watermark.set(self._watermark_s)

    def observe_detection(self, detection: Detection) -> None:
        """Export one window's anomaly scores and the anomalies it opened, escalated or resolved."""
        for score in detection.scores:
            self.anomaly_score.labels(score.series, score.country, score.device_type).set(score.score)
        for event in detection.events:
            labels = (event.series, event.country, event.device_type)
            if event.state == "open":
                self.anomalies.labels(event.series, event.severity).inc()
            # One active sample per open anomaly, under its current severity.
            for severity in SEVERITIES:
                with contextlib.suppress(KeyError):
                    self.anomaly_active.remove(*labels, severity)
            if event.state not in CLOSED_STATES:
                self.anomaly_active.labels(*labels, event.severity).set(1)

    def observe_windows(self, updates: Iterable[WindowUpdate], fine_resolution: str, fine_seconds: float) -> None:
        """Advance the window counters by freshly published updates; export the newest final window's gauges."""
        updates = list(updates)
        self.window_counters.observe(updates, fine_resolution)
        newest_final: WindowUpdate | None = None
        advanced: set[str] = set()
        # Counted per publish, not per update: a publish while catching up holds a hundred windows and more.
        emitted: dict[tuple[str, bool], int] = {}
        for update in updates:
            emitted[(update.resolution, update.final)] = emitted.get((update.resolution, update.final), 0) + 1
        for (resolution, final), count in emitted.items():
            self._emitted(resolution, final).inc(count)
        for update in updates:
            if not update.final or update.complete is None:
                continue
            newest_end = self._newest_final_end_ms.get(update.resolution, 0)
            if update.window_end_ms > newest_end:
                self._newest_final_end_ms[update.resolution] = update.window_end_ms
                advanced.add(update.resolution)
            if update.resolution != fine_resolution:
                continue
            if update.window_end_ms >= self._newest_final_end_ms[update.resolution] and (
                newest_final is None or update.window_start_ms > newest_final.window_start_ms
            ):
                newest_final = update
        if newest_final is not None and newest_final.complete is not None:
            with self._export_lock:  # the workers of a process export their shards' cells side by side
                self._export_window(newest_final.shard, newest_final.complete, fine_seconds)
        # The newest final window's end last: a scrape that sees it also sees that window's gauges.
        for resolution in advanced:
            self.final_window_end.labels(resolution).set(self._newest_final_end_ms[resolution] / 1000)

    def _emitted(self, resolution: str, final: bool) -> Counter:
        """The windows-emitted counter's child (labels() validates and locks on every call: kept)."""
        child = self._emitted_children.get((resolution, final))
        if child is None:
            child = self._emitted_children[(resolution, final)] = self.windows_emitted.labels(
                resolution, "final" if final else "partial"
            )
        return child

    def _export_window(self, shard: int, values: Mapping[str, Mapping[tuple[Any, ...], int]], seconds: float) -> None:
        # A shard replaces only its own cells: a (country, device) absent from its newest window loses its old value,
        # and the other shards of the process keep theirs.
        before = self._gauge_cells.get(shard, {})
        now: dict[str, set[tuple[str, str]]] = {}
        for metric_id, gauge in self.window_gauges.items():
            spec = METRICS[metric_id]
            cells = now[metric_id] = set()
            for (country, device), group in roll_up(spec, values, BY_COUNTRY_DEVICE).items():
                value = value_of(spec, group, seconds)
                if value is not None:
                    gauge.labels(country, device).set(value)
                    cells.add((str(country), str(device)))
            for gone in before.get(metric_id, set()) - cells:
                with contextlib.suppress(KeyError):
                    gauge.remove(*gone)
        self._gauge_cells[shard] = now
        # Top titles of the process: each of its shards' newest titles added up (exact when it holds every shard).
        self._shard_titles[shard] = {
            str(title): starts
            for group in roll_up(METRICS["top_titles"], values, ()).values()
            for title, starts in group.detail.items()
        }
        titles: dict[str, int] = {}
        for counts in self._shard_titles.values():
            for title, starts in counts.items():
                titles[title] = titles.get(title, 0) + starts
        self.top_titles.clear()
        ranked = sorted(titles.items(), key=lambda item: (-item[1], item[0]))[:TOP_TITLES]
        for rank, (title, starts) in enumerate(ranked, start=1):
            self.top_titles.labels(str(rank), title).set(starts)


@cache
def pipeline_metrics() -> PipelineMetrics:
    """This process's metrics, on its own registry."""
    return PipelineMetrics(CollectorRegistry(auto_describe=True))
