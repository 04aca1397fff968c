"""Freshness under live load: from producing an event to seeing it counted, in Redis and on /metrics.

The load generator runs in realtime mode at a steady rate (flat, no diurnal
curve) into fresh topics while `streampulse run` (live: no --exit-at-end,
all metrics, 1 process) consumes them. After a warm-up, marker events are
produced: `play_start`s stamped with the wall clock as event time, in a
country of their own (`ZZ`), round-robin over the partitions, one every
`interval` seconds, each flushed alone. The time a marker is produced is
taken right before it is handed to the producer.

- Redis (partial aggregates): a poller reads the marker's window the way a
  user does (sinks.redis_query.query, the code behind `streampulse query`)
  every few milliseconds; the k-th marker of a window is visible once that
  window's `stream_starts` for ZZ reaches k. Delay = visible - produced.
- /metrics (counters): `streampulse_stream_starts_total` advances at every
  publish (1 s) by what the windows counted, partial or final; each marker
  has a `cdn` of its own, so it is visible once its series
  `{country="ZZ", device_type="tv", cdn="m<i>"}` reads 1, polled every
  0.1 s. `streampulse_watermark_delay_seconds` (wall clock minus the
  watermark, the flow's own freshness gauge) is sampled at each scrape. (One
  series per marker is the bench's doing: real CDN values are a handful.)

The rate the load generator really held is measured from the topics' end
offsets over the marker period, and reported next to the asked one.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.common import PYTHON, peak_rss_bytes, say, start
from bench.contenders import Target
from bench.stack import create_topics, delete_topics
from sinks.redis_query import query
from streampulse.processes import ManagedProcess, free_port, port_open

MARKER_COUNTRY = "ZZ"
FINE_MS = 10_000
POLL_S = 0.005


@dataclass
class Marker:
    """One marker event: when it was produced, and when it was seen."""

    produced: float
    window_ms: int
    cdn: str  # its own dimension value, so that it is seen in Redis one by one
    seen_redis: float | None = None
    seen_metrics: float | None = None


@dataclass
class FreshnessResult:
    """Delays in milliseconds and what the load really was."""

    rate_asked: float
    rate_held: float
    markers: int
    redis_ms: list[float] = field(default_factory=list)
    metrics_ms: list[float] = field(default_factory=list)
    watermark_delay_s: list[float] = field(default_factory=list)
    max_lag: float = 0.0
    peak_rss_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """For the JSON results."""
        return {
            "rate_asked_eps": self.rate_asked,
            "rate_held_eps": round(self.rate_held),
            "markers": self.markers,
            "markers_seen_redis": len(self.redis_ms),
            "markers_seen_metrics": len(self.metrics_ms),
            "redis_partial_p50_ms": _pct(self.redis_ms, 0.5),
            "redis_partial_p99_ms": _pct(self.redis_ms, 0.99),
            "redis_partial_max_ms": round(max(self.redis_ms), 1) if self.redis_ms else None,
            "metrics_counter_p50_ms": _pct(self.metrics_ms, 0.5),
            "metrics_counter_p99_ms": _pct(self.metrics_ms, 0.99),
            "metrics_counter_max_ms": round(max(self.metrics_ms), 1) if self.metrics_ms else None,
            "watermark_delay_p50_s": _pct(self.watermark_delay_s, 0.5, 2),
            "watermark_delay_p99_s": _pct(self.watermark_delay_s, 0.99, 2),
            "max_consumer_lag_messages": self.max_lag,
            "peak_rss_mb": round(self.peak_rss_bytes / 1e6, 1),
        }


def _pct(values: list[float], q: float, digits: int = 1) -> float | None:
    """The q-quantile (nearest rank), None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], digits)


def _marker_event(i: int, now_ms: int, run: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"marker-{run}-{i}",
            "event_type": "play_start",
            "event_time_ms": now_ms,
            "country": MARKER_COUNTRY,
            "device_type": "tv",
            "schema_version": 1,
            "session_id": f"marker-{run}-{i}",
            "account_id": "bench",
            "title_id": "bench",
            "startup_ms": 1000,
            "cdn": f"m{i}",
        }
    )


