"""Window aggregates as Prometheus counters and a startup-time histogram, advancing at every publish.

Every additive aggregate of the fine windows becomes a counter that grows, at
each publish (`--publish-interval`), by what the windows counted since the
previous publish. A `WindowUpdate` carries the complete values of the
aggregates that changed in its window, and counts inside a window only grow,
so the growth is the new value minus the one last exported for that
(window, aggregate, dimensions): monotonic, and never from late events or
duplicates (they never enter a window). `sum(increase(...))` over any range
and any labels is then the events counted in it, whatever the scrape
interval. Only the fine resolution is exported (the coarse windows hold the
same events again); what was exported of a window is forgotten once it is
final, so memory follows the open windows. A publish's growth is summed over
its windows first and each counter is incremented once per publish: a
publish while catching up holds a hundred windows and more.

Startup time is a classic histogram whose buckets are the sketch's
(flows/windows/sketch.py) coarsened: a sketch bucket falls in the first
histogram bucket whose bound is at or above the sketch's value for it (its
representative, within 1 % of every startup in it), so the histogram agrees
with `streampulse query`'s percentiles up to the histogram's own bucket
width. `_count` is exact; `_sum` adds the representatives (±1 %).
prometheus_client (0.26) has no native histograms to expose: it can parse
them, but neither its Histogram nor its text exposition produces them.

Each process exports what its own shards counted (a cell of a window is
published by the one shard that owns it, flows/sharding.py), so a sum over
processes is the total, nothing counted twice. A restart starts the
counters at 0 (Prometheus' `rate`/`increase` handle the reset); windows open
at the restart are exported again from 0 by the new process, so an
`increase` across a restart can count them twice.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from flows.windows.catalog import AGGREGATES
from flows.windows.sketch import bucket_value
from flows.windows.store import WindowUpdate

BASE_LABELS = ("country", "device_type")


@dataclass(frozen=True)
class WindowCounter:
    """One exported counter: an aggregate summed to `country`, `device_type` and its own bounded `labels`."""

    name: str
    aggregate: str
    labels: tuple[str, ...]
    help: str
    # From the aggregate's unit to the exported one (milliseconds to seconds).
    scale: float = 1.0


# Names without `_total`: prometheus_client appends it. Label values are bounded by the event contract's enums,
# except `cdn`, `error_code` (a handful in practice, free strings in the contract) and `currency` (ISO 4217).
WINDOW_COUNTERS: tuple[WindowCounter, ...] = (
    WindowCounter("streampulse_play_attempts", "play_attempts", (), "Play attempts (play_attempt)"),
    WindowCounter("streampulse_stream_starts", "stream_starts", ("cdn",), "Stream starts (play_start), by CDN"),
    WindowCounter(
        "streampulse_start_failures", "start_failures", ("error_code",), "Video start failures, by error code"
    ),
    WindowCounter(
        "streampulse_playback_errors", "playback_errors", ("error_code",), "Fatal playback errors, by error code"
    ),
    WindowCounter(
        "streampulse_played_seconds", "played_ms", (), "Watch time: played_ms of heartbeat and play_stop", 0.001
    ),
    WindowCounter("streampulse_rebuffer_seconds", "rebuffer_ms", (), "Time stalled: rebuffer_ms of rebuffer", 0.001),
    WindowCounter("streampulse_rebuffers", "rebuffers", (), "Rebuffer events (stalls)"),
    WindowCounter("streampulse_pauses", "pauses", (), "Pause events"),
    WindowCounter(
        "streampulse_heartbeat_played_seconds",
        "heartbeat_played_ms",
        (),
        "Played time reported by heartbeats (the weights of the average bitrate)",
        0.001,
    ),
    WindowCounter(
        "streampulse_heartbeat_played_bits",
        "bitrate_x_played_ms",
        (),
        "Heartbeat bitrate x played time: / heartbeat played seconds is the average bitrate in bit/s",
    ),
    WindowCounter("streampulse_bitrate_downshifts", "bitrate_downshifts", (), "Switches to a lower bitrate"),
    WindowCounter("streampulse_signups_started", "signups_started", ("channel",), "Sign-ups started, by channel"),
    WindowCounter("streampulse_plans_selected", "plans_selected", ("plan",), "Plans selected in sign-up, by plan"),
    WindowCounter(
        "streampulse_payments_submitted",
        "payments_submitted",
        ("payment_method",),
        "Sign-up payments submitted, by payment method",
    ),
    WindowCounter(
        "streampulse_payment_declines",
        "payment_declines",
        ("payment_method",),
        "Sign-ups failed with payment_declined, by the funnel's payment method",
    ),
    WindowCounter("streampulse_signups_completed", "signups_completed", ("plan",), "Sign-ups completed, by plan"),
    WindowCounter(
        "streampulse_signups_failed", "signups_failed", ("failure_reason",), "Sign-ups failed, by failure reason"
    ),
    WindowCounter(
        "streampulse_new_subscription_value_cents",
        "new_subscription_value_cents",
        ("plan", "currency"),
        "New subscription value: price_cents of completed sign-ups, in hundredths of the currency",
    ),
)

# How many values each label takes: a series per combination with country and device type (docs/metrics.md).
LABEL_VALUES: dict[str, str] = {
    "country": "the ISO 3166-1 codes seen (14 in the load generator)",
    "device_type": "6 (contract enum)",
    "cdn": "the CDNs in use (a free string in the contract; 4 in the load generator)",
    "error_code": "the player's error codes (a free string; 5 start-failure and 4 playback codes in the load generator)",
    "channel": "5 (contract enum)",
    "plan": "4 (contract enum)",
    "payment_method": "4 (contract enum)",
    "failure_reason": "4 (contract enum)",
    "currency": "ISO 4217 codes in use, about one per country",
}

STARTUP_SKETCH = "startup_ms_sketch"

# Histogram bounds in ms: dense where startups are (medians 1.4-2.5 s by device, p90 3-5 s), sparse in the tail.
STARTUP_BUCKETS_MS: tuple[int, ...] = (
    250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 3500, 4000, 4500, 5000,
    6000, 7000, 8000, 10000, 15000, 20000, 30000, 60000,
)  # fmt: skip


def _positions(aggregate: str, labels: tuple[str, ...]) -> tuple[int, ...]:
    dims = AGGREGATES[aggregate].dims
    return tuple(dims.index(d) for d in (*BASE_LABELS, *labels))


class StartupHistogram(Collector):
    """`streampulse_startup_seconds` by country and device type, fed sketch-bucket counts."""

    name = "streampulse_startup_seconds"
    labelnames = BASE_LABELS
    documentation = (
        "Startup time (startup_ms of play_start): the startup sketch coarsened to these buckets, sum within 1 %"
    )

    def __init__(self) -> None:
        # (country, device_type) -> [count per bucket (+Inf last), sum of seconds]
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._bucket_of_sketch: dict[int, int] = {}
        self._lock = threading.Lock()
        # Read by sinks/docs.py, like prometheus_client's own metrics.
        self._name, self._labelnames = self.name, self.labelnames

    def _bucket(self, sketch_bucket: int) -> int:
        index = self._bucket_of_sketch.get(sketch_bucket)
        if index is None:
            value_ms = bucket_value(sketch_bucket)
            index = self._bucket_of_sketch[sketch_bucket] = bisect.bisect_left(STARTUP_BUCKETS_MS, value_ms)
        return index

    def add(self, growth: Mapping[tuple[str, ...], Mapping[int, int]]) -> None:
        """Add sketch-bucket counts, per (country, device_type)."""
        with self._lock:
            for labels, buckets in growth.items():
                counts, total = self._series.setdefault(labels, ([0] * (len(STARTUP_BUCKETS_MS) + 1), [0.0]))
                for sketch_bucket, n in buckets.items():
                    counts[self._bucket(sketch_bucket)] += n
                    total[0] += n * bucket_value(sketch_bucket) / 1000

    def collect(self) -> Iterable[Metric]:
        """The histogram, cumulative per bucket as Prometheus wants it."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(labels, list(counts), total[0]) for labels, (counts, total) in self._series.items()]
        bounds = [*(f"{ms / 1000:g}" for ms in STARTUP_BUCKETS_MS), "+Inf"]
        for labels, counts, total in series:
            cumulative, running = [], 0
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            family.add_metric(list(labels), cumulative, total)
        return [family]


