"""The Rust playback fold (native/) equals the Python one (the reference), batch by batch, on realistic traffic."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import pytest

from flows.fold.native import NativePlaybackAggregator
from flows.fold.partition_aggregator import PartitionAggregator
from flows.fold.playback import PlaybackFolder, StreamStartsFolder
from flows.partials import PartitionState
from flows.windows.sketch import bucket_of
from loadgen.api import generate
from loadgen.config import FaultConfig
from schemas.decoder import EventDecoder, Rejection
from settings.windows import WindowConfig
from tests.unit.aggregators import needs_native
from tests.unit.gap_traffic import PHASE_MS, TIMEOUT_MS, gap_traffic

pytestmark = needs_native

START_MS = 1_714_521_600_000
WINDOWS = WindowConfig()
SUMMARY_FIELDS = ("high_event_time_ms", "fine", "coarse_only", "late", "fine_rows", "coarse_rows", "duplicates")


def playback_batches(seed: int, events: int, partitions: int = 2, batch: int = 700) -> list[list[list[object]]]:
    """Decoded playback events per partition, in delivery order, in reader-sized batches; every fault on."""
    generated = generate(
        seed=seed,
        events=events,
        start_ms=START_MS,
        span_ms=events * 7,  # about the benchmark's density
        faults=FaultConfig(jitter_ms=3_000, late_fraction=0.02, duplicate_fraction=0.03, malformed_fraction=0.01),
        with_truth=False,
    )
    decode = EventDecoder("playback", 65_536, 3_600_000).decode
    now = START_MS + 10 * 86_400_000
    parts: list[list[object]] = [[] for _ in range(partitions)]
    for message in sorted(generated.messages, key=lambda m: m.delivery_ms):
        if message.family != "playback":
            continue
        event = decode(message.value, now)
        if type(event) is not Rejection:
            parts[zlib.crc32((message.key or "").encode()) % partitions].append(event)
    return [[events[i : i + batch] for i in range(0, len(events), batch)] for events in parts]


# 50 ms windows put a session's last end past 2^34 windows, where the native fold keeps it unpacked.
TINY_WINDOWS = WindowConfig(fine_ms=50, coarse_ms=1_000, allowed_lateness_ms=30_000)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    ("windows", "make_folder"),
    [
        pytest.param(WINDOWS, lambda: PlaybackFolder(WINDOWS, 60_000), id="all"),
        pytest.param(WINDOWS, StreamStartsFolder, id="starts"),
        pytest.param(TINY_WINDOWS, lambda: PlaybackFolder(TINY_WINDOWS, 60_000), id="all-50ms-windows"),
    ],
)
def test_native_summaries_equal_python_ones_and_snapshots_cross_over(
    seed: int, windows: WindowConfig, make_folder: Callable[[], PlaybackFolder | StreamStartsFolder]
) -> None:
    for batches in playback_batches(seed, 12_000):
        python = PartitionAggregator("p", windows, make_folder())
        native = NativePlaybackAggregator("p", windows, make_folder())
        for i, batch in enumerate(batches):
            if i == len(batches) // 2:
                # Each resumes from the other's snapshot: recovery works across a switch of implementation.
                python_snapshot, native_snapshot = python.snapshot(), native.snapshot()
                python = PartitionAggregator("p", windows, make_folder())
                python.restore(native_snapshot)
                native = NativePlaybackAggregator("p", windows, make_folder())
                native.restore(python_snapshot)
            python.add_all(batch)
            native.add_all(iter(batch))
            state: PartitionState = "finished" if i == len(batches) - 1 else "active"
            expected, got = python.summary(state), native.summary(state)
            for field in SUMMARY_FIELDS:
                assert getattr(got, field) == getattr(expected, field), f"batch {i}: {field}"
            assert (native.keys_held, native.remembered_ids) == (python.keys_held, python.remembered_ids)
        assert native.high_event_time_ms == python.high_event_time_ms


def test_the_traffic_exercises_every_path() -> None:
    """The equality above means something only if late events, duplicates and ended sessions occur in it."""
    python = PartitionAggregator("p", WINDOWS, PlaybackFolder(WINDOWS, 60_000))
    late = duplicates = coarse_only = 0
    for batch in playback_batches(1, 12_000)[0]:
        python.add_all(batch)
        summary = python.summary("active")
        late += sum(summary.late.values())
        duplicates += summary.duplicates
        coarse_only += len(summary.coarse_rows)
    assert late > 0 and duplicates > 0 and coarse_only > 0


def test_sketch_buckets_are_the_pythons() -> None:
    """The startup sketch's bucket is computed natively: the same for every value, both sides of each edge."""
    native = NativePlaybackAggregator("p", WINDOWS, PlaybackFolder(WINDOWS, 60_000))
    values = [0, 1, 2, 3, *range(4, 200_000, 37), 2**31, 2**40]
    edges = [round(1.0202 ** (i / 2)) for i in range(0, 2000)]
    for value in sorted({*values, *edges, *(e + 1 for e in edges), *(max(e - 1, 0) for e in edges)}):
        assert native._core.bucket_of(value) == bucket_of(value), value


@pytest.mark.parametrize("gap_ms", [120_000, 30 * 86_400_000, 365 * 86_400_000], ids=["2min", "30days", "1year"])
@pytest.mark.parametrize("windows", [WINDOWS, TINY_WINDOWS], ids=["10s", "50ms"])
def test_native_summaries_equal_python_ones_across_a_gap_in_event_time(gap_ms: int, windows: WindowConfig) -> None:
    """Sessions playing on across the gap (one range before it, one after) fold alike, and are freed alike."""
    for events in gap_traffic(gap_ms, START_MS, partitions=2, sessions=200):
        python = PartitionAggregator("p", windows, PlaybackFolder(windows, TIMEOUT_MS))
        native = NativePlaybackAggregator("p", windows, PlaybackFolder(windows, TIMEOUT_MS))
        batches = [events[i : i + 100] for i in range(0, len(events), 100)]
        for i, batch in enumerate(batches):
            python.add_all(batch)
            native.add_all(iter(batch))
            state: PartitionState = "finished" if i == len(batches) - 1 else "active"
            expected, got = python.summary(state), native.summary(state)
            for field in SUMMARY_FIELDS:
                assert getattr(got, field) == getattr(expected, field), f"batch {i}: {field}"
            assert (native.keys_held, native.remembered_ids) == (python.keys_held, python.remembered_ids)
        # What is held after the gap is the sessions after it, not a trace of the gap's length.
        assert native.keys_held <= sum(1 for e in events if e.event_time_ms > START_MS + PHASE_MS)