def _end_offsets(bootstrap: str, topics: list[str]) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
    try:
        total = 0
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                total += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return total
    finally:
        consumer.close()


def _scrape(port: int) -> tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """When the page was received (what it shows was there by then: parsing it takes a while), and its samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    received = time.time()
    return received, {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Watchers:
    """Background pollers of Redis and /metrics that stamp markers as they become visible."""

    def __init__(self, redis_url: str, namespace: str, metrics_port: int, markers: list[Marker]) -> None:
        self._client: Any = redis.Redis.from_url(redis_url)
        self._namespace = namespace
        self._port = metrics_port
        self._markers = markers
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.watermark_delay_s: list[float] = []
        self.max_lag = 0.0
        self._threads = [
            threading.Thread(target=self._poll_redis, daemon=True),
            threading.Thread(target=self._poll_metrics, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._client.close()

    def add(self, marker: Marker) -> None:
        with self._lock:
            self._markers.append(marker)

    def _pending(self, attribute: str) -> list[Marker]:
        with self._lock:
            return [m for m in self._markers if getattr(m, attribute) is None]

    def _poll_redis(self) -> None:
        while not self._stop.is_set():
            pending = self._pending("seen_redis")
            for window in sorted({m.window_ms for m in pending}):
                rows = query(
                    self._client,
                    self._namespace,
                    "stream_starts",
                    "10s",
                    window,
                    window + 1,
                    by=("cdn",),
                    where={"country": MARKER_COUNTRY},
                )
                seen_at = time.time()
                counted = {r.dims["cdn"] for r in rows if r.value}
                for marker in pending:
                    if marker.window_ms == window and marker.cdn in counted:
                        marker.seen_redis = seen_at
            time.sleep(POLL_S)

    def _poll_metrics(self) -> None:
        while not self._stop.is_set():
            try:
                seen_at, samples = _scrape(self._port)
            except OSError:
                time.sleep(0.1)
                continue
            delay = samples.get(("streampulse_watermark_delay_seconds", ()))
            if delay is not None and delay > 0:
                self.watermark_delay_s.append(delay)
            lag = sum(v for (name, _labels), v in samples.items() if name == "streampulse_consumer_lag_messages")
            self.max_lag = max(self.max_lag, lag)
            for marker in self._pending("seen_metrics"):
                labels = (("cdn", marker.cdn), ("country", MARKER_COUNTRY), ("device_type", "tv"))
                if samples.get(("streampulse_stream_starts_total", labels), 0.0) >= 1:
                    marker.seen_metrics = seen_at
            time.sleep(0.1)


def _warm_up(bootstrap: str, topics: list[str], rate: float, minimum_s: float, processes: list[ManagedProcess]) -> None:
    """Wait `minimum_s`, then until the topics grow at the asked rate (±15 %) twice in a row, at most 90 s.

    The load generator first builds the sessions already playing (warm start) and then catches up
    with the wall clock in a burst; markers produced during that burst would measure the burst.
    """
    started = time.time()
    steady = 0
    last_offsets, last_at = _end_offsets(bootstrap, topics), time.time()
    while time.time() - started < 90:
        time.sleep(2.0)
        for process in processes:
            if not process.alive():
                raise RuntimeError(f"freshness: {process.name} died during warm-up:\n{process.log_tail()}")
        offsets, at = _end_offsets(bootstrap, topics), time.time()
        held = (offsets - last_offsets) / (at - last_at)
        last_offsets, last_at = offsets, at
        steady = steady + 1 if abs(held - rate) <= 0.15 * rate else 0
        if steady >= 2 and time.time() - started >= minimum_s:
            return
    say(f"freshness: the load did not settle at {rate:,.0f} events/s within 90 s; measuring anyway")


def measure_freshness(
    target: Target,
    rate: float,
    partitions: int,
    warmup_s: float,
    markers_s: float,
    interval_s: float = 0.1,
    drain_s: float = 50.0,
) -> FreshnessResult:
    """Run the live flow under steady load and time markers to Redis (partial windows) and /metrics (counters)."""
    run = uuid.uuid4().hex[:8]
    playback, signup = f"bench-live-playback-{run}", f"bench-live-signup-{run}"
    namespace = f"bench-live-{run}"
    create_topics(target.bootstrap, {playback: partitions, signup: partitions})
    metrics_port = free_port()
    connection = ["--kafka-bootstrap", target.bootstrap, "--playback-topic", playback, "--signup-topic", signup]
    flow = start(
        "freshness-streampulse",
        [
            *(PYTHON, "-m", "streampulse.cli", "run", *connection, "--dead-letter-topic", target.dead_letter_topic),
            *("--redis-url", target.redis_url, "--namespace", namespace, "--metrics-port", str(metrics_port)),
        ],
        target.work_dir / "freshness-streampulse.log",
    )
    loadgen = None
    watchers: _Watchers | None = None
    try:
        flow.wait_until(lambda: port_open("127.0.0.1", metrics_port), 60, "/metrics answered")
        say(f"freshness: load generator at {rate:,.0f} events/s (realtime, flat), warming up")
        loadgen = start(
            "freshness-loadgen",
            [
                PYTHON,
                "-m",
                "streampulse.cli",
                "loadgen",
                "--mode",
                "realtime",
                "--rate",
                str(rate),
                "--flat",
                *connection,
            ],
            target.work_dir / "freshness-loadgen.log",
        )
        _warm_up(target.bootstrap, [playback, signup], rate, warmup_s, [loadgen, flow])
        markers: list[Marker] = []
        watchers = _Watchers(target.redis_url, namespace, metrics_port, markers)
        watchers.start()
        producer = Producer({"bootstrap.servers": target.bootstrap, "linger.ms": 0})
        offsets_before, t_before = _end_offsets(target.bootstrap, [playback, signup]), time.time()
        n = int(markers_s / interval_s)
        say(f"freshness: {n} markers over {markers_s:.0f} s")
        next_at = time.time()
        for i in range(n):
            time.sleep(max(0.0, next_at - time.time()))
            next_at += interval_s
            produced = time.time()
            now_ms = int(produced * 1000)
            window = now_ms - now_ms % FINE_MS
            producer.produce(playback, _marker_event(i, now_ms, run), f"marker-{i}".encode(), partition=i % partitions)
            producer.poll(0)
            watchers.add(Marker(produced, window, f"m{i}"))
        producer.flush(30)
        offsets_after, t_after = _end_offsets(target.bootstrap, [playback, signup]), time.time()
        rate_held = (offsets_after - offsets_before - n) / (t_after - t_before)
        say(f"freshness: load held {rate_held:,.0f} events/s; waiting up to {drain_s:.0f} s for the last markers")
        deadline = time.time() + drain_s
        while time.time() < deadline and any(m.seen_metrics is None or m.seen_redis is None for m in markers):
            time.sleep(0.5)
        rss = peak_rss_bytes(flow.popen.pid)
        watchers.stop()
        result = FreshnessResult(rate, rate_held, len(markers), peak_rss_bytes=rss)
        result.watermark_delay_s = watchers.watermark_delay_s
        result.max_lag = watchers.max_lag
        watchers = None
        result.redis_ms = [(m.seen_redis - m.produced) * 1000 for m in markers if m.seen_redis is not None]
        result.metrics_ms = [(m.seen_metrics - m.produced) * 1000 for m in markers if m.seen_metrics is not None]
        return result
    finally:
        if watchers is not None:
            watchers.stop()
        if loadgen is not None:
            loadgen.stop(grace_s=5)
        flow.stop(grace_s=10)
        delete_topics(target.bootstrap, [playback, signup])


def summary_line(result: FreshnessResult) -> str:
    """One progress line of the result."""
    d = result.as_dict()
    return (
        f"freshness: Redis partial p50 {d['redis_partial_p50_ms']} ms p99 {d['redis_partial_p99_ms']} ms; "
        f"/metrics counter p50 {d['metrics_counter_p50_ms']} ms p99 {d['metrics_counter_p99_ms']} ms; "
        f"watermark delay p50 {d['watermark_delay_p50_s']} s; load {d['rate_held_eps']:,} events/s"
    )
