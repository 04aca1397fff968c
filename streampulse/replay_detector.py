"""Where a replay's anomaly detectors start: the live run's saved state at or before `--from`, or cold.

`streampulse replay` calls `detector_start` once, before the dataflow is
built; the line it returns is logged and kept in the replay's marker hash, so
whoever reads the replay's anomalies can tell whether they rest on the live
baselines (flows/anomaly/warm_start.py says why a warm start reproduces the
live verdicts; sinks/detector_state.py how the states are stored).
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime

import redis

from flows.anomaly.warm_start import ReshardError, WarmStart, parts_of, reshard
from sinks.detector_state import newest_state


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def detector_start(
    client: redis.Redis, live_namespace: str, mode: str, from_ms: int, shards: int
) -> tuple[WarmStart | None, str]:
    """The live state the replay's detectors start from (None: cold), and the one line that says which.

    `mode` is --detector-start: `cold`, or `live` (the newest whole state of `live_namespace` valid through a
    time at or before `from_ms`, cut for `shards` if the live run had another count). A state that cannot be
    used (another shard count whose parts cannot be cut, or one this version cannot read) is a cold start
    whose line says why: a replay is never refused for want of a baseline.
    """
    if mode == "cold":
        return None, "anomaly detector: cold: --detector-start cold"
    found = newest_state(client, live_namespace, from_ms)
    if found.state is None:
        return (
            None,
            f"anomaly detector: cold: no live state at or before {_iso(from_ms)} in namespace {live_namespace!r}",
        )
    state = found.state
    saved = f"the live state through {_iso(state.through_ms)}"
    gap = state.through_ms < from_ms
    try:
        parts = state.decoded()
        resharded = ""
        if state.shards != shards:
            resharded = f", saved by {state.shards} shards and cut for {shards}"
        elif set(parts) != parts_of(shards):  # saved by an earlier version, the last shard with a part of its own
            resharded = ", saved with a part for every shard and cut for this version's parts"
        if resharded:
            parts = reshard(parts, shards, break_in_data=gap)
        warm = WarmStart(state.through_ms, shards, parts, from_ms)
        for part in parts:
            warm.detector(part)  # fails here, at start, rather than in a worker mid-run
    except ReshardError as exc:
        return None, (
            f"anomaly detector: cold: {saved} was saved by {state.shards} shards and this replay runs {shards}, "
            f"but {exc}; replay with {state.shards} workers in all (processes x --workers) to start from it"
        )
    except (ValueError, KeyError, TypeError, IndexError, zlib.error, json.JSONDecodeError) as exc:
        return None, f"anomaly detector: cold: {saved} cannot be read by this version ({type(exc).__name__}: {exc})"
    line = f"anomaly detector: warm from live state through {_iso(state.through_ms)}{resharded}"
    if gap:
        line += (
            f" ({(from_ms - state.through_ms) // 1000} s before --from: those windows are a break, the recent-window "
            "sums restart, the baselines stay)"
        )
    return warm, line
