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
from collections.abc import Sequence
from typing import Any

import orjson
import redis
from confluent_kafka import Producer

from connect.kafka_log import with_logging
from flows.anomaly.events import AnomalyEvent, Detection
from flows.health import PipelineMetrics, pipeline_metrics
from settings.kafka import KafkaSettings
from settings.redis import RedisSettings
from sinks.base import WorkerSink, Writer, produce_all_or_raise
from sinks.redis_layout import anomalies_key, anomaly_key
from sinks.redis_sink import connect, redis_retry

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0
# How many anomalies the recent set keeps (newest by opening time); older ones also expire with the TTL.
RECENT_ANOMALIES = 1000


def anomaly_message(event: AnomalyEvent) -> tuple[bytes, bytes]:
    """The Kafka key and value of an anomaly event."""
    return event.series_key.encode(), orjson.dumps(event.to_dict())


class KafkaAnomalyWriter(Writer[AnomalyEvent]):
    """Produces anomaly events to the anomalies topic, each batch delivered whole before the flow moves on."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        # Polled only when it writes: its connection errors would come late, the readers tell of outages.
        config = with_logging(settings.client_config(), settings.bootstrap, outages=False)
        # Idempotence keeps librdkafka's own retries from writing an event twice.
        config.update({"enable.idempotence": True, "linger.ms": 20})
        self._producer = Producer(config)
        self._topic = topic

    def write(self, items: Sequence[AnomalyEvent]) -> None:
        """Produce `items`, all delivered or raised."""
        # Raising stops the flow before this window's detector state is snapshotted: a restart detects the
        # anomaly again rather than losing it.
        messages = ((*anomaly_message(event), None) for event in items)
        produce_all_or_raise(self._producer, self._topic, messages, "anomaly event(s)", FLUSH_TIMEOUT_S)

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)


class AnomalyKafkaSink(WorkerSink[AnomalyEvent]):
    """Bytewax sink producing anomaly events to the anomalies topic, one producer per worker."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        super().__init__(lambda _worker: KafkaAnomalyWriter(settings, topic))


class RedisAnomalyWriter(Writer[AnomalyEvent]):
    """Writes each anomaly's latest state and the recent-anomalies index, retrying until Redis takes them."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int, metrics: PipelineMetrics | None = None) -> None:
        self._client = client
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._retry = redis_retry("Redis write of anomalies", metrics or pipeline_metrics(), log, client)

    def write(self, items: Sequence[AnomalyEvent]) -> None:
        """Write `items` (in order: a later state of the same anomaly wins), retrying while Redis is down."""
        if items:
            self._retry.run(lambda: self._write_once(items))

    def close(self) -> None:
        self._client.close()

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


class AnomalyRedisSink(WorkerSink[AnomalyEvent]):
    """Bytewax sink writing anomalies to Redis under the namespace."""

    def __init__(self, settings: RedisSettings, ttl_s: int) -> None:
        super().__init__(lambda _worker: RedisAnomalyWriter(connect(settings), settings.namespace, ttl_s))


class PrometheusDetectionWriter(Writer[Detection]):
    """Exports each window's anomaly scores and open anomalies on this process's /metrics."""

    def write(self, items: Sequence[Detection]) -> None:
        """Export every detection of the batch."""
        metrics = pipeline_metrics()
        for detection in items:
            metrics.observe_detection(detection)


class AnomalyPrometheusSink(WorkerSink[Detection]):
    """Bytewax sink exporting anomaly scores, counts and open anomalies on this process's /metrics."""

    def __init__(self) -> None:
        super().__init__(lambda _worker: PrometheusDetectionWriter())
