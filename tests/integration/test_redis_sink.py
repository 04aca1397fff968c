"""The window sink against a real Redis: absolute, idempotent writes under the documented layout, every key with its TTL."""

from __future__ import annotations

import orjson
import redis

from flows.windows.store import WindowUpdate
from settings.redis import RedisSettings
from sinks.redis_layout import aggregate_key, index_key, window_key
from sinks.redis_sink import RedisWindowSink, connect
from tests.conftest import Stack

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
TTL_S = 600


def update(resolution: str, start_ms: int, size_ms: int, starts: int, final: bool = False) -> WindowUpdate:
    return WindowUpdate(
        resolution,
        start_ms,
        start_ms + size_ms,
        final,
        {"stream_starts": {("BR", "tv", "c1"): starts, ("US", "web", "c2"): 1}, "play_attempts": {("BR", "tv"): 9}},
        None,
        {"play_start": 2},
        start_ms + size_ms,
    )


def write(settings: RedisSettings, updates: list[WindowUpdate]) -> None:
    """Through the sink as the dataflow uses it: a worker's partition of RedisWindowSink."""
    partition = RedisWindowSink(settings, TTL_S).build("test.redis_out", 0, 1)
    partition.write_batch(updates)
    partition.close()


def contents(client: redis.Redis, namespace: str) -> dict[str, object]:
    """Every key of the namespace and its value; the wall-clock `updated_ms` left out."""
    found: dict[str, object] = {}
    for raw in client.scan_iter(match=f"sp:{namespace}:*"):
        key = raw.decode()
        kind = client.type(key).decode()  # type: ignore[union-attr]
        if kind == "string":
            found[key] = orjson.loads(client.get(key))  # type: ignore[arg-type]
        elif kind == "hash":
            fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}  # type: ignore[union-attr]
            fields.pop("updated_ms")
            found[key] = fields
        else:
            found[key] = client.zrange(key, 0, -1, withscores=True)
    return found


def test_writing_the_same_updates_again_leaves_the_same_keys(stack: Stack, unique_name: str) -> None:
    settings = RedisSettings(stack.redis_url, f"sink-{unique_name}")
    ns = settings.namespace
    client = connect(settings)
    updates = [update("10s", T0, 10_000, 3), update("10s", T0 + 10_000, 10_000, 4), update("1m", T0, 60_000, 7)]
    write(settings, updates)
    first = contents(client, ns)
    write(settings, updates)
    assert contents(client, ns) == first  # a retry, restart or replay writes the same thing: never adds

    assert first[aggregate_key(ns, "10s", "stream_starts", T0)] == [["BR", "tv", "c1", 3], ["US", "web", "c2", 1]]
    assert first[aggregate_key(ns, "1m", "play_attempts", T0)] == [["BR", "tv", 9]]
    assert first[window_key(ns, "10s", T0 + 10_000)] == {
        "final": "0",
        "end_ms": str(T0 + 20_000),
        "watermark_ms": str(T0 + 20_000),
        "late:play_start": "2",
    }
    # The index of windows written, per resolution: member and score are the window's start.
    assert first[index_key(ns, "10s")] == [(str(T0).encode(), T0), (str(T0 + 10_000).encode(), T0 + 10_000)]
    assert first[index_key(ns, "1m")] == [(str(T0).encode(), T0)]
    assert len(first) == 3 * 2 + 3 + 2  # two aggregates and a status per window, one index per resolution

    # Every key expires: the retention TTL is set (again) by each write.
    for key in first:
        assert 0 < client.ttl(key) <= TTL_S, key


def test_a_later_update_replaces_the_value_absolutely(stack: Stack, unique_name: str) -> None:
    settings = RedisSettings(stack.redis_url, f"sink-{unique_name}")
    ns = settings.namespace
    client = connect(settings)
    write(settings, [update("10s", T0, 10_000, 3)])
    write(settings, [update("10s", T0, 10_000, 5, final=True)])
    stored = orjson.loads(client.get(aggregate_key(ns, "10s", "stream_starts", T0)))  # type: ignore[arg-type]
    assert stored == [["BR", "tv", "c1", 5], ["US", "web", "c2", 1]]  # 5, not 3 + 5
    assert client.hget(window_key(ns, "10s", T0), "final") == b"1"
    assert client.zcard(index_key(ns, "10s")) == 1
