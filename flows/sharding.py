"""Which shard of the window state owns a (country, device_type) cell, and how a batch summary is split.

Every worker of the cluster owns one shard: its part of the window store,
the Redis documents of the cells it owns, their /metrics and their anomaly
series. Every aggregate's first two dimensions are `country` and
`device_type` (flows/windows/catalog.py), so a cell is the finest unit every
aggregate can be split by without splitting a value. A cell's shard is
`(crc32(country) + device index) mod S`: a country's device types go round
the shards, so each shard holds an equal number of each country's cells
(the store's, the writer's and the detector's work grows with the cells, not
the events); the country's hash only sets where its round starts. Measured on
the load generator's 14 countries × 6 device types: the busiest shard holds
1.00 of an equal share of cells at 2 shards, 1.00 at 3, 1.19 at 4 (a hash of
the cell itself: 1.10, 1.11, 1.38).

Readers split each batch summary on their own worker, before anything
crosses workers: every shard gets its cells' partials and every partition's
progress (so all shards close a window at the same watermark); the counts
that belong to no cell (late events per window, duplicates, the reader's
health figures) go to shard 0.

Each shard is a bytewax state key; bytewax places a key on worker
`siphash13(key) mod workers` (the Rust `DefaultHasher` of its `StateKey`,
src/operators.rs in bytewax 0.21), so `shard_keys` picks for shard i a key
that lands on worker i: one shard per worker, none sharing a worker.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

from flows.partials import BatchSummary, Partials, Rows
from schemas.contract import enum_values

DEVICE_TYPES: tuple[str, ...] = enum_values("device_type")
_DEVICE_INDEX = {device: i for i, device in enumerate(DEVICE_TYPES)}

_MASK = (1 << 64) - 1


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def _sip_rounds(v: list[int], rounds: int) -> None:
    v0, v1, v2, v3 = v
    for _ in range(rounds):
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
    v[:] = [v0, v1, v2, v3]


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 of `data`: Rust's `DefaultHasher` (keys 0, 0 for `BuildHasherDefault`)."""
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]
    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v[3] ^= m
        _sip_rounds(v, 1)
        v[0] ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v[3] ^= last
    _sip_rounds(v, 1)
    v[0] ^= last
    v[2] ^= 0xFF
    _sip_rounds(v, 3)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def bytewax_worker_of(key: str, workers: int) -> int:
    """The worker bytewax 0.21 runs state key `key` on, out of `workers` (a Rust `str` hashes its bytes, then 0xFF)."""
    return siphash13(key.encode() + b"\xff") % workers


def shard_keys(shards: int) -> tuple[str, ...]:
    """A state key per shard, shard i's placed by bytewax on worker i (of `shards` workers)."""
    keys = []
    for shard in range(shards):
        n = 0
        while bytewax_worker_of(f"shard-{shard}-{n}", shards) != shard:
            n += 1
        keys.append(f"shard-{shard}-{n}")
    return tuple(keys)


def roll_up_key(shards: int) -> str:
    """The anomaly roll-up step's state key, placed by bytewax on the last worker (of `shards` workers).

    Worker 0's shard also counts what belongs to no cell (late events, duplicates, the readers' health), so the
    roll-up step goes to the other end of the cluster: in a cluster of processes, not the busiest one.
    """
    n = 0
    while bytewax_worker_of(f"anomaly-roll-ups-{n}", shards) != shards - 1:
        n += 1
    return f"anomaly-roll-ups-{n}"


class ShardRouter:
    """Splits batch summaries by the shard that owns each cell; one per dataflow, shared by its readers."""

    def __init__(self, shards: int) -> None:
        if shards < 1:
            raise ValueError("a cluster has at least one shard")
        self.shards = shards
        self.keys = shard_keys(shards)
        self._country_start: dict[str, int] = {}

    def shard_of(self, country: str, device: str) -> int:
        """The shard that owns the cell (country, device_type)."""
        start = self._country_start.get(country)
        if start is None:
            start = self._country_start[country] = zlib.crc32(country.encode())
        # A device type outside the contract cannot be counted (the decoder rejects it); hash it all the same.
        device_index = _DEVICE_INDEX.get(device)
        if device_index is None:
            device_index = zlib.crc32(device.encode())
        return (start + device_index) % self.shards

    def split(self, summary: BatchSummary) -> list[tuple[str, BatchSummary]]:
        """The summary's part for every shard, keyed by the shard's state key (every shard gets the progress)."""
        if self.shards == 1:
            return [(self.keys[0], summary)]
        fine = self._split_partials(summary.fine)
        coarse_only = self._split_partials(summary.coarse_only)
        fine_rows = self._split_rows(summary.fine_rows)
        coarse_rows = self._split_rows(summary.coarse_rows)
        parts = [
            (
                self.keys[0],
                replace(
                    summary,
                    fine=fine[0],
                    coarse_only=coarse_only[0],
                    fine_rows=fine_rows[0],
                    coarse_rows=coarse_rows[0],
                    shard=0,
                ),
            )
        ]
        for shard in range(1, self.shards):
            parts.append(
                (
                    self.keys[shard],
                    BatchSummary(
                        partition=summary.partition,
                        high_event_time_ms=summary.high_event_time_ms,
                        state=summary.state,
                        fine=fine[shard],
                        coarse_only=coarse_only[shard],
                        fine_rows=fine_rows[shard],
                        coarse_rows=coarse_rows[shard],
                        layout=summary.layout,
                        shard=shard,
                    ),
                )
            )
        return parts

    def _split_partials(self, partials: Partials) -> list[Partials]:
        out: list[Partials] = [{} for _ in range(self.shards)]
        shard_of = self.shard_of
        for key, value in partials.items():
            # (window_start_ms, aggregate, country, device_type, ...): every aggregate starts with the cell.
            out[shard_of(key[2], key[3])][key] = value  # type: ignore[arg-type]
        return out

    def _split_rows(self, rows: Rows) -> list[Rows]:
        out: list[Rows] = [{} for _ in range(self.shards)]
        shard_of = self.shard_of
        for key, row in rows.items():
            out[shard_of(key[1], key[2])][key] = row
        return out
