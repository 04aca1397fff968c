"""How a peer's extra counts are put down to the late events it let through (bench/contenders.py)."""

from __future__ import annotations

from bench.contenders import late_counted
from bench.preload import Cells, Preloaded


def _data(expected: Cells, late: Cells) -> Preloaded:
    return Preloaded("p", "s", 0, 0, 0.0, 0.0, expected, sum(late.values()), 0, 0, 0, 0, late)


def test_extra_counts_in_cells_with_late_events_are_late_ones_at_most_as_many() -> None:
    a, b, c = (0, "US", "tv"), (10_000, "US", "tv"), (20_000, "FR", "web")
    data = _data(expected={a: 5, b: 2}, late={a: 1, c: 3})
    # a: 2 extra but only 1 late there; b: 1 extra, no late event there; c: 2 extra, 3 late there.
    assert late_counted(data, {a: 7, b: 3, c: 2}) == 1 + 0 + 2


def test_missing_counts_do_not_offset_extra_ones() -> None:
    a, b = (0, "US", "tv"), (10_000, "US", "tv")
    data = _data(expected={a: 5, b: 5}, late={a: 2, b: 2})
    assert late_counted(data, {a: 1, b: 6}) == 1
    assert late_counted(data, dict(data.expected)) == 0
