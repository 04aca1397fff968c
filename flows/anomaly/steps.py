"""The dataflow steps that feed final fine windows to the anomaly detector, one detector per shard plus roll-ups.

    each shard's WindowUpdate + ShardProgress ──► ShardDetectorLogic (the shard's own key: its cells' series)
                                                     │ Detection (cells)       │ RollUpInput (a few sums per window)
                                                     ▼                         ▼
                                                  detections ◄── RollUpLogic (one key: (country, all), (all,
                                                                 device_type) and (all, all) series, and the
                                                                 last shard's cells)

A cell's series only ever need that cell's windows, so they run on the shard
that owns the cell (flows/sharding.py), on the worker that holds its window
state: nothing crosses workers for them. The roll-up series need every
shard's cells; each shard sends, per final fine window, its cells summed
into their roll-up groups (at most countries + device types + 1 small
vectors), and the roll-up step adds them up once every shard's progress has
passed the window — so it steps a window only when it has all of it, in
window order, as a single detector would. The roll-up step runs on the last
worker, beside the last shard, and that shard sends it its cells as well
rather than stepping a detector of its own: a detector step has a fixed cost
(about 0.33 ms, whatever its series), and the last worker would otherwise pay
it twice per window (measured on 2 shards: 0.70 + 0.64 ms for the shard and
the roll-ups apart, 0.92 ms in one step; bench/detector_step_cost.py). Both
keep plain state that bytewax snapshots with the shard's store, so a restart
resumes them at the same window. The outputs — anomaly events and current scores — go to Kafka, Redis
and /metrics (sinks/anomaly_sink.py, sinks/prometheus.py).

The live run also leaves each step's detector state once per interval of event
time (`SavedState`, stored by sinks/detector_state.py), and a replay starts
each step's detector from such a state (`WarmStart`) rather than cold:
flows/anomaly/warm_start.py says when and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import AnomalyEvent, Detection
from flows.anomaly.series import ALL, Cell, Cells, cell_inputs
from flows.anomaly.warm_start import ROLL_UP_PART, SavedState, StateSchedule, WarmStart, shard_part
from flows.sharding import roll_up_key
from flows.windows.store import ShardProgress, WindowUpdate
from settings.windows import WindowConfig

DetectorState = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RollUpInput:
    """What one shard sends the roll-up step after a publish: its final fine windows' roll-up sums, its progress."""

    shard: int
    shards: int
    final_through_ms: int
    # window_start_ms -> (window_end_ms, roll-up group -> summed cell inputs); from the last shard, its own cells too
    windows: dict[int, tuple[int, Cells]]


def roll_up_sums(cells: Cells) -> Cells:
    """Cells summed into their roll-up groups: (country, all), (all, device_type) and (all, all)."""
    sums: Cells = {}
    for (country, device), cell in cells.items():
        _add_cells(sums, {(country, ALL): cell, (ALL, device): cell, (ALL, ALL): cell})
    return sums


def _add_cells(into: Cells, cells: Cells) -> None:
    """Add each group's vector into `into` (copied, never shared)."""
    for group, cell in cells.items():
        held = into.get(group)
        into[group] = list(cell) if held is None else [a + b for a, b in zip(held, cell, strict=True)]


@dataclass(frozen=True)
class StateSaving:
    """A live run's detector states: every `interval_ms` of event time, by a cluster of `shards` shards."""

    interval_ms: int
    shards: int


class _Saver:
    """Takes one step's detector state when due (`StateSchedule`), named as its part of the cluster's state."""

    def __init__(self, saving: StateSaving | None, part: str | None) -> None:
        self._saving = saving
        self._schedule = StateSchedule(saving.interval_ms) if saving is not None else None
        self.part = part

    def before(self, detector: AnomalyDetector, window_start_ms: int, out: list[SavedState]) -> None:
        """Add the detector's state to `out` if it is due before it steps the window starting at `window_start_ms`."""
        if self._schedule is None or self._saving is None or self.part is None:
            return
        through = self._schedule.due(detector, window_start_ms)
        if through is not None:
            out.append(SavedState(self.part, self._saving.shards, through, detector.snapshot()))


def _observe_in_order(
    detector: AnomalyDetector,
    windows: Sequence[tuple[int, int, Cells]],
    detections: list[Detection],
    saver: _Saver,
    states: list[SavedState],
) -> None:
    # Only the newest window's scores reach /metrics: a replay finalising hours at once skips the rest.
    last = len(windows) - 1
    for i, (start, end, cells) in enumerate(sorted(windows, key=lambda w: w[0])):
        if cells:  # a window without inputs is not stepped (AnomalyDetector.observe_cells)
            saver.before(detector, start, states)
        detections += detector.observe_cells(start, end, cells, scores=i == last)


# What a shard's detector step emits: detections, its roll-up sums with its progress, its saved state.
ShardOutput = Detection | RollUpInput | SavedState


