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
from collections.abc import Sequence

import orjson
import redis

from flows.health import pipeline_metrics
from flows.pipeline_health import PipelineHealth
from settings.redis import RedisSettings
from sinks.base import WorkerSink, Writer
from sinks.redis_layout import health_key
from sinks.redis_sink import connect

log = logging.getLogger(__name__)


class RedisHealthWriter(Writer[PipelineHealth]):
    """Sets the health document, once per publish."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int) -> None:
        self._client = client
        self._key = health_key(namespace)
        self._ttl_s = ttl_s

    def write(self, items: Sequence[PipelineHealth]) -> None:
        """Write the batch's newest document (each replaces the previous one whole); a failure is counted."""
        try:
            self._client.set(self._key, orjson.dumps(items[-1].to_dict()), ex=self._ttl_s)
        except redis.RedisError as exc:
            pipeline_metrics().redis_write_errors.inc()
            log.debug("health document not written (%s); the next publish writes a newer one", exc)

    def close(self) -> None:
        self._client.close()


class HealthRedisSink(WorkerSink[PipelineHealth]):
    """Bytewax sink writing the pipeline-health document under the namespace."""

    def __init__(self, settings: RedisSettings, ttl_s: int) -> None:
        super().__init__(lambda _worker: RedisHealthWriter(connect(settings), settings.namespace, ttl_s))
