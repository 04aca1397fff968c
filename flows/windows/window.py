"""One open window in the window store: its values, what changed since it was written, and the update written.

`Window` holds an open window's aggregates (aggregate -> dims -> value), the
row-counted aggregates still to expand, and its concurrency changes (fine
windows). `WindowUpdate` is what the store publishes for it: absolute values,
so writing one twice is harmless.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ShardProgress", "Window", "WindowUpdate", "WindowValues", "add_row", "add_to", "set_value"]

# aggregate -> (dims...) -> value, within one window
WindowValues = dict[str, dict[tuple[str, ...], int]]


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """What changed in one window since its last publish, as absolute values (idempotent to write)."""

    resolution: str
    window_start_ms: int
    window_end_ms: int
    final: bool
    # The aggregates that changed since this window was last published, each complete: what a writer writes.
    changes: WindowValues
    # On the final update only: the window's complete values (what /metrics exports).
    complete: WindowValues | None
    late: dict[str, int]
    watermark_ms: int
    # The shard that published it (its cells only) and how many there are (flows/sharding.py).
    shard: int = 0
    shards: int = 1


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """A shard's progress after a publish: every window ending at or before `final_through_ms` is final there.

    Published after the publish's updates, so once every shard's progress has passed a window's end, every
    shard has written that window final, including the shards that held nothing of it.
    """

    shard: int
    shards: int
    watermark_ms: int
    final_through_ms: int


@dataclass(slots=True)
class Window:
    """An open window's values and bookkeeping."""

    values: WindowValues = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    dirty: bool = True
    # Fine windows only: the change in open sessions at this window's end, per (country, device_type).
    concurrency_change: dict[tuple[str, ...], int] = field(default_factory=dict)
    # Row-counted aggregates, per row layout then (country, device_type); expanded into `values` on publish.
    rows: dict[int, dict[tuple[str, str], list[int]]] = field(default_factory=dict)
    rows_changed: bool = False
    # False for a fine window opened only to hold the sessions open at its end (filled in): no data of its own.
    has_data: bool = True
    # Written at least once: once emptied (its sessions' ends came in), it is written again, else what was written
    # stays (partial, with sessions that were not open).
    published: bool = False

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # A window snapshotted by an earlier version lacks the fields added since: the defaults that fill in and
        # write the most, so a restart from its recovery directory misses nothing.
        self.has_data, self.published = True, True
        for name, value in state[1].items():
            setattr(self, name, value)


def set_value(window: Window, aggregate: str, values: dict[tuple[str, ...], int]) -> None:
    """Set one aggregate of the window to `values` (marking it changed only if it differs)."""
    if window.values.get(aggregate, {}) == values:
        return
    if values:
        window.values[aggregate] = values
    else:
        window.values.pop(aggregate, None)
    window.changed.add(aggregate)
    window.dirty = True


def add_row(rows: dict[tuple[str, str], list[int]], dims: tuple[str, str], row: list[int]) -> None:
    """Add a row of counts to the window's rows of one layout (the row itself is kept when it is the first)."""
    held = rows.get(dims)
    if held is None:
        rows[dims] = row
    else:
        held[:] = map(operator.add, held, row)


def add_to(window: Window, aggregate: str, dims: tuple[str, ...], value: int) -> None:
    """Add `value` to one aggregate at `dims`."""
    values = window.values.get(aggregate)
    if values is None:
        values = window.values[aggregate] = {}
    values[dims] = values.get(dims, 0) + value
    window.changed.add(aggregate)
    window.dirty = True