class ShardDetectorLogic(StatefulBatchLogic[WindowUpdate | ShardProgress, ShardOutput, DetectorState]):
    """One shard's cell series: each final fine window, oldest first; its roll-up sums go on with its progress.

    `alone`: the only shard, so it holds every cell and watches the roll-ups itself (one detector step a window
    instead of two; the same results: tests/unit/flows/anomaly/test_sharded_detection.py). Otherwise the last
    shard forwards its cells with its roll-up sums, and the roll-up step, on the same worker, steps them with
    the roll-ups (see the module docstring). `saving`: a live run's, which leaves the detector's state every
    interval; `warm`: a replay's, whose detector starts from this shard's part of the live state. The shard,
    and so whether it forwards, is known from its first input: bytewax does not tell a logic its key.
    """

    def __init__(
        self,
        resume: DetectorState | None,
        config: DetectorConfig | None = None,
        alone: bool = False,
        saving: StateSaving | None = None,
        warm: WarmStart | None = None,
    ) -> None:
        self._alone = alone
        self._config = config
        self._saver = _Saver(saving, None)
        self._warm = warm if resume is None else None  # a recovery snapshot is newer than any live state
        self._detector: AnomalyDetector | None = None  # None while forwarding, or until the first input
        # Whether this shard forwards its cells to the roll-up step; None: not known before the first input.
        self._forwards: bool | None = None
        self._pending: dict[int, tuple[int, Cells]] = {}
        if resume is not None:
            # A snapshot with a detector steps its own cells, one without forwards them. A snapshot written before
            # the last shard forwarded keeps its detector: the roll-up step's own snapshot holds no cells of it.
            if "detector" in resume:
                self._detector = AnomalyDetector.restore(resume["detector"], config)
                self._forwards = False
            else:
                self._forwards = True
            self._pending = {
                int(start): (end, {tuple(g): c for g, c in cells}) for start, end, cells in resume["pending"]
            }

    def _start(self, first: WindowUpdate | ShardProgress) -> None:
        """At the first input: whether this shard forwards, and if not its detector (warm from its part, or new)."""
        if self._forwards is None:
            self._forwards = not self._alone and first.shards > 1 and first.shard == first.shards - 1
        if not self._forwards:
            self._saver.part = shard_part(first.shard)
            if self._detector is None:
                self._detector = (
                    AnomalyDetector(self._config, roll_up=self._alone)
                    if self._warm is None
                    else self._warm.detector(self._saver.part, self._config)
                )
        self._warm = None

    def on_batch(self, values: list[WindowUpdate | ShardProgress]) -> tuple[list[ShardOutput], bool]:
        if self._saver.part is None and not self._forwards and values:
            self._start(values[0])
        windows: list[tuple[int, int, Cells]] = []
        progress: ShardProgress | None = None
        for item in values:
            if isinstance(item, ShardProgress):
                progress = item
                continue
            assert item.complete is not None  # filtered upstream
            cells = cell_inputs(item.complete)
            if self._forwards:
                if cells:  # the cells' groups never meet the roll-ups': each has an "all"
                    self._pending[item.window_start_ms] = (item.window_end_ms, {**roll_up_sums(cells), **cells})
                continue
            windows.append((item.window_start_ms, item.window_end_ms, cells))
            if cells and not self._alone:
                self._pending[item.window_start_ms] = (item.window_end_ms, roll_up_sums(cells))
        out: list[ShardOutput] = []
        if self._detector is not None:
            detections: list[Detection] = []
            states: list[SavedState] = []
            _observe_in_order(self._detector, windows, detections, self._saver, states)
            out += [*detections, *states]
        if progress is not None and not self._alone:
            # Every window this shard made final so far is in `_pending` or was sent: the progress can go.
            out.append(RollUpInput(progress.shard, progress.shards, progress.final_through_ms, self._pending))
            self._pending = {}
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> DetectorState:
        pending = [
            [start, end, [[list(g), c] for g, c in cells.items()]] for start, (end, cells) in self._pending.items()
        ]
        if self._detector is None:
            return {"pending": pending}
        return {"detector": self._detector.snapshot(), "pending": pending}


