"""The live detector's state at coarse event-time intervals, and a replay's detector started from it.

A replay that starts its detectors cold spends its first `warmup_windows`
learning and judges the rest against baselines learned from the range alone,
so its anomalies differ from the live run's. The live run therefore leaves its
detectors' state every `interval_ms` of event time (sinks/detector_state.py
stores it in Redis): each part — one per shard of the cells' series, plus the
roll-up step's — is taken just before the part steps its first window past an
interval boundary B, so it holds every window ending at or before B and none
after: it is *valid through* B. (The last shard's cells step in the roll-up
step's detector, flows/anomaly/steps.py, so its series are in that part.)
Resumed from it, a detector stepping the windows from B on makes the same
verdicts as the live one did.

Series are independent, so the parts can be cut again for a replay on
another shard count (`reshard`): the cells' series go to the shard that owns
them there (flows/sharding.py), the roll-up series to the roll-up step (or,
on one shard, all into the one detector that watches its roll-ups itself).

Nothing here does I/O or runs per event: `StateSchedule.due` is one integer
test per final window, and a snapshot is taken once per interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.series import ALL
from flows.sharding import ShardRouter

# The part of the roll-up step (a cluster's (country, all), (all, device_type) and (all, all) series); a shard's
# part is named by its number.
ROLL_UP_PART = "roll-ups"

DetectorSnapshot = dict[str, Any]


def shard_part(shard: int) -> str:
    """The part name of a shard's cell series."""
    return str(shard)


def parts_of(shards: int) -> frozenset[str]:
    """Every part a state saved by `shards` shards holds: one shard's alone, else the roll-up step's and the others'.

    The last shard has no part of its own: its cells step in the roll-up step's detector.
    """
    if shards == 1:
        return frozenset({shard_part(0)})
    return frozenset({shard_part(shard) for shard in range(shards - 1)} | {ROLL_UP_PART})


def is_whole(parts: Iterable[str], shards: int) -> bool:
    """Whether `parts` are all of a state saved by `shards` shards, as this version or an earlier one saved it.

    Before the last shard's cells stepped with the roll-ups, every shard saved a part of its own; such a state
    is whole too, and `reshard` cuts it into today's parts.
    """
    found = frozenset(parts)
    return found == parts_of(shards) or (shards > 1 and found == parts_of(shards) | {shard_part(shards - 1)})


@dataclass(frozen=True, slots=True)
class SavedState:
    """One part of the live detectors' state, valid through `through_ms`, taken by a cluster of `shards` shards."""

    part: str
    shards: int
    through_ms: int
    snapshot: DetectorSnapshot


class StateSchedule:
    """When a detector's state is due: once per interval of event time, before its first window past a boundary."""

    def __init__(self, interval_ms: int) -> None:
        if interval_ms <= 0:
            raise ValueError("the detector state interval must be positive")
        self._interval_ms = interval_ms
        self._saved_through = -(2**62)

    def due(self, detector: AnomalyDetector, window_start_ms: int) -> int | None:
        """The boundary the detector's state is valid through, if it is to be saved before stepping this window.

        None when the last boundary was saved already, or the detector has stepped nothing yet (a cold state is
        what a replay without one starts from anyway), or it has already stepped past the boundary (a window it
        ignores as seen).
        """
        through = window_start_ms - window_start_ms % self._interval_ms
        if through <= self._saved_through:
            return None
        next_start = detector.next_window_start
        if next_start is None or next_start > through:
            return None
        self._saved_through = through
        return through


@dataclass(frozen=True)
class WarmStart:
    """The live state a replay starts its detectors from: one saved state, in parts for the replay's cluster."""

    through_ms: int
    shards: int  # the replay's shards: `parts` are cut for them (`reshard`)
    parts: Mapping[str, DetectorSnapshot]
    # The replay's first window: a later one than `through_ms` leaves windows the replay does not feed.
    from_ms: int

    def detector(self, part: str, config: DetectorConfig | None = None) -> AnomalyDetector:
        """The detector of `part`, resumed from the live one's state.

        Windows between `through_ms` and the replay's start are not fed: they are a break in the data (the
        recent-window sums restart, the baselines stay), as a gap longer than `max_gap_windows` is live.
        """
        detector = AnomalyDetector.restore(self.parts[part], config)
        if self.from_ms > self.through_ms:
            detector.break_in_data()
        return detector


class ReshardError(ValueError):
    """The saved parts cannot be cut for another shard count without changing verdicts."""


def _is_roll_up(country: str, device: str) -> bool:
    return country == ALL or device == ALL


def reshard(parts: Mapping[str, DetectorSnapshot], shards: int, break_in_data: bool) -> dict[str, DetectorSnapshot]:
    """The parts of one saved state (any shard count) as the parts of a cluster of `shards` shards.

    Each series keeps its record; each new part is one detector's snapshot. One detector has one next window,
    so the parts must have stepped the same windows (they do whenever every shard had data in the last window
    before the boundary); otherwise, unless the replay takes the windows before it as a break anyway
    (`break_in_data`), ReshardError says so.
    """
    stepped = [part for part in parts.values() if part["next_start"] is not None]
    if not stepped:
        raise ReshardError("the saved state has stepped no window")
    next_starts = {part["next_start"] for part in stepped}
    if len(next_starts) > 1 and not break_in_data:
        raise ReshardError(
            "its shards last stepped different windows (a shard had no data just before the boundary), which one "
            "detector per shard of another count cannot hold"
        )
    template = stepped[0]
    router = ShardRouter(shards)
    alone = shards == 1
    names = sorted(parts_of(shards))

    def part_of(country: str, device: str) -> str:
        if alone:
            return shard_part(0)
        shard = None if _is_roll_up(country, device) else router.shard_of(country, device)
        # The roll-ups and the last shard's cells step in the roll-up step's detector (flows/anomaly/steps.py).
        return ROLL_UP_PART if shard is None or shard == shards - 1 else shard_part(shard)

    cut: dict[str, DetectorSnapshot] = {
        name: {
            **template,
            "roll_up": alone,
            "next_start": max(next_starts),
            "groups": [],
            "series": [],
        }
        for name in names
    }
    for part in parts.values():
        for country, device in part["groups"]:
            cut[part_of(country, device)]["groups"].append([country, device])
        for series in part["series"]:
            cut[part_of(series[1], series[2])]["series"].append(series)
    for snapshot in cut.values():
        snapshot["groups"] = sorted(snapshot["groups"])
        if not snapshot["series"]:
            snapshot["next_start"] = None  # a part with nothing to judge yet starts as a fresh detector does
    return cut
