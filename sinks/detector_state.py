"""The live anomaly detectors' saved states in Redis: written by the live run, read by a replay at its start.

Layout (sinks/redis_layout.py):

| key | type | content |
|---|---|---|
| `sp:{ns}:detector-state:{through_ms}:{shards}` | hash | `part:{shard}` per shard but the last, and `part:roll-ups` with the last shard's cells (clusters of more than one shard): each part's detector snapshot, JSON compressed with zlib; `shards` |
| `sp:{ns}:detector-states` | sorted set | member `{through_ms}:{shards}`, score `through_ms`: the states kept, newest last |

Each part is written by the worker that runs it, when it is due (once per
interval of event time, flows/anomaly/warm_start.py): one HSET of an absolute
value, so a retry or a restart writes the same thing again. A state is whole
once every part of its cluster is there; a replay takes only whole ones. Every
key carries the retention TTL, and each write keeps the newest `kept` states
and deletes older ones.

Snapshots are encoded with the standard library's JSON (floats written as their
shortest exact form, infinities as `Infinity`), never pickle: a replay reads
them back from a shared Redis, and unpickling would run whatever is there.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from flows.anomaly.warm_start import DetectorSnapshot, SavedState, is_whole
from flows.health import PipelineMetrics, pipeline_metrics
from settings.redis import RedisSettings
from sinks.base import WorkerSink, Writer
from sinks.redis_layout import detector_state_key, detector_states_key
from sinks.redis_sink import connect, redis_retry

log = logging.getLogger(__name__)

_PART = "part:"


def encode_snapshot(snapshot: DetectorSnapshot) -> bytes:
    """A detector snapshot as stored: compact JSON, zlib level 1 (about 4x smaller, a few ms per MB)."""
    return zlib.compress(json.dumps(snapshot, separators=(",", ":")).encode(), 1)


def decode_snapshot(stored: bytes) -> DetectorSnapshot:
    """A stored detector snapshot back as plain data."""
    snapshot: DetectorSnapshot = json.loads(zlib.decompress(stored))
    return snapshot


def _member(through_ms: int, shards: int) -> str:
    return f"{through_ms}:{shards}"


class RedisDetectorStateWriter(Writer[SavedState]):
    """Writes each saved part of the detectors' state, retrying until Redis takes it, and trims old states."""

    def __init__(
        self, client: redis.Redis, namespace: str, ttl_s: int, kept: int, metrics: PipelineMetrics | None = None
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._ttl_s = ttl_s
        self._kept = kept
        self._retry = redis_retry("Redis write of anomaly detector state", metrics or pipeline_metrics(), log, client)

    def write(self, items: Sequence[SavedState]) -> None:
        """Write every part of the batch (once per interval per part: rare), retrying while Redis is down."""
        for state in items:
            stored = encode_snapshot(state.snapshot)
            self._retry.run(lambda state=state, stored=stored: self._write_once(state, stored))  # type: ignore[misc]
            log.debug(
                "anomaly detector state through %d ms (part %s, %d bytes) saved",
                state.through_ms,
                state.part,
                len(stored),
            )

    def close(self) -> None:
        self._client.close()

    def _write_once(self, state: SavedState, stored: bytes) -> None:
        ns, ttl = self._namespace, self._ttl_s
        key, index = detector_state_key(ns, state.through_ms, state.shards), detector_states_key(ns)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, mapping={"shards": state.shards, f"{_PART}{state.part}": stored})
        pipe.expire(key, ttl)
        pipe.zadd(index, {_member(state.through_ms, state.shards): state.through_ms})
        pipe.expire(index, ttl)
        pipe.execute()
        # Rank 0 is the oldest: everything before the newest `kept` goes.
        old: list[bytes] = self._client.zrange(index, 0, -self._kept - 1)  # type: ignore[assignment]
        if old:
            pipe = self._client.pipeline(transaction=True)
            for member in old:
                through, shards = member.decode().split(":")
                pipe.delete(detector_state_key(ns, int(through), int(shards)))
            pipe.zrem(index, *old)
            pipe.execute()


class DetectorStateRedisSink(WorkerSink[SavedState]):
    """Bytewax sink writing the live detectors' saved states under the namespace."""

    def __init__(self, settings: RedisSettings, ttl_s: int, kept: int) -> None:
        super().__init__(lambda _worker: RedisDetectorStateWriter(connect(settings), settings.namespace, ttl_s, kept))


@dataclass(frozen=True)
class StoredState:
    """A whole saved state: valid through `through_ms`, taken by `shards` shards, every part (still encoded)."""

    through_ms: int
    shards: int
    parts: dict[str, bytes]

    def decoded(self) -> dict[str, DetectorSnapshot]:
        """Every part's snapshot."""
        return {part: decode_snapshot(stored) for part, stored in self.parts.items()}


@dataclass(frozen=True)
class StateLookup:
    """What a replay found: the newest whole state at or before its start (None: none), and newer unfinished ones."""

    state: StoredState | None
    incomplete: int = 0  # newer states at or before the start that lack a part (their writers had not finished)


def newest_state(client: redis.Redis, namespace: str, at_or_before_ms: int) -> StateLookup:
    """The newest whole state of `namespace` valid through a time at or before `at_or_before_ms`."""
    index = detector_states_key(namespace)
    members: list[bytes] = client.zrevrangebyscore(index, at_or_before_ms, "-inf")  # type: ignore[assignment]
    incomplete = 0
    for member in members:
        through_text, shards_text = member.decode().split(":")
        through, saved_by = int(through_text), int(shards_text)
        fields: dict[bytes, Any] = client.hgetall(detector_state_key(namespace, through, saved_by))  # type: ignore[assignment]
        parts = {name.decode()[len(_PART) :]: value for name, value in fields.items() if name.startswith(b"part:")}
        if not is_whole(parts, saved_by):
            incomplete += 1
            continue
        return StateLookup(StoredState(through, saved_by, parts), incomplete)
    return StateLookup(None, incomplete)