class RollUpLogic(StatefulBatchLogic[RollUpInput, Detection | SavedState, DetectorState]):
    """The roll-up series and the last shard's cells: a window is stepped once every shard has passed it."""

    def __init__(
        self,
        resume: DetectorState | None,
        config: DetectorConfig | None = None,
        saving: StateSaving | None = None,
        warm: WarmStart | None = None,
    ) -> None:
        self._saver = _Saver(saving, ROLL_UP_PART)
        if resume is None:
            self._detector = (
                AnomalyDetector(config, roll_up=False) if warm is None else warm.detector(ROLL_UP_PART, config)
            )
            self._final_through: dict[int, int] = {}
            self._shards = 0
            self._waiting: dict[int, tuple[int, Cells]] = {}
        else:
            self._detector = AnomalyDetector.restore(resume["detector"], config)
            self._final_through = {int(shard): through for shard, through in resume["final_through"]}
            self._shards = resume["shards"]
            self._waiting = {int(s): (e, {tuple(g): c for g, c in cells}) for s, e, cells in resume["waiting"]}

    def on_batch(self, values: list[RollUpInput]) -> tuple[list[Detection | SavedState], bool]:
        for part in values:
            self._shards = part.shards
            self._final_through[part.shard] = max(part.final_through_ms, self._final_through.get(part.shard, -(2**62)))
            for start, (end, cells) in part.windows.items():
                _add_cells(self._waiting.setdefault(start, (end, {}))[1], cells)
        if len(self._final_through) < self._shards:
            return [], StatefulBatchLogic.RETAIN  # a shard not heard from yet may still hold any window
        through = min(self._final_through[shard] for shard in range(self._shards))
        ready = [(start, end, cells) for start, (end, cells) in self._waiting.items() if end <= through]
        for start, _end, _cells in ready:
            del self._waiting[start]
        detections: list[Detection] = []
        states: list[SavedState] = []
        _observe_in_order(self._detector, ready, detections, self._saver, states)
        return [*detections, *states], StatefulBatchLogic.RETAIN

    def snapshot(self) -> DetectorState:
        return {
            "detector": self._detector.snapshot(),
            "final_through": sorted(self._final_through.items()),
            "shards": self._shards,
            "waiting": [[s, e, [[list(g), c] for g, c in cells.items()]] for s, (e, cells) in self._waiting.items()],
        }


def is_final_fine_or_progress(fine_resolution: str) -> Callable[[WindowUpdate | ShardProgress], bool]:
    """A predicate keeping a shard's progress and its final updates of the fine resolution with complete values."""

    def keep(item: WindowUpdate | ShardProgress) -> bool:
        if isinstance(item, ShardProgress):
            return True
        return item.final and item.resolution == fine_resolution and item.complete is not None

    return keep


def _is_detection(item: ShardOutput) -> bool:
    return isinstance(item, Detection)


def _is_state(item: ShardOutput) -> bool:
    return isinstance(item, SavedState)


@dataclass(frozen=True)
class AnomalyOutputs:
    """The detector steps' streams: each final window's detection, and (live) the detectors' saved states."""

    detections: Stream[Detection]
    states: Stream[SavedState]


def detect_anomalies(
    outputs: Stream[WindowUpdate | ShardProgress],
    windows: WindowConfig,
    shard_keys: Sequence[str],
    config: DetectorConfig | None = None,
    saving: StateSaving | None = None,
    warm: WarmStart | None = None,
) -> AnomalyOutputs:
    """The detector's output for the shards' window updates (all resolutions, partial and final) and progress.

    `saving` (a live run): each step also leaves its detector's state once per interval of event time. `warm` (a
    replay): each step's detector starts from its part of that live state.
    """
    wanted = op.filter("final_fine_windows", outputs, is_final_fine_or_progress(windows.fine_name))
    # The shard's own key again: the same worker as its window state, so nothing moves.
    keyed = op.key_on("shard_detector_key", wanted, lambda item: shard_keys[item.shard])
    alone = len(shard_keys) == 1
    per_shard = op.stateful_batch(
        "anomaly_detector", keyed, lambda resume: ShardDetectorLogic(resume, config, alone, saving, warm)
    )
    saved = op.branch("shard_states_apart", op.map("drop_shard_key", per_shard, lambda kv: kv[1]), _is_state)
    shard_states: Stream[SavedState] = saved.trues  # type: ignore[assignment]
    if alone:
        return AnomalyOutputs(saved.falses, shard_states)  # type: ignore[arg-type]
    split = op.branch("roll_ups_apart", saved.falses, _is_detection)
    cell_detections: Stream[Detection] = split.trues  # type: ignore[assignment]
    to_roll_up: Stream[RollUpInput] = split.falses  # type: ignore[assignment]
    rolled_on = roll_up_key(len(shard_keys))
    rolled = op.stateful_batch(
        "anomaly_roll_ups",
        op.key_on("roll_up_key", to_roll_up, lambda _part: rolled_on),
        lambda resume: RollUpLogic(resume, config, saving, warm),
    )
    rolled_apart = op.branch("roll_up_states_apart", op.map("drop_roll_up_key", rolled, lambda kv: kv[1]), _is_state)
    roll_up_states: Stream[SavedState] = rolled_apart.trues  # type: ignore[assignment]
    roll_up_detections: Stream[Detection] = rolled_apart.falses  # type: ignore[assignment]
    return AnomalyOutputs(
        op.merge("all_detections", cell_detections, roll_up_detections),
        op.merge("all_detector_states", shard_states, roll_up_states),
    )


def anomaly_events(detections: Stream[Detection]) -> Stream[AnomalyEvent]:
    """The anomaly events (open, escalated, resolved, accepted) of every detection, in window order."""
    return op.flat_map("anomaly_events", detections, lambda detection: detection.events)


__all__ = [
    "AnomalyOutputs",
    "Cell",
    "RollUpInput",
    "RollUpLogic",
    "ShardDetectorLogic",
    "ShardOutput",
    "StateSaving",
    "detect_anomalies",
    "roll_up_sums",
]
