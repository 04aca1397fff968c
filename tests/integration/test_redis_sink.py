"""The window sink against a real Redis: absolute, idempotent writes under the documented layout, every key with its TTL."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis

from flows.windows.store import ShardProgress, WindowUpdate
from settings.redis import RedisSettings
from sinks.redis_layout import index_key, legacy_aggregate_key, window_key
from sinks.redis_sink import RedisWindowSink, connect
from sinks.window_read import read_windows
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


def write(settings: RedisSettings, updates: Sequence[WindowUpdate | ShardProgress]) -> None:
    """Through the sink as the dataflow uses it: a worker's partition of RedisWindowSink."""
    partition = RedisWindowSink(settings, TTL_S).build("test.redis_out", 0, 1)
    partition.write_batch(list(updates))
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
            fields.pop("updated_ms", None)
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

    # A window is one hash: its status, and each shard's rows of each aggregate under its own field (shard 0).
    assert first[window_key(ns, "10s", T0 + 10_000)] == {
        "final:0": "0",
        "end_ms": str(T0 + 20_000),
        "watermark_ms": str(T0 + 20_000),
        "late:play_start:0": "2",
        "agg:stream_starts:0": orjson.dumps([["BR", "tv", "c1", 4], ["US", "web", "c2", 1]]).decode(),
        "agg:play_attempts:0": orjson.dumps([["BR", "tv", 9]]).decode(),
    }
    one_minute = first[window_key(ns, "1m", T0)]
    assert isinstance(one_minute, dict)
    assert orjson.loads(one_minute["agg:stream_starts:0"]) == [["BR", "tv", "c1", 7], ["US", "web", "c2", 1]]
    # The index of windows written, per resolution: member and score are the window's start.
    assert first[index_key(ns, "10s")] == [(str(T0).encode(), T0), (str(T0 + 10_000).encode(), T0 + 10_000)]
    assert first[index_key(ns, "1m")] == [(str(T0).encode(), T0)]
    assert len(first) == 3 + 2  # a hash per window, an index per resolution

    # Every key expires: the retention TTL is set by a window's first write (and again by its final one).
    for key in first:
        assert 0 < client.ttl(key) <= TTL_S, key


def test_partial_rewrites_of_an_open_window_are_one_hset_each(stack: Stack, unique_name: str) -> None:
    # Every shard re-writes its open windows at every publish, whatever its share of the cells: the index entry and
    # the TTL go with a window's first and final writes only.
    settings = RedisSettings(stack.redis_url, f"sink-{unique_name}")
    ns = settings.namespace
    client = connect(settings)
    partition = RedisWindowSink(settings, TTL_S).build("test.redis_out", 0, 1)

    def calls() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("hset", "expire", "zadd")}

    partition.write_batch([update("10s", T0, 10_000, 1)])
    before = calls()
    for starts in (2, 3, 4):
        partition.write_batch([update("10s", T0, 10_000, starts)])
    after = calls()
    # Per batch: the window's HSET and the index's EXPIRE (once per resolution in a batch), nothing else.
    assert {name: after[name] - before[name] for name in after} == {"hset": 3, "expire": 3, "zadd": 0}
    assert 0 < client.ttl(window_key(ns, "10s", T0)) <= TTL_S
    partition.write_batch([update("10s", T0, 10_000, 5, final=True), ShardProgress(0, 1, T0 + 10_000, T0 + 10_000)])
    final = calls()
    assert final["zadd"] - after["zadd"] == 1  # the final write indexes the window again (a Redis that lost it)
    [window] = read_windows(client, ns, "10s", [T0], ["stream_starts"])
    assert window.final and window.values["stream_starts"] == {("BR", "tv", "c1"): 5, ("US", "web", "c2"): 1}
    assert client.zrange(index_key(ns, "10s"), 0, -1) == [str(T0).encode()]
    partition.close()


def test_a_later_update_replaces_the_value_absolutely(stack: Stack, unique_name: str) -> None:
    settings = RedisSettings(stack.redis_url, f"sink-{unique_name}")
    ns = settings.namespace
    client = connect(settings)
    write(settings, [update("10s", T0, 10_000, 3)])
    write(settings, [update("10s", T0, 10_000, 5, final=True), ShardProgress(0, 1, T0 + 10_000, T0 + 10_000)])
    [window] = read_windows(client, ns, "10s", [T0], ["stream_starts"])
    assert window.values["stream_starts"] == {("BR", "tv", "c1"): 5, ("US", "web", "c2"): 1}  # 5, not 3 + 5
    assert window.final and window.late == {"play_start": 2}
    assert client.zcard(index_key(ns, "10s")) == 1


def _shard_update(shard: int, cells: dict[tuple[object, ...], int], final: bool) -> WindowUpdate:
    values: dict[str, dict[tuple[str, ...], int]] = {"stream_starts": cells}  # type: ignore[dict-item]
    return WindowUpdate("10s", T0, T0 + 10_000, final, values, values if final else None, {}, T0, shard, 2)


def test_a_window_is_final_only_once_every_shard_has_written_it_final(stack: Stack, unique_name: str) -> None:
    settings = RedisSettings(stack.redis_url, f"sink-{unique_name}")
    ns, client = settings.namespace, connect(settings)
    write(
        settings, [_shard_update(0, {("BR", "tv", "c1"): 3}, final=True), ShardProgress(0, 2, T0 + 10_000, T0 + 10_000)]
    )
    write(settings, [_shard_update(1, {("US", "web", "c2"): 2}, final=False), ShardProgress(1, 2, T0 + 5_000, T0)])
    [window] = read_windows(client, ns, "10s", [T0], ["stream_starts"])
    assert not window.final  # shard 1 has not finished it: a reader must not take it for final
    assert window.values["stream_starts"] == {("BR", "tv", "c1"): 3, ("US", "web", "c2"): 2}
    write(
        settings,
        [_shard_update(1, {("US", "web", "c2"): 4}, final=True), ShardProgress(1, 2, T0 + 10_000, T0 + 10_000)],
    )
    [window] = read_windows(client, ns, "10s", [T0], ["stream_starts"])
    assert window.final and window.values["stream_starts"] == {("BR", "tv", "c1"): 3, ("US", "web", "c2"): 4}
    # A shard that held nothing of a window finishes it by its progress alone.
    write(settings, [ShardProgress(1, 2, T0 + 30_000, T0 + 20_000), ShardProgress(0, 2, T0 + 30_000, T0 + 20_000)])
    assert read_windows(client, ns, "10s", [T0], [])[0].final


def test_windows_written_before_sharding_are_still_read(stack: Stack, unique_name: str) -> None:
    settings = RedisSettings(stack.redis_url, f"sink-{unique_name}")
    ns, client = settings.namespace, connect(settings)
    client.set(legacy_aggregate_key(ns, "10s", "stream_starts", T0), orjson.dumps([["BR", "tv", "c1", 7]]))
    client.hset(window_key(ns, "10s", T0), mapping={"final": 1, "end_ms": T0 + 10_000, "late:play_start": 1})
    [window] = read_windows(client, ns, "10s", [T0], ["stream_starts"])
    assert (window.final, window.late, window.values) == (
        True,
        {"play_start": 1},
        {"stream_starts": {("BR", "tv", "c1"): 7}},
    )
