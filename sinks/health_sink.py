"""Writes the pipeline-health document (flows/pipeline_health.py) to Redis at each publish.

The document at `sp:{ns}:health` is one JSON object, rewritten whole with the
retention TTL, so a retry or a replay writes an absolute value again:

| field | meaning |
|---|---|
| `updated_ms` | wall-clock time of the publish that wrote it (a stale one means the flow is not publishing) |
| `started_ms` | when this flow process started; the `_total` figures count from then |
| `watermark_ms` | the watermark: the slowest active partition's highest event time (-1 before any) |
| `newest_windows` | per resolution, the newest window published that the watermark has reached: `start_ms`, `end_ms`, `final` |
| `events_consumed_total`, `events_per_second` | Kafka messages consumed (valid or not); the rate over the last minute |
| `bad_events_total`, `bad_events_last_minute`, `bad_events_by_reason` | messages sent to the dead-letter topic |
| `late_events_total`, `late_events_last_minute` | events that arrived after their window was final |
| `duplicates_total` | re-delivered events counted once |
| `consumer_lag` | messages between the readers' next offsets and the partitions' ends, summed (null until measured) |
| `partitions` | how many input partitions are `active`, `idle` or `finished` |
| `kafka_errors`, `kafka_reachable` | per partition, the last Kafka error not yet followed by a message; reachable if none |

Unlike window writes, a failed health write is not retried: the next publish,
a second later, writes a newer document anyway, and blocking the flow for it
would hold up the windows.
"""

from __future__ import annotations

import logging

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.health import pipeline_metrics
from flows.pipeline_health import PipelineHealth
from settings.redis import RedisSettings
from sinks.redis_layout import health_key
from sinks.redis_sink import connect

log = logging.getLogger(__name__)


class RedisHealthWriter:
    """Sets the health document, once per publish."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int) -> None:
        self._client = client
        self._key = health_key(namespace)
        self._ttl_s = ttl_s

    def write(self, health: PipelineHealth) -> bool:
        """Write `health`; False (and counted) if Redis did not take it."""
        try:
            self._client.set(self._key, orjson.dumps(health.to_dict()), ex=self._ttl_s)
        except redis.RedisError as exc:
            pipeline_metrics().redis_write_errors.inc()
            log.debug("health document not written (%s); the next publish writes a newer one", exc)
            return False
        return True


class _RedisPartition(StatelessSinkPartition[PipelineHealth]):
    def __init__(self, writer: RedisHealthWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[PipelineHealth]) -> None:
        if items:
            self._writer.write(items[-1])  # each document replaces the previous one whole


class HealthRedisSink(DynamicSink[PipelineHealth]):
    """Bytewax sink writing the pipeline-health document under the namespace."""

    def __init__(self, settings: RedisSettings, ttl_s: int) -> None:
        self._settings = settings
        self._ttl_s = ttl_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        """Connect this worker's writer."""
        return _RedisPartition(RedisHealthWriter(connect(self._settings), self._settings.namespace, self._ttl_s))
