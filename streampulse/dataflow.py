"""The streampulse dataflow: Kafka partitions -> sharded window store -> Redis, /metrics and dead letters.

    playback/sign-up topics ──► KafkaEventSource (decode + pre-aggregate per batch)
                                   │ BatchSummary per batch
                                   ├──► its rejects ──► DeadLetterSink      (in the process that read them)
                                   ▼ the summary without them (rejects counted by reason)
                            ShardRouter.split (on the reader's worker): each shard's cells + every progress
                                   ▼ keyed by shard (one per worker of the cluster)
                            WindowLogic (a shard's store: merge, watermark, partial/final)
                                   │ WindowUpdate, ShardProgress       └─ PipelineHealth (shard 0) ──► HealthRedisSink
                                   ├──► RedisWindowSink
                                   ├──► PrometheusWindowSink
                                   └──► final fine windows ──► per-shard detector + roll-up step (flows/anomaly/steps.py)
                                           ├──► anomalies topic, Redis, /metrics (sinks/anomaly_sink.py)
                                           └──► (live) their state once per interval ──► Redis (sinks/detector_state.py)

Every worker owns one shard of the window state (flows/sharding.py says which
cells and why): the store, its Redis writes, its /metrics and its cells'
anomaly series all run on that worker, so capacity grows with the cluster.
Every shard receives every partition's progress and so closes each window at
the same watermark. Rejected messages are split off before anything crosses
workers: their bytes stay in the process that read them.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.steps import StateSaving, anomaly_events, detect_anomalies
from flows.anomaly.warm_start import SavedState, WarmStart
from flows.fold.partition_aggregator import Folder
from flows.fold.playback import PlaybackFolder, StreamStartsFolder
from flows.fold.signup import IgnoreFolder, SignupFolder
from flows.health import pipeline_metrics
from flows.partials import BatchSummary, DeadLetter
from flows.pipeline_health import HealthTracker, PipelineHealth
from flows.sharding import ShardRouter
from flows.sources.kafka import KafkaEventSource
from flows.sources.reader_config import ReaderConfig
from flows.windows.store import ShardProgress, WindowStore, WindowUpdate
from settings.kafka import KafkaSettings
from settings.redis import RedisSettings
from sinks.anomaly_sink import AnomalyKafkaSink, AnomalyPrometheusSink, AnomalyRedisSink
from sinks.base import process_part
from sinks.dead_letter import DeadLetterSink
from sinks.detector_state import DetectorStateRedisSink
from sinks.health_sink import HealthRedisSink
from sinks.prometheus_sink import PrometheusWindowSink
from sinks.redis_sink import RedisWindowSink


@dataclass(frozen=True)
class FlowSettings:
    """Everything the dataflow needs, validated before it is built."""

    kafka: KafkaSettings
    redis: RedisSettings
    reader: ReaderConfig
    redis_ttl_s: int = 7 * 24 * 3600
    # Window-state shards: one per worker of the whole cluster (processes x --workers), flows/sharding.py.
    shards: int = 1
    # This process's index in the cluster (0 alone): its dead letters are written by its own producer.
    process: int = 0
    # Live: the anomaly detectors leave their state every this much event time (None: never), the newest kept.
    detector_state_interval_ms: int | None = None
    detector_states_kept: int = 24
    # Replay: the live state its detectors start from (None: cold).
    warm_start: WarmStart | None = None


@dataclass(frozen=True)
class FlowSinks:
    """Where the dataflow's streams end: `flow_sinks(settings)` for the real ones, a test may give its own."""

    # Each batch's letters, keyed to stay in the process that read them (sinks/base.py, `process_part`).
    dead_letters: Sink[tuple[str, list[DeadLetter]]]
    health: Sink[PipelineHealth]
    windows_redis: Sink[WindowUpdate | ShardProgress]
    windows_prometheus: Sink[WindowUpdate]
    anomalies_kafka: Sink[AnomalyEvent]
    anomalies_redis: Sink[AnomalyEvent]
    anomalies_prometheus: Sink[Detection]
    detector_states: Sink[SavedState]


