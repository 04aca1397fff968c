"""The load generator's events folded by the flows' own code, as one streampulse process folds them.

The per-partition aggregators (a playback and a sign-up partition), the
window store, and what the anomaly detector is fed: each final fine window's
cell inputs, in window order. Shared by the detector's evaluations on a day
of traffic (bench/anomaly_eval.py) and on a realistic day checked against
the ground truth (bench/realistic_fold_day.py), so both fold the same way.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from flows.anomaly.series import Cells, cell_inputs
from flows.fold.partition_aggregator import PartitionAggregator
from flows.fold.playback import PlaybackFolder
from flows.fold.signup import SignupFolder
from flows.windows.store import WindowStore
from loadgen.incident_effects import IncidentSet
from loadgen.model import Model
from schemas.contract import families
from settings.windows import WindowConfig

SESSION_TIMEOUT_MS = 60_000
SIGNUP_TIMEOUT_MS = 3_600_000
# Events folded between two merges into the store: a reader's batch.
FOLD_BATCH = 5_000
SIGNUP_TYPES = frozenset(families()["signup"].event_types)

# A final fine window: (start ms, end ms, its cells' detector inputs).
FoldedWindow = tuple[int, int, Cells]


@dataclass
class DayData:
    """What the detector is fed for one day: every final fine window's inputs, and the ground truth."""

    name: str
    windows: list[FoldedWindow]
    incidents: list[dict[str, Any]]
    events: int
    span_ms: int
    seconds: float
    cached: bool = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The garbage collector off: millions of short-lived dicts, no cycles (like loadgen.runner)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def fold_events(
    model: Model,
    windows: WindowConfig,
    end_ms: int,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    on_windows: Callable[[list[FoldedWindow], bool], None] | None = None,
) -> tuple[list[FoldedWindow], int]:
    """Every final fine window ending by `end_ms` of the model's events, in order; also how many events there were.

    `on_batch` sees each batch of events before it is folded; `on_windows` each publish's new final windows (and
    whether it was the last).
    """
    playback = PartitionAggregator("playback", windows, PlaybackFolder(windows, SESSION_TIMEOUT_MS))
    signup = PartitionAggregator("signup", windows, SignupFolder(SIGNUP_TIMEOUT_MS))
    store = WindowStore(windows, ["playback", "signup"], SESSION_TIMEOUT_MS)
    out: list[FoldedWindow] = []
    fine = windows.fine_ms

    def publish(final: bool) -> None:
        store.merge(playback.summary("finished" if final else "active"))
        store.merge(signup.summary("finished" if final else "active"))
        updates = store.finish() if final else store.publish()
        fresh = [
            (update.window_start_ms, update.window_end_ms, cell_inputs(update.complete))
            for update in sorted(updates, key=lambda u: u.window_start_ms)
            # Past the end only sessions still "open" are counted (the generator just stops): not traffic.
            if update.final
            and update.complete is not None
            and update.window_end_ms - update.window_start_ms == fine
            and update.window_end_ms <= end_ms
        ]
        out.extend(fresh)
        if on_windows is not None:
            on_windows(fresh, final)

    events = pending = 0
    for batch in model.batches(4096):
        if on_batch is not None:
            on_batch(batch)
        for event in batch:
            aggregator = signup if event["event_type"] in SIGNUP_TYPES else playback
            aggregator.add(SimpleNamespace(**event))
        events += len(batch)
        pending += len(batch)
        if pending >= FOLD_BATCH:
            publish(False)
            pending = 0
    publish(True)
    return out, events


def truth_incidents(incident_set: IncidentSet) -> list[dict[str, Any]]:
    """The incidents as the ground-truth file records them (loadgen/TRUTH.md), with their dropped attempts."""
    incidents = []
    for incident in incident_set.incidents:
        entry = incident.to_truth()
        entry["dropped_attempts"] = incident_set.dropped_attempts[incident.name]
        incidents.append(entry)
    return incidents
