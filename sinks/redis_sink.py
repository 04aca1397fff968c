"""Writes window updates to Redis: absolute values, pipelined, retried until Redis takes them.

While Redis is unreachable the write blocks and retries with backoff; the
dataflow stops pulling from Kafka meanwhile, so nothing is lost and, since
every write is an absolute value, nothing is doubled when it goes through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import orjson
import redis

from flows.health import PipelineMetrics, pipeline_metrics
from flows.windows.store import ShardProgress, WindowUpdate
from settings.redis import RedisSettings
from sinks.base import RetryUntilAccepted, WorkerSink, Writer
from sinks.redis_layout import index_key, shards_key, window_key

log = logging.getLogger(__name__)

# Errors that end when Redis is back (down, restarting, still loading its data): waited out, never fatal.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def connect(settings: RedisSettings) -> redis.Redis:
    """A client for the configured Redis; the password comes from settings, never from logs."""
    password = settings.password.reveal() if settings.password else None
    tls = {"ssl_ca_certs": settings.ssl_ca_location} if settings.ssl_ca_location else {}
    client: redis.Redis = redis.Redis.from_url(
        settings.url, password=password, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30, **tls
    )
    return client


def redis_retry(
    what: str, metrics: PipelineMetrics, logger: logging.Logger, client: redis.Redis | None = None
) -> RetryUntilAccepted:
    """The retry every Redis write that must not be lost goes through: counted in redis_write_errors_total.

    The writers of a process to one Redis (`client`'s server) tell an outage once between them.
    """
    return RetryUntilAccepted(
        what, TRANSIENT_ERRORS, on_failure=metrics.redis_write_errors.inc, log=logger, place=_place(client)
    )


def _place(client: redis.Redis | None) -> str | None:
    """'Redis at host:port' of a client (no credentials), or None."""
    if client is None:
        return None
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"Redis at {where}"


def unreachable(settings: RedisSettings, exc: redis.RedisError) -> str:
    """Why Redis cannot be used, and what to check: the message of a failure at start."""
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        where = (
            f"the CA in --redis-ssl-ca-location {settings.ssl_ca_location} did not sign it"
            if settings.ssl_ca_location
            else "give the CA that signed it with --redis-ssl-ca-location (STREAMPULSE_REDIS_SSL_CA_LOCATION)"
        )
        return f"Redis at {settings.display_url}: its TLS certificate is not trusted ({exc}); {where}."
    return f"Redis at {settings.display_url} is not reachable ({exc}). Check --redis-url / STREAMPULSE_REDIS_URL."


class RedisWindowWriter(Writer[WindowUpdate | ShardProgress]):
    """Writes batches of one shard's window updates and progress in one MULTI/EXEC round trip."""

    def __init__(self, client: redis.Redis, namespace: str, ttl_s: int, metrics: PipelineMetrics | None = None) -> None:
        self._client = client
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._metrics = metrics or pipeline_metrics()
        self._retry = redis_retry("Redis write", self._metrics, log, client)
        # Open windows this writer has indexed and given their TTL: their partial re-writes are one HSET each.
        self._indexed: set[tuple[str, int]] = set()

    def write(self, items: Sequence[WindowUpdate | ShardProgress]) -> None:
        """Write `items`, retrying until Redis accepts them."""
        if items:
            self._retry.run(lambda: self._timed_write(items))

    def close(self) -> None:
        self._client.close()

    def _timed_write(self, updates: Sequence[WindowUpdate | ShardProgress]) -> None:
        started = time.perf_counter()
        self._write_once(updates)
        # Only attempts that went through: a failed one's time says how long Redis took to refuse.
        self._metrics.redis_write_seconds.observe(time.perf_counter() - started)

    def _write_once(self, items: Sequence[WindowUpdate | ShardProgress]) -> None:
        ns, ttl = self._namespace, self._ttl_s
        now_ms = time.time_ns() // 1_000_000
        pipe = self._client.pipeline(transaction=True)
        updates: list[WindowUpdate] = []
        for update in items:
            if isinstance(update, ShardProgress):
                # After its updates, in the same transaction: once every shard's progress passes a window's end,
                # every shard's final values of it are in (sinks/window_read.py).
                progress = {"count": update.shards, f"through:{update.shard}": update.final_through_ms}
                pipe.hset(shards_key(ns), mapping=progress)  # type: ignore[arg-type]
                pipe.expire(shards_key(ns), ttl)
                continue
            updates.append(update)
            res, start, shard = update.resolution, update.window_start_ms, update.shard
            # One hash per window: its status, and per shard its whole content of each aggregate that changed as
            # one document (written again, the same) — one command for all of them, not one per aggregate.
            fields: dict[str, int | bytes] = {
                f"final:{shard}": int(update.final),
                "end_ms": update.window_end_ms,
                "watermark_ms": update.watermark_ms,
                "updated_ms": now_ms,
            }
            for event_type, count in update.late.items():
                fields[f"late:{event_type}:{shard}"] = count
            for aggregate, values in update.changes.items():
                fields[f"agg:{aggregate}:{shard}"] = orjson.dumps([[*dims, value] for dims, value in values.items()])
            win_key = window_key(ns, res, start)
            pipe.hset(win_key, mapping=fields)  # type: ignore[arg-type]
            # The index entry and the TTL go with a window's first write and its final one, not with every
            # partial re-write between: each command costs every shard the same at every publish, whatever its
            # share of the cells (an HSET keeps the key's TTL).
            if update.final or (res, start) not in self._indexed:
                pipe.expire(win_key, ttl)
                pipe.zadd(index_key(ns, res), {str(start): start})
        for res in {u.resolution for u in updates}:
            pipe.expire(index_key(ns, res), ttl)
        pipe.execute()
        # Only once Redis took them: a failed write is retried whole.
        for update in updates:
            window = (update.resolution, update.window_start_ms)
            if update.final:
                self._indexed.discard(window)
            else:
                self._indexed.add(window)


class RedisWindowSink(WorkerSink[WindowUpdate | ShardProgress]):
    """Bytewax sink: each worker writes the updates routed to it through a Redis client of its own."""

    def __init__(self, settings: RedisSettings, ttl_s: int) -> None:
        super().__init__(lambda _worker: RedisWindowWriter(connect(settings), settings.namespace, ttl_s))
