"""Everything streampulse exports on `/metrics`, declared in one place.

Names follow `streampulse_<what>_<unit>`; labels are bounded: `country`
(ISO codes seen), `device_type` (6 values), `reason` (the decoder's fixed
set), `event_type` (contract enum), `topic`/`partition` (the configured
topics). Titles are never labels. The catalogue is rendered in
docs/metrics.md.

Window values are those of the newest *final* fine window: a partial window
would read as a dip on every scrape. `streampulse_stream_starts_total` adds
each final fine window once, so `rate()` works and totals can be checked.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flows.window_store import WindowUpdate

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PipelineMetrics:
    """The metric objects of one registry (one per process; tests make their own)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._newest_final_end_ms: dict[str, int] = {}
        # Window values, newest final fine window.
        self.stream_starts = Gauge(
            "streampulse_window_stream_starts",
            "Stream starts (play_start) in the newest final fine window",
            ["country", "device_type"],
            registry=registry,
        )
        self.stream_starts_per_second = Gauge(
            "streampulse_stream_starts_per_second",
            "SPS: stream starts per second in the newest final fine window",
            ["country", "device_type"],
            registry=registry,
        )
        self.stream_starts_total = Counter(
            "streampulse_stream_starts",
            "Stream starts counted in final fine windows, each window added once",
            ["country", "device_type"],
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
            "Messages between the last consumed offset and the partition's high watermark",
            ["topic", "partition"],
            registry=registry,
        )
        self.watermark = Gauge(
            "streampulse_watermark_timestamp_seconds",
            "Event-time watermark: the slowest active partition's newest event time",
            registry=registry,
        )
        self.watermark_delay = Gauge(
            "streampulse_watermark_delay_seconds",
            "Wall clock minus the watermark at the last publish: how far behind real time the numbers are",
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

    def observe_windows(self, updates: Iterable[WindowUpdate], fine_resolution: str, fine_seconds: float) -> None:
        """Export the window values of freshly published updates."""
        newest_final: WindowUpdate | None = None
        for update in updates:
            self.windows_emitted.labels(update.resolution, "final" if update.final else "partial").inc()
            if not update.final or update.values is None:
                continue
            newest_end = self._newest_final_end_ms.get(update.resolution, 0)
            if update.window_end_ms > newest_end:
                self._newest_final_end_ms[update.resolution] = update.window_end_ms
                self.final_window_end.labels(update.resolution).set(update.window_end_ms / 1000)
            if update.resolution != fine_resolution:
                continue
            starts = _starts_by_country_device(update)
            for (country, device), count in starts.items():
                self.stream_starts_total.labels(country, device).inc(count)
            if update.window_end_ms >= self._newest_final_end_ms[update.resolution] and (
                newest_final is None or update.window_start_ms > newest_final.window_start_ms
            ):
                newest_final = update
        if newest_final is not None:
            # Clear first so a (country, device) absent from the newest window does not keep an old value.
            self.stream_starts.clear()
            self.stream_starts_per_second.clear()
            for (country, device), count in _starts_by_country_device(newest_final).items():
                self.stream_starts.labels(country, device).set(count)
                self.stream_starts_per_second.labels(country, device).set(count / fine_seconds)


def _starts_by_country_device(update: WindowUpdate) -> dict[tuple[str, str], int]:
    starts: dict[tuple[str, str], int] = {}
    for key, value in (update.values or {}).items():
        if key[0] == "stream_starts":
            country_device = (key[1], key[2])
            starts[country_device] = starts.get(country_device, 0) + value
    return starts


@cache
def pipeline_metrics() -> PipelineMetrics:
    """This process's metrics, on its own registry."""
    return PipelineMetrics(CollectorRegistry(auto_describe=True))


@dataclass
class MetricsServer:
    """The running `/metrics` HTTP endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port actually bound (useful when asked for port 0)."""
        return int(self.server.server_port)

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(host: str, port: int, metrics: PipelineMetrics | None = None) -> MetricsServer:
    """Serve `/metrics` on host:port in a background thread."""
    registry = (metrics or pipeline_metrics()).registry
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