def flow_sinks(settings: FlowSettings) -> FlowSinks:
    """The sinks of a real run (each connects to its service only when a worker builds it)."""
    kafka, redis_settings, ttl_s = settings.kafka, settings.redis, settings.redis_ttl_s
    return FlowSinks(
        dead_letters=DeadLetterSink(kafka, settings.process),
        health=HealthRedisSink(redis_settings, ttl_s),
        windows_redis=RedisWindowSink(redis_settings, ttl_s),
        windows_prometheus=PrometheusWindowSink(settings.reader.windows),
        anomalies_kafka=AnomalyKafkaSink(kafka, kafka.anomalies_topic),
        anomalies_redis=AnomalyRedisSink(redis_settings, ttl_s),
        anomalies_prometheus=AnomalyPrometheusSink(),
        detector_states=DetectorStateRedisSink(redis_settings, ttl_s, settings.detector_states_kept),
    )


# What the window step emits: window updates, then the shard's progress and (shard 0) the pipeline-health document.
WindowOutput = WindowUpdate | ShardProgress | PipelineHealth


class WindowLogic(StatefulBatchLogic[BatchSummary, WindowOutput, WindowStore | bytes]):
    """One shard's window store: merges its summaries and publishes it (and the health) every publish interval."""

    def __init__(
        self, reader: ReaderConfig, partitions: list[str], shards: int, resume: WindowStore | bytes | None
    ) -> None:
        restored: WindowStore | None = (
            # Our own snapshot, from our own recovery store.
            pickle.loads(resume) if isinstance(resume, bytes) else resume  # noqa: S301
        )
        self._store: WindowStore = (
            restored
            if restored is not None
            else WindowStore(reader.windows, partitions, reader.session_timeout_ms, shards=shards)
        )
        self._store.expect(partitions)
        self._store.session_timeout_ms = reader.session_timeout_ms  # a restart may change it
        self._interval = timedelta(milliseconds=reader.windows.publish_interval_ms)
        self._exit_at_end = reader.exit_at_end
        self._next_publish = datetime.now(UTC) + self._interval
        self._metrics = pipeline_metrics()
        # Late events already on the counter (a restored store's are not counted again by this process).
        self._late_reported = dict(self._store.late_by_resolution)
        self._health = HealthTracker(time.time_ns() // 1_000_000, self._store.late_events)

    def on_batch(self, values: list[BatchSummary]) -> tuple[list[WindowOutput], bool]:
        store = self._store
        for summary in values:
            store.shard = summary.shard  # the shard this key is: every summary it gets says so
            store.merge(summary)
            self._health.observe(summary)
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[WindowOutput], bool]:
        self._next_publish = datetime.now(UTC) + self._interval
        return self._published(self._store.publish()), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[WindowOutput], bool]:
        if self._exit_at_end:
            return self._published(self._store.finish()), StatefulBatchLogic.RETAIN
        # Stopped while live: windows stay partial; a restart resumes them.
        return self._published(self._store.publish()), StatefulBatchLogic.RETAIN

    def _published(self, updates: list[WindowUpdate]) -> list[WindowOutput]:
        store, metrics = self._store, self._metrics
        outputs: list[WindowOutput] = [*updates, store.progress()]
        for resolution, total in store.late_by_resolution.items():
            if total > self._late_reported.get(resolution, 0):
                metrics.late_events.labels(resolution).inc(total - self._late_reported.get(resolution, 0))
                self._late_reported[resolution] = total
        if store.shard != 0:
            return outputs
        # Shard 0 gets every batch's progress and health figures (flows/sharding.py): it speaks for the pipeline.
        metrics.observe_watermark(store.watermark_ms)
        metrics.open_windows.set(store.open_windows)
        health = self._health.document(
            time.time_ns() // 1_000_000, store.watermark_ms, store.late_events, store.duplicates, updates
        )
        return [*outputs, health]

    def notify_at(self) -> datetime | None:
        return self._next_publish

    def snapshot(self) -> bytes:
        # Pickled now: the snapshot must not change with the store, and pickle copies in C where deepcopy works
        # in Python (19 % of a 4-process run's busiest process went to deepcopy). Earlier snapshots (a
        # WindowStore) still resume.
        return pickle.dumps(self._store, pickle.HIGHEST_PROTOCOL)


