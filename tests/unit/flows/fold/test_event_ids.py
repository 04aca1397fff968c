"""The duplicate-detection memory: same answers as a plain set of ids, through table growth and forgetting."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.fold.event_ids import EventIds, id_hash


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), distinct=st.integers(1, 5_000), windows=st.integers(1, 4))
def test_answers_like_a_set_of_ids(seed: int, distinct: int, windows: int) -> None:
    rng = random.Random(seed)
    ids = EventIds()
    reference: dict[int, set[str]] = {}
    # Re-deliveries (the same id again) mixed with new ids, in several windows, past the table's first growth.
    for _ in range(distinct * 2):
        window = rng.randrange(windows) * 60_000
        event_id = f"e{rng.randrange(distinct)}"
        seen = reference.setdefault(window, set())
        assert ids.first_time(window, event_id) == (event_id not in seen)
        seen.add(event_id)
    assert len(ids) == sum(len(s) for s in reference.values())


def test_forgotten_windows_start_afresh_and_later_ones_are_kept() -> None:
    ids = EventIds()
    for i in range(3000):
        assert ids.first_time(0, f"a{i}")
        assert ids.first_time(60_000, f"a{i}")  # the same id in another window is another event's
    ids.forget_before(0)
    assert len(ids) == 3000
    assert ids.first_time(0, "a1"), "a forgotten window remembers nothing"
    assert not ids.first_time(60_000, "a1")


def test_id_hash_is_stable_across_processes() -> None:
    # A fixed value: Python's own str hash would change with every process (PYTHONHASHSEED).
    assert id_hash("session-1") == 0xC07EA64948C9A30
