"""Shards: bytewax places each shard's key on its own worker, and a split summary adds up to the whole."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, cluster_main

from flows.partials import BatchSummary, Partials
from flows.sharding import DEVICE_TYPES, ShardRouter, bytewax_worker_of, roll_up_key, shard_keys, siphash13


class _WorkerLog(DynamicSink[Any]):
    """Records which worker each item reached the sink on (a sink takes items where they are)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        log = self

        class _Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: Sequence[Any]) -> None:
                with log._lock:
                    for key, _value in items:
                        log.seen[key] = worker_index

        return _Part()


class _Echo(StatefulBatchLogic[str, str, None]):
    def on_batch(self, values: list[str]) -> tuple[list[str], bool]:
        return values, StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


def _workers_of(keys: list[str], workers: int) -> dict[str, int]:
    flow = Dataflow("routing")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    log = _WorkerLog()
    op.output("out", op.stateful_batch("echo", keyed, lambda _resume: _Echo()), log)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)  # type: ignore[no-untyped-call]
    return log.seen


def test_siphash13_matches_the_reference_vector() -> None:
    # SipHash-1-3 of the empty input under keys 0, 0 (as Rust's DefaultHasher::new() gives for b"").
    assert siphash13(b"") == 0xD1FBA762150C532C


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_bytewax_runs_each_key_on_the_worker_we_compute(workers: int) -> None:
    keys = [f"k{i}" for i in range(40)] + ["windows", "anomalies", "shard-0-0"]
    seen = _workers_of(keys, workers)
    assert seen == {key: bytewax_worker_of(key, workers) for key in keys}


@pytest.mark.parametrize("shards", [2, 4])
def test_shard_keys_land_one_per_worker(shards: int) -> None:
    seen = _workers_of(list(shard_keys(shards)), shards)
    assert sorted(seen.values()) == list(range(shards))
    assert [seen[key] for key in shard_keys(shards)] == list(range(shards))


def _summary() -> BatchSummary:
    countries = ["US", "BR", "DE", "JP", "IN"]
    fine: Partials = {
        (0, "title_starts", c, d, f"t{i}"): i + 1
        for i, (c, d) in enumerate((c, d) for c in countries for d in DEVICE_TYPES)
    }
    rows = {(10_000, c, d): [1, 2, 3] for c in countries for d in DEVICE_TYPES}
    return BatchSummary(
        partition="p-0",
        high_event_time_ms=12_345,
        state="active",
        fine=fine,
        coarse_only={(60_000, "pauses", "US", "tv"): 4},
        late={("10s", 0, "play_start"): 2},
        fine_rows=rows,
        coarse_rows={(0, "BR", "web"): [0, 1, 0]},
        duplicates=3,
        rejected_by_reason={"bad_json": 1},
        consumed=99,
        lag=7,
    )


@pytest.mark.parametrize("shards", [1, 2, 3, 4])
def test_a_split_summary_adds_up_to_the_whole_and_every_shard_gets_the_progress(shards: int) -> None:
    router = ShardRouter(shards)
    whole = _summary()
    parts = router.split(_summary())
    assert [key for key, _ in parts] == list(router.keys)
    assert [part.shard for _, part in parts] == list(range(shards))
    for _, part in parts:
        assert (part.partition, part.high_event_time_ms, part.state) == ("p-0", 12_345, "active")
    for name in ("fine", "coarse_only", "fine_rows", "coarse_rows"):
        merged: dict[Any, Any] = {}
        for _, part in parts:
            held = getattr(part, name)
            assert not set(held) & set(merged), f"{name}: a key in two shards"
            merged.update(held)
        assert merged == getattr(whole, name)
    # Counts of no cell, once: on shard 0.
    assert parts[0][1].late == whole.late and all(not p.late for _, p in parts[1:])
    assert sum(p.duplicates for _, p in parts) == 3 and sum(p.consumed for _, p in parts) == 99
    assert parts[0][1].rejected_by_reason == {"bad_json": 1}


def test_each_cell_has_one_shard_and_a_country_s_cells_go_round_the_shards() -> None:
    router = ShardRouter(2)
    for country in ("US", "BR", "ZZ"):
        owners = [router.shard_of(country, device) for device in DEVICE_TYPES]
        assert owners.count(0) == owners.count(1) == len(DEVICE_TYPES) // 2
        assert router.shard_of(country, "tv") == ShardRouter(2).shard_of(country, "tv")


@pytest.mark.parametrize("shards", [2, 3, 4])
def test_the_roll_up_step_runs_on_the_last_worker_not_beside_shard_0(shards: int) -> None:
    # Shard 0 also counts late events, duplicates and the readers' health: the roll-ups go to the other end.
    key = roll_up_key(shards)
    assert _workers_of([key, *shard_keys(shards)], shards)[key] == shards - 1
