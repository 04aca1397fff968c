"""Where anomalies go: the Kafka anomalies topic, Redis (recent anomalies), and /metrics.

Every event of an anomaly's life (`open`, `escalated`, `resolved`; see
flows/anomaly/detector.py `AnomalyEvent`) is one JSON message on the
anomalies topic, keyed by `series:country:device_type` so one series' events
stay in order on one partition. Redis keeps each anomaly's latest state under
the namespace (layout in sinks/redis_layout.py): absolute writes, so a retry,
restart or replay writes the same thing again. /metrics shows the current
scores and open anomalies (sinks/prometheus.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

from connect.kafka_log import with_logging
from flows.anomaly.events import AnomalyEvent, Detection
from flows.health import PipelineMetrics, pipeline_metrics
from settings.kafka import KafkaSettings
from settings.redis import RedisSettings
from sinks.redis_layout import anomalies_key, anomaly_key
from sinks.redis_sink import RETRY_INITIAL_S, RETRY_MAX_S, connect

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0
# How many anomalies the recent set keeps (newest by opening time); older ones also expire with the TTL.
RECENT_ANOMALIES = 1000


def anomaly_message(event: AnomalyEvent) -> tuple[bytes, bytes]:
    """The Kafka key and value of an anomaly event."""
    return event.series_key.encode(), orjson.dumps(event.to_dict())


class _KafkaPartition(StatelessSinkPartition[AnomalyEvent]):
    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        # Polled only when it writes: its connection errors would come late, the readers tell of outages.
        config = with_logging(settings.client_config(), settings.bootstrap, outages=False)
        # Idempotence keeps librdkafka's own retries from writing an event twice.
        config.update({"enable.idempotence": True, "linger.ms": 20})
        self._producer = Producer(config)
        self._topic = topic
        self._failed: list[str] = []

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(str(err))

    def write_batch(self, items: list[AnomalyEvent]) -> None:
        for event in items:
            key, value = anomaly_message(event)
            self._producer.produce(self._topic, value=value, key=key, on_delivery=self._delivered)
            self._producer.poll(0)
        remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or self._failed:
            errors, self._failed = self._failed, []
            # Raising stops the flow before this window's detector state is snapshotted: a restart
            # detects the anomaly again rather than losing it.
            raise RuntimeError(
                f"could not write {remaining + len(errors)} anomaly event(s) to the topic {self._topic!r}: "
                f"{errors[:3]}. Check that the topic exists and the broker is reachable."
            )

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)


class AnomalyKafkaSink(DynamicSink[AnomalyEvent]):
    """Bytewax sink producing anomaly events to the anomalies topic."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self._settings = settings
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaPartition:
        """One producer per worker."""
        return _KafkaPartition(self._settings, self._topic)


class RedisAnomalyWriter:
    """Writes each anomaly's latest state and the recent-anomalies index, retrying until Redis takes them."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int, metrics: PipelineMetrics | None = None) -> None:
        self._client = client
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._metrics = metrics or pipeline_metrics()

    def write(self, events: Sequence[AnomalyEvent]) -> None:
        """Write `events` (in order: a later state of the same anomaly wins), retrying while Redis is down."""
        if not events:
            return
        delay = RETRY_INITIAL_S
        failing_since: float | None = None
        while True:
            try:
                self._write_once(events)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                self._metrics.redis_write_errors.inc()
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("Redis write of anomalies failed (%s); retrying until it is reachable again", exc)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if failing_since is not None:
                log.warning("Redis writes of anomalies resumed after %.1f s", time.monotonic() - failing_since)
            return

    def _write_once(self, events: Sequence[AnomalyEvent]) -> None:
        ns, ttl = self._namespace, self._ttl_s
        index = anomalies_key(ns)
        pipe = self._client.pipeline(transaction=True)
        for event in events:
            pipe.set(anomaly_key(ns, event.anomaly_id), orjson.dumps(event.to_dict()), ex=ttl)
            pipe.zadd(index, {event.anomaly_id: event.opened_ms})
        # Keep the newest RECENT_ANOMALIES: rank 0 is the oldest.
        pipe.zremrangebyrank(index, 0, -RECENT_ANOMALIES - 1)
        pipe.expire(index, ttl)
        pipe.execute()


def recent_anomalies(client: redis.Redis, namespace: str, limit: int = 100) -> list[dict[str, Any]]:
    """The latest state of the newest `limit` anomalies, newest first (expired ones left out)."""
    ids: list[bytes] = client.zrevrange(anomalies_key(namespace), 0, limit - 1)  # type: ignore[assignment]
    if not ids:
        return []
    documents: list[bytes | None] = client.mget([anomaly_key(namespace, i.decode()) for i in ids])  # type: ignore[assignment]
    return [orjson.loads(doc) for doc in documents if doc is not None]


class _RedisPartition(StatelessSinkPartition[AnomalyEvent]):
    def __init__(self, writer: RedisAnomalyWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[AnomalyEvent]) -> None:
        self._writer.write(items)


class AnomalyRedisSink(DynamicSink[AnomalyEvent]):
    """Bytewax sink writing anomalies to Redis under the namespace."""

    def __init__(self, settings: RedisSettings, ttl_s: int) -> None:
        self._settings = settings
        self._ttl_s = ttl_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        """Connect this worker's writer."""
        return _RedisPartition(RedisAnomalyWriter(connect(self._settings), self._settings.namespace, self._ttl_s))


class _PrometheusPartition(StatelessSinkPartition[Detection]):
    def write_batch(self, items: list[Detection]) -> None:
        metrics = pipeline_metrics()
        for detection in items:
            metrics.observe_detection(detection)


class AnomalyPrometheusSink(DynamicSink[Detection]):
    """Bytewax sink exporting anomaly scores, counts and open anomalies on this process's /metrics."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PrometheusPartition:
        """Export from this worker."""
        return _PrometheusPartition()
