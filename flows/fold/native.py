"""The playback fold in Rust (native/, the `streampulse_native` module), where it is installed.

Folding is most of a flow's CPU: Python spends about 2.5 µs per event in
`PartitionAggregator.add_all` with a `PlaybackFolder`, of which reading the
event is a tenth. `streampulse_native.PlaybackCore` is the same fold —
lateness, duplicate ids, rows, partials, sessions — in Rust, and
`NativePlaybackAggregator` puts it behind `PartitionAggregator`'s interface.
The Python modules stay the reference: the tests hold the two equal batch by
batch (tests/unit/flows/fold/test_native_fold.py), and their snapshots share one layout,
so a recovery directory written by one is resumed by the other.

`make_aggregator` picks the native fold for playback partitions when the
module is importable and `STREAMPULSE_NATIVE` is not `0`; sign-up events
(a small share of the traffic) always fold in Python.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from functools import cache
from typing import Any

from flows.fold.partition_aggregator import Folder, PartitionAggregator, pack_snapshot, unpack_snapshot
from flows.fold.playback import EVENT_TYPES, ROW_LAYOUT, PlaybackFolder, StreamStartsFolder
from flows.partials import BatchSummary, PartitionState
from flows.windows.sketch import LOG_GAMMA
from settings.windows import WindowConfig

log = logging.getLogger(__name__)

ENV_SWITCH = "STREAMPULSE_NATIVE"
NATIVE_ROW_WIDTH = 16  # native/src/batch.rs WIDTH


@cache
def native_core() -> Any | None:
    """The `PlaybackCore` class, or None when not installed or switched off (`STREAMPULSE_NATIVE=0`)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    try:
        from streampulse_native import PlaybackCore  # built from native/ (pip install ./native)
    except ImportError:
        log.warning(
            "the native playback fold is not installed (pip install ./native): folding in Python, "
            "about a third slower on all metrics"
        )
        return None
    if len(ROW_LAYOUT) != NATIVE_ROW_WIDTH:
        log.warning(
            "the native playback fold has rows of %d slots, the flow %d: folding in Python",
            NATIVE_ROW_WIDTH,
            len(ROW_LAYOUT),
        )
        return None
    log.info("playback events fold in Rust (streampulse_native; STREAMPULSE_NATIVE=0 folds them in Python)")
    return PlaybackCore


class NativePlaybackAggregator:
    """`PartitionAggregator` with a `PlaybackFolder` or `StreamStartsFolder`, folded by `streampulse_native`."""

    def __init__(self, partition: str, windows: WindowConfig, folder: PlaybackFolder | StreamStartsFolder) -> None:
        core = native_core()
        if core is None:
            raise RuntimeError("streampulse_native is not available")
        self.partition = partition
        starts_only = isinstance(folder, StreamStartsFolder)
        self._layout = folder.row_layout
        self._core = core(
            windows.fine_ms,
            windows.coarse_ms,
            windows.allowed_lateness_ms,
            0 if isinstance(folder, StreamStartsFolder) else folder.session_timeout_ms,
            starts_only,
            LOG_GAMMA,
            windows.fine_name,
            windows.coarse_name,
            list(EVENT_TYPES),
        )

    def add(self, event: Any) -> None:
        """Fold one decoded, valid event."""
        self._core.add_all((event,))

    def add_all(self, events: Iterable[Any]) -> None:
        """Fold decoded, valid events, in partition order."""
        self._core.add_all(events)

    @property
    def high_event_time_ms(self) -> int:
        """The newest event time seen on the partition."""
        return int(self._core.high_event_time_ms)

    def summary(self, state: PartitionState) -> BatchSummary:
        """Hand over what the batch added, and forget what can no longer change an open window."""
        high, fine, coarse_only, late, fine_rows, coarse_rows, duplicates = self._core.summary(state == "active")
        return BatchSummary(
            partition=self.partition,
            high_event_time_ms=high,
            state=state,
            fine=fine,
            coarse_only=coarse_only,
            late=late,
            fine_rows=fine_rows,
            coarse_rows=coarse_rows,
            layout=self._layout,
            duplicates=duplicates,
        )

    def snapshot(self) -> bytes:
        """As `PartitionAggregator.snapshot`, in its layout."""
        return pack_snapshot(self._core.state())

    def restore(self, snapshot: bytes) -> None:
        """Continue from a snapshot of either aggregator of the same partition."""
        self._core.restore(*unpack_snapshot(self.partition, snapshot))

    @property
    def keys_held(self) -> int:
        """Open sessions held."""
        return int(self._core.keys_held)

    @property
    def remembered_ids(self) -> int:
        """How many event ids are held for duplicate detection."""
        return int(self._core.remembered_ids)


Aggregator = PartitionAggregator | NativePlaybackAggregator


def make_aggregator(partition: str, windows: WindowConfig, folder: Folder) -> Aggregator:
    """The native aggregator for playback folders when available, else the Python one."""
    if isinstance(folder, PlaybackFolder | StreamStartsFolder) and native_core() is not None:
        return NativePlaybackAggregator(partition, windows, folder)
    return PartitionAggregator(partition, windows, folder)
