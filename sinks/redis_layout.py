"""The Redis key layout, shared by the writer (sinks/redis_sink.py) and `query`.

All keys live under `sp:{namespace}:` so a replay (its own namespace) never
touches live keys:

| key | type | content |
|---|---|---|
| `sp:{ns}:win:{res}:{window_start_ms}` | hash | the window: `end_ms`, `watermark_ms`, `updated_ms`, and per shard `final:{shard}` (0/1), `late:{event_type}:{shard}` counts (the window's late count: their sum) and `agg:{aggregate}:{shard}`, the JSON array of the shard's rows of the aggregate `[dim1, dim2, …, value]`: dimension values in the aggregate's order (flows/windows/catalog.py), then the integer value. Shards own disjoint (country, device_type) cells, so an aggregate's rows are every shard's rows together |
| `sp:{ns}:shards` | hash | `count`: the shards (workers) of the cluster writing; `through:{shard}`: every window ending at or before it is final in that shard. A window is final once its end is at or before every shard's `through` (sinks/window_read.py), so a reader never takes a window half the shards have finished for final |
| `sp:{ns}:windows:{res}` | sorted set | member and score = window_start_ms of every window written |
| `sp:{ns}:anomalies` | sorted set | recent anomalies: member = anomaly id (`series:country:device_type:direction:onset_ms`), score = end of the window it opened in (ms); the newest 1000 are kept |
| `sp:{ns}:anomaly:{anomaly_id}` | string | JSON of the anomaly's latest event (`state` open, escalated, resolved or accepted as the new normal; fields in docs/anomalies.md) |
| `sp:{ns}:detector-state:{through_ms}:{shards}` | hash | the live anomaly detectors' state valid through `through_ms` (event time), saved by a cluster of `shards` shards: `part:{shard}` per shard but the last and `part:roll-ups` (the roll-ups and the last shard's cells; one shard: `part:0` alone), each a detector snapshot (zlib-compressed JSON); `shards`. Written once per `--detector-state-interval` of event time by a live run, read by a replay at its start (sinks/detector_state.py) |
| `sp:{ns}:detector-states` | sorted set | member `{through_ms}:{shards}`, score `through_ms`: the detector states kept (the newest `--detector-states-kept`) |
| `sp:{ns}:health` | string | JSON of the pipeline-health document the flow rewrites at each publish (fields below), what `streampulse top` shows in its header |

Each shard of the window state (one per worker of the cluster, flows/sharding.py) writes only the cells it
owns, under its own field. Values are absolute per window: each publish rewrites, whole, every
aggregate of a window that changed since its last publish (one HSET per window and shard), inside MULTI/EXEC,
so a retry, restart or replay writes the same value (never an increment) and
a reader never sees half an update. One JSON document per (window,
aggregate, shard) rather than a hash field per dimension combination: orjson
encodes it in C, where redis-py packs hash fields one by one in Python (22 %
of the flow's time, measured); and all of a window in one hash, so a shard
writes a window with one HSET rather than one command per aggregate (the
command count would otherwise grow with the shards). Every key carries the
retention TTL: a window's is set with its first write and again with its
final one, and it is indexed then too, so the partial re-writes between (every
shard re-writes its open windows that changed at every publish, those at the live edge: flows/windows/store.py)
are one HSET each.
Anomalies are written the same way: each event sets the anomaly's whole
latest state, so a retry or a replay writes the same document again.
"""

from __future__ import annotations

PREFIX = "sp"


def legacy_aggregate_key(namespace: str, resolution: str, aggregate: str, window_start_ms: int) -> str:
    """One aggregate's rows in one window as the versions before sharding wrote them (a string): still read."""
    return f"{PREFIX}:{namespace}:agg:{resolution}:{aggregate}:{window_start_ms}"


def shards_key(namespace: str) -> str:
    """Hash of the shard count and each shard's progress (`through:{shard}`): which windows are final."""
    return f"{PREFIX}:{namespace}:shards"


def window_key(namespace: str, resolution: str, window_start_ms: int) -> str:
    """Hash of one window: its status (final, late counts) and each shard's rows of each aggregate."""
    return f"{PREFIX}:{namespace}:win:{resolution}:{window_start_ms}"


def index_key(namespace: str, resolution: str) -> str:
    """Sorted set of the window starts written at a resolution."""
    return f"{PREFIX}:{namespace}:windows:{resolution}"


def anomalies_key(namespace: str) -> str:
    """Sorted set of recent anomaly ids, scored by the end of the window they opened in."""
    return f"{PREFIX}:{namespace}:anomalies"


def anomaly_key(namespace: str, anomaly_id: str) -> str:
    """JSON document of one anomaly's latest state."""
    return f"{PREFIX}:{namespace}:anomaly:{anomaly_id}"


def health_key(namespace: str) -> str:
    """JSON document of the pipeline's health, rewritten at each publish (sinks/health_sink.py)."""
    return f"{PREFIX}:{namespace}:health"


def detector_state_key(namespace: str, through_ms: int, shards: int) -> str:
    """Hash of the live detectors' state valid through `through_ms`, one field per part (sinks/detector_state.py)."""
    return f"{PREFIX}:{namespace}:detector-state:{through_ms}:{shards}"


def detector_states_key(namespace: str) -> str:
    """Sorted set of the detector states kept: member `{through_ms}:{shards}`, score `through_ms`."""
    return f"{PREFIX}:{namespace}:detector-states"


def replay_marker_key(namespace: str) -> str:
    """Hash marking `namespace` as a replay's: what was replayed, from where, when (streampulse/replay.py)."""
    return f"{PREFIX}:{namespace}:replay"