def _folders(reader: ReaderConfig) -> dict[str, Callable[[], Folder]]:
    if reader.metric_set == "stream_starts":
        return {"playback": StreamStartsFolder, "signup": IgnoreFolder}
    return {
        "playback": lambda: PlaybackFolder(reader.windows, reader.session_timeout_ms),
        "signup": lambda: SignupFolder(reader.signup_timeout_ms),
    }


def _is_health(item: WindowOutput) -> TypeGuard[PipelineHealth]:
    return isinstance(item, PipelineHealth)


def _is_update(item: WindowUpdate | ShardProgress) -> TypeGuard[WindowUpdate]:
    return isinstance(item, WindowUpdate)


def _as_window_output(item: WindowOutput) -> WindowUpdate | ShardProgress:
    assert not isinstance(item, PipelineHealth)  # the branch's other side holds the health documents
    return item


# Makes the dataflow's input from (topic -> family, family -> folder factory, reader settings).
SourceFactory = Callable[
    [Mapping[str, str], Mapping[str, Callable[[], Folder]], ReaderConfig], FixedPartitionedSource[BatchSummary, Any]
]


def build_dataflow(
    settings: FlowSettings, source_factory: SourceFactory | None = None, sinks: FlowSinks | None = None
) -> Dataflow:
    """The live/replay dataflow for the configured topics: from Kafka, or from `source_factory`'s source."""
    kafka, reader = settings.kafka, settings.reader
    sinks = sinks or flow_sinks(settings)
    topics = {kafka.playback_topic: "playback", kafka.signup_topic: "signup"}
    if source_factory is None:
        source: FixedPartitionedSource[BatchSummary, Any] = KafkaEventSource(
            kafka, topics=topics, folders=_folders(reader), config=reader
        )
    else:
        source = source_factory(topics, _folders(reader), reader)
    partitions = source.list_parts()
    # A replay writes to no Kafka topic: the live run has dead-lettered its bad input and published its anomalies.
    live = reader.replay is None
    flow = Dataflow("streampulse")
    summaries = op.input("kafka_in", flow, source)
    # Rejects are their own stream from here, keyed to this process: no step between the input and the
    # dead-letter sink moves data between processes, so a letter is written by the process that read its message.
    # Only their counts go on.
    if live:
        here = process_part(settings.process)
        rejects = op.filter_map("rejects", summaries, lambda s: (here, s.rejects) if s.rejects else None)
        op.output("dead_letter_out", rejects, sinks.dead_letters)
    counted = op.map("rejects_apart", summaries, BatchSummary.without_rejects)
    router = ShardRouter(settings.shards)
    # Split on the reader's worker: only each shard's own cells (and every partition's progress) travel.
    keyed = op.flat_map("by_shard", counted, router.split)
    shards = settings.shards
    published = op.stateful_batch("windows", keyed, lambda resume: WindowLogic(reader, partitions, shards, resume))
    outputs = op.branch("health_apart", op.map("drop_key", published, lambda key_item: key_item[1]), _is_health)
    op.output("health_out", outputs.trues, sinks.health)
    window_outputs = op.map("windows_only", outputs.falses, _as_window_output)
    replay = reader.replay
    if replay is not None:
        # Only windows wholly inside the range hold all their events (flows/sources/replay_range.py).
        window_outputs = op.filter(
            "replay_range",
            window_outputs,
            lambda u: not isinstance(u, WindowUpdate) or replay.inside(u.window_start_ms, u.window_end_ms),
        )
    op.output("redis_out", window_outputs, sinks.windows_redis)
    plain = op.filter_map("updates_only", window_outputs, lambda item: item if _is_update(item) else None)
    op.output("prometheus_out", plain, sinks.windows_prometheus)
    if reader.metric_set == "all":  # the stream-starts-only benchmark configuration has nothing to detect on
        interval = settings.detector_state_interval_ms
        saving = StateSaving(interval, shards) if live and interval else None
        detector = detect_anomalies(
            window_outputs, reader.windows, router.keys, saving=saving, warm=None if live else settings.warm_start
        )
        detections = detector.detections
        events = anomaly_events(detections)
        if live:
            op.output("anomalies_kafka_out", events, sinks.anomalies_kafka)
            op.output("detector_states_out", detector.states, sinks.detector_states)
        op.output("anomalies_redis_out", events, sinks.anomalies_redis)
        op.output("anomalies_prometheus_out", detections, sinks.anomalies_prometheus)
    return flow