class WindowCounters:
    """The counters and the startup histogram, advanced from published fine-window updates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counters = [
            (spec, Counter(spec.name, spec.help, [*BASE_LABELS, *spec.labels], registry=registry))
            for spec in WINDOW_COUNTERS
        ]
        self._by_aggregate = {spec.aggregate: (spec, counter) for spec, counter in self._counters}
        self._positions = {spec.aggregate: _positions(spec.aggregate, spec.labels) for spec in WINDOW_COUNTERS}
        self._sketch_positions = _positions(STARTUP_SKETCH, ())
        self.startup = StartupHistogram()
        registry.register(self.startup)
        # (shard, window start) -> aggregate -> dims -> the value last exported; fine windows still open only. Per
        # shard: the workers of a process publish their own cells of the same window.
        self._exported: dict[tuple[int, int], dict[str, Mapping[tuple[Any, ...], int]]] = {}
        self._lock = threading.Lock()
        # (aggregate, label values) -> the counter's child for them.
        self._children: dict[tuple[str, tuple[str, ...]], Counter] = {}
        # (aggregate, dims) -> (aggregate, label values), made once, not per window and publish (dims are bounded as
        # the labels are: the contract enums and the other labels of docs/metrics.md).
        self._labels_of: dict[tuple[str, tuple[Any, ...]], tuple[str, tuple[str, ...]]] = {}

    def observe(self, updates: Iterable[WindowUpdate], fine_resolution: str) -> None:
        """Advance by what the fine windows in `updates` counted since they were last published.

        One pass per publish: the growth of every window is summed per (aggregate, labels) first, and each
        counter child is incremented once, not once per window that grew (a publish while catching up holds
        a hundred windows and more, and every shard's process pays per increment whatever its share of cells).
        """
        growth: dict[tuple[str, tuple[str, ...]], int] = {}
        startup: dict[tuple[str, ...], dict[int, int]] = {}
        with self._lock:
            for update in updates:
                if update.resolution == fine_resolution:
                    self._advance(update, growth, startup)
            if startup:
                self.startup.add(startup)
            children, by_aggregate = self._children, self._by_aggregate
            for key, grown in growth.items():
                # prometheus_client's labels() validates and locks on every call: each label set's child is kept.
                spec, counter = by_aggregate[key[0]]
                child = children.get(key)
                if child is None:
                    child = children[key] = counter.labels(*key[1])
                child.inc(grown * spec.scale)

    def _advance(
        self,
        update: WindowUpdate,
        growth: dict[tuple[str, tuple[str, ...]], int],
        startup: dict[tuple[str, ...], dict[int, int]],
    ) -> None:
        window = (update.shard, update.window_start_ms)
        exported = self._exported.setdefault(window, {})
        for aggregate, values in update.changes.items():
            if aggregate == STARTUP_SKETCH:
                self._sketch_growth(values, exported.get(aggregate, {}), startup)
            elif aggregate in self._by_aggregate:
                self._add_growth(aggregate, values, exported.get(aggregate, {}), growth)
            else:
                continue
            # The update's values are a copy made for the writers: safe to keep as they are.
            exported[aggregate] = values
        if update.final:
            del self._exported[window]

    def _add_growth(
        self,
        aggregate: str,
        values: Mapping[tuple[Any, ...], int],
        before: Mapping[tuple[Any, ...], int],
        growth: dict[tuple[str, tuple[str, ...]], int],
    ) -> None:
        labels_of = self._labels_of
        positions = self._positions[aggregate]
        for dims, value in values.items():
            # Counts inside a window only grow; a shrink would be a bug upstream, and a counter cannot go down.
            grown = value - before.get(dims, 0)
            if grown > 0:
                key = labels_of.get((aggregate, dims))
                if key is None:
                    key = labels_of[(aggregate, dims)] = (aggregate, tuple(str(dims[i]) for i in positions))
                growth[key] = growth.get(key, 0) + grown

    def _sketch_growth(
        self,
        values: Mapping[tuple[Any, ...], int],
        before: Mapping[tuple[Any, ...], int],
        growth: dict[tuple[str, ...], dict[int, int]],
    ) -> None:
        country, device = self._sketch_positions
        for dims, value in values.items():
            grown = value - before.get(dims, 0)
            if grown > 0:
                buckets = growth.setdefault((str(dims[country]), str(dims[device])), {})
                sketch_bucket = int(dims[-1])
                buckets[sketch_bucket] = buckets.get(sketch_bucket, 0) + grown

    @property
    def windows_remembered(self) -> int:
        """Fine windows whose exported values are remembered (the open ones that were published)."""
        return len(self._exported)
