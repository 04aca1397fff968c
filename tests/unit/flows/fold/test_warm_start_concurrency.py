"""Concurrent streams on a warm start: the ground truth and the flows' fold agree.

A warm start (the load generator's default) begins with sessions already playing: their first events are
heartbeats, pauses or rebuffers, never a play_start. The flows count them from the first such event (an
operator restarting the flow wants concurrency right away), and so must the truth (loadgen/TRUTH.md).
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from flows.fold.playback import PlaybackFolder
from flows.windows.store import WindowStore
from loadgen.api import Generated, generate
from loadgen.config import ModelParams
from settings.windows import WindowConfig
from tests.unit.aggregators import PLAYBACK_AGGREGATORS, MakeAggregator

WINDOWS = WindowConfig(fine_ms=10_000, coarse_ms=60_000, allowed_lateness_ms=30_000)
TIMEOUT_MS = 60_000
START_MS = 1_714_521_600_000
PLAYBACK_KEY = "session_id"


@pytest.fixture(scope="module")
def warm_run() -> Generated:
    return generate(
        seed=21,
        events=30_000,
        start_ms=START_MS,
        span_ms=20 * 60_000,
        params=ModelParams(warm_start=True),
        session_timeout_ms=TIMEOUT_MS,
    )


def _truth_concurrency(truth: dict[str, Any], label: str) -> Counter[tuple[int, str, str]]:
    counts: Counter[tuple[int, str, str]] = Counter()
    for window in truth["windows"][label]["windows"]:
        for cell in window["cells"]:
            if cell.get("concurrent_streams"):
                counts[(window["start_ms"], cell["country"], cell["device_type"])] = cell["concurrent_streams"]
    return counts


def _fold_concurrency(make: MakeAggregator, events: list[dict[str, Any]]) -> Counter[tuple[int, str, str]]:
    """Final fine-window concurrent streams of the flows' fold, fed in delivery order in batches."""
    aggregator = make("p", WINDOWS, PlaybackFolder(WINDOWS, TIMEOUT_MS))
    store = WindowStore(WINDOWS, ["p"])
    updates = []
    for i in range(0, len(events), 500):
        for e in events[i : i + 500]:
            aggregator.add(SimpleNamespace(**e))
        store.merge(aggregator.summary("active"))
        updates += store.publish()
    store.merge(aggregator.summary("finished"))
    updates += store.finish()
    counts: Counter[tuple[int, str, str]] = Counter()
    for update in updates:
        if update.final and update.resolution == "10s" and update.complete:
            for (country, device), value in update.complete.get("concurrent_streams", {}).items():
                if value:
                    counts[(update.window_start_ms, country, device)] = value
    return counts


def test_a_warm_start_begins_with_sessions_already_playing(warm_run: Generated) -> None:
    first: dict[str, str] = {}
    for e in warm_run.events():
        if PLAYBACK_KEY in e:
            first.setdefault(e[PLAYBACK_KEY], e["event_type"])
    already_playing = sum(kind not in ("play_attempt", "play_start", "start_failure") for kind in first.values())
    assert already_playing > 100, "the run must hold sessions that were playing before it began"


@pytest.mark.parametrize("make", PLAYBACK_AGGREGATORS)
def test_warm_start_concurrency_of_the_truth_equals_the_fold(make: MakeAggregator, warm_run: Generated) -> None:
    delivered = [m.event for m in warm_run.messages if m.event is not None and PLAYBACK_KEY in m.event]
    folded = _fold_concurrency(make, delivered)
    truth = _truth_concurrency(warm_run.truth, "10s")
    assert sum(truth.values()) > 0
    differing = {k: (truth.get(k, 0), folded.get(k, 0)) for k in truth.keys() | folded.keys() if truth[k] != folded[k]}
    assert not differing, f"{len(differing)} cells differ (truth, fold), e.g. {sorted(differing.items())[:5]}"
    # One heartbeat interval (30 s) in, every session already playing has shown itself and counts: the level is
    # already that of the rest of the run, not climbing from zero as sessions restart.
    level = Counter[int]()
    for (w, _, _), v in truth.items():
        level[w] += v
    assert level[START_MS + 20_000] >= 0.9 * max(level.values())
