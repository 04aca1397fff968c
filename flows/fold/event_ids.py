"""The event ids a partition remembers to drop re-deliveries, per coarse window.

A re-delivered event keeps its `event_id` and key, so duplicates are caught on
their partition (flows/fold/partition_aggregator.py). Ids are remembered per
coarse window start and dropped together once that window has closed on the
partition: after that, a copy is late, not a duplicate.

They are the biggest state a live flow holds: a Python set of the id strings
costs about 110 bytes per id, a set of 64-bit ints about 75. Here each
window's ids are 63-bit hashes in an open-addressing table of 8-byte slots
kept at most half full: 16 to 32 bytes per id, sized from the previous
window's count so it rarely grows. Two distinct ids share a hash with
probability about n² / 2⁶⁴ — for a million ids in a window, 1 in 36 million.
"""

from __future__ import annotations

from array import array
from typing import Any

from xxhash import xxh3_64_intdigest

_MIN_SLOTS = 1024


def id_hash(identifier: str) -> int:
    """A 60-bit hash of an id, the same in every process (Python's own str hash is salted per process).

    60 bits keep the int at 32 bytes; collisions among a million ids held at once: about one in a million.
    """
    return xxh3_64_intdigest(identifier.encode()) >> 4


# A window's table: [slots, mask, count] (a list, not an object: fewer lookups on the per-event path).
_Table = list[Any]
_SLOTS, _MASK, _COUNT = 0, 1, 2


def _table(size: int) -> _Table:
    return [array("Q", bytes(8 * size)), size - 1, 0]


def _grow(table: _Table) -> None:
    mask = table[_MASK] * 2 + 1
    slots = array("Q", bytes(8 * (mask + 1)))
    for h in table[_SLOTS]:
        if h:
            i = h & mask
            while slots[i]:
                i = (i + 1) & mask
            slots[i] = h
    table[_SLOTS], table[_MASK] = slots, mask


class EventIds:
    """Ids seen per coarse window start."""

    def __init__(self) -> None:
        self._by_window: dict[int, _Table] = {}
        self._last_count = 0  # ids of the newest window dropped: the size of the next one

    def first_time(self, window_start_ms: int, event_id: str) -> bool:
        """Remember `event_id` in its window; False if it was already there (a re-delivery)."""
        h = (xxh3_64_intdigest(event_id.encode()) >> 1) | 1
        table = self._by_window.get(window_start_ms)
        if table is None:
            table = self._by_window[window_start_ms] = self._new_table()
        slots, mask, count = table
        i = h & mask
        held = slots[i]
        while held:
            if held == h:
                return False
            i = (i + 1) & mask
            held = slots[i]
        slots[i] = h
        table[_COUNT] = count + 1
        if count * 2 >= mask:
            _grow(table)
        return True

    def _new_table(self) -> _Table:
        # Windows of a steady stream hold about as many ids as the one before: start there, half full at most.
        slots = _MIN_SLOTS
        while slots < 2 * self._last_count:
            slots *= 2
        return _table(slots)

    def forget_before(self, horizon_ms: int) -> None:
        """Drop the ids of windows starting at or before `horizon_ms`."""
        for start in [s for s in self._by_window if s <= horizon_ms]:
            self._last_count = max(self._last_count // 2, self._by_window.pop(start)[_COUNT])

    def snapshot(self) -> tuple[dict[int, _Table], int]:
        """Its tables, copied (the live ones keep changing)."""
        tables = {start: [array("Q", slots), mask, count] for start, (slots, mask, count) in self._by_window.items()}
        return tables, self._last_count

    def restore(self, state: tuple[dict[int, _Table], int]) -> None:
        """Take back what `snapshot` returned."""
        self._by_window, self._last_count = state

    def __len__(self) -> int:
        return sum(table[_COUNT] for table in self._by_window.values())
