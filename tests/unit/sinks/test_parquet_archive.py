"""The Parquet archive's writer: names, partitioning, atomic chunks, resume from the files present, reading back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from flows.sources.archive import _RowsToEvents, plan_topic
from flows.sources.replay_range import ReplayRange
from loadgen.api import generate
from loadgen.config import ModelParams
from schemas.archive_layout import (
    ArchiveError,
    ChunkId,
    chunk_marker,
    committed_chunks,
    file_schema,
    parse_file_name,
    read_rows,
)
from schemas.decoder import EventDecoder, EventStruct, Rejection
from sinks.parquet_archive import ArchiveWriter, ChunkBuffer

HOUR = 3_600_000
# 2026-11-23T22:30:00Z: the generated events cross an hour and a day boundary.
START_MS = 1_795_473_000_000


@cache
def _playback_events() -> tuple[EventStruct, ...]:
    generated = generate(
        seed=5, events=600, start_ms=START_MS, span_ms=2 * HOUR, params=ModelParams(warm_start=True), with_truth=False
    )
    decoder = EventDecoder("playback", max_future_skew_ms=10**15)
    events = []
    for message in generated.messages:
        if message.family == "playback":
            event = decoder.decode(message.value, 0)
            assert not isinstance(event, Rejection)
            events.append(event)
    return tuple(events)


def _buffer(
    events: tuple[EventStruct, ...] | list[EventStruct], first_offset: int = 0, partition: int = 3
) -> ChunkBuffer:
    buffer = ChunkBuffer("playback-events", "playback", partition)
    for i, event in enumerate(events):
        buffer.add_event(first_offset + i, event.event_time_ms + 5, event)
    return buffer


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def test_file_names_carry_the_chunk_and_sort_by_offset() -> None:
    chunk = ChunkId("playback.events-v2", 3, 1000, 1999)
    assert chunk.file_name == "playback.events-v2.p00003.o00000000000000001000-00000000000000001999.parquet"
    assert parse_file_name(chunk.file_name) == chunk
    assert chunk.marker == "_chunks/playback.events-v2/p00003/00000000000000001000-00000000000000001999.json"
    later = ChunkId("playback.events-v2", 3, 20_000, 29_999)
    assert sorted([later.file_name, chunk.file_name]) == [chunk.file_name, later.file_name]
    for name in (f".{chunk.file_name}.tmp", "notes.txt", "x.p1.o2.parquet"):
        assert parse_file_name(name) is None


def test_events_land_in_their_utc_hour_with_their_kafka_position(tmp_path: Path) -> None:
    events = _playback_events()
    written = ArchiveWriter(tmp_path).write(_buffer(events, first_offset=100))
    hours = sorted({e.event_time_ms // HOUR for e in events})
    assert written.files == len(hours) >= 3
    dirs = {p.parent.relative_to(tmp_path).as_posix() for p in _data_files(tmp_path)}
    assert "family=playback/date=2026-11-23/hour=22" in dirs
    assert "family=playback/date=2026-11-24/hour=00" in dirs
    # Standard tools read the layout as it is: Hive partitions, the marker directory ignored.
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(events)
    rows = table.sort_by("kafka_offset").to_pylist()
    for offset, (row, event) in enumerate(zip(rows, events, strict=True), start=100):
        assert row["kafka_offset"] == offset and row["kafka_partition"] == 3
        assert row["kafka_timestamp_ms"] == event.event_time_ms + 5
        assert row["event_id"] == event.event_id
        assert row["hour"] == event.event_time_ms // HOUR % 24
    marker = chunk_marker(tmp_path, written.chunk)
    assert marker is not None
    assert (marker["first_offset"], marker["last_offset"], marker["events"]) == (
        100,
        100 + len(events) - 1,
        len(events),
    )
    assert sum(f["rows"] for f in marker["files"]) == len(events)


def test_rows_read_back_are_the_events_written(tmp_path: Path) -> None:
    events = _playback_events()
    writer = ArchiveWriter(tmp_path)
    chunk = writer.write(_buffer(events)).chunk
    marker = chunk_marker(tmp_path, chunk)
    assert marker is not None
    table = read_rows(tmp_path, [f["path"] for f in marker["files"]], "playback").sort_by("kafka_offset")
    assert table.schema == file_schema("playback")
    assert _RowsToEvents("playback")(table) == list(events)


def test_a_rerun_writes_identical_files(tmp_path: Path) -> None:
    events = _playback_events()
    for run in ("a", "b"):
        writer = ArchiveWriter(tmp_path / run)
        writer.write(_buffer(events[:250]))
        writer.write(_buffer(events[250:], first_offset=250))
    first, second = _data_files(tmp_path / "a"), _data_files(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_resume_offsets_come_from_the_committed_chunks(tmp_path: Path) -> None:
    events = _playback_events()
    writer = ArchiveWriter(tmp_path)
    writer.write(_buffer(events[:100], first_offset=0, partition=0))
    writer.write(_buffer(events[100:200], first_offset=100, partition=0))
    writer.write(_buffer(events[200:260], first_offset=7, partition=1))
    bad_only = ChunkBuffer("signup-events", "signup", 0)
    bad_only.add_bad(41, "malformed_json")
    bad_only.add_bad(42, "too_large")
    assert writer.write(bad_only).files == 0
    resume = ArchiveWriter(tmp_path).recover()
    assert resume == {("playback-events", 0): 200, ("playback-events", 1): 67, ("signup-events", 0): 43}
    assert [c.first_offset for c in committed_chunks(tmp_path, "playback-events")[0]] == [0, 100]


def _crash_on_call(monkeypatch: pytest.MonkeyPatch, failing_call: int) -> Callable[[], int]:
    """Make the n-th os.replace of the archive (1-based) raise, as a kill -9 at that moment would stop it."""
    calls = [0]
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == failing_call:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return lambda: calls[0]


@pytest.mark.parametrize("step", ["pending marker", "first file", "last file", "marker"])
def test_a_chunk_cut_short_at_any_step_is_undone_by_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    events = _playback_events()
    writer = ArchiveWriter(tmp_path)
    writer.write(_buffer(events[:100]))
    committed = {p: p.read_bytes() for p in _data_files(tmp_path)}
    # The next chunk's renames: its pending marker, one per file (one per hour), then its marker.
    files = len({e.event_time_ms // HOUR for e in events[100:]})
    assert files >= 2
    failing_call = {"pending marker": 1, "first file": 2, "last file": 1 + files, "marker": 2 + files}[step]
    _crash_on_call(monkeypatch, failing_call)
    with pytest.raises(KeyboardInterrupt):
        writer.write(_buffer(events[100:], first_offset=100))
    monkeypatch.undo()
    assert ArchiveWriter(tmp_path).recover() == {("playback-events", 3): 100}
    assert {p: p.read_bytes() for p in _data_files(tmp_path)} == committed
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") or p.name.endswith(".pending.json")]
    # The restart writes the chunk again, exactly as it would have.
    writer.write(_buffer(events[100:], first_offset=100))
    assert ArchiveWriter(tmp_path).recover() == {("playback-events", 3): len(events)}


def test_a_chunk_whose_marker_is_written_survives_recover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _playback_events()
    writer = ArchiveWriter(tmp_path)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".pending.json"):
            raise KeyboardInterrupt("killed after the marker, before the pending marker went")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        writer.write(_buffer(events[:300]))
    monkeypatch.undo()
    files = _data_files(tmp_path)
    assert ArchiveWriter(tmp_path).recover() == {("playback-events", 3): 300}
    assert _data_files(tmp_path) == files and files


def test_one_archiver_per_directory(tmp_path: Path) -> None:
    with contextlib.ExitStack() as held:
        held.enter_context(ArchiveWriter(tmp_path).lock())
        with pytest.raises(ArchiveError, match="another archiver"):
            held.enter_context(ArchiveWriter(tmp_path).lock())
    with ArchiveWriter(tmp_path).lock():  # released with its holder
        pass


def test_replay_plan_reads_the_core_hours_and_stops_at_the_first_later_row(tmp_path: Path) -> None:
    events = sorted(_playback_events(), key=lambda e: e.event_time_ms)
    writer = ArchiveWriter(tmp_path)
    for first in range(0, len(events), 100):
        writer.write(_buffer(events[first : first + 100], first_offset=first))
    # An uncommitted chunk (a pending write) is not part of the archive.
    (tmp_path / ChunkId("playback-events", 3, 10**6, 10**6 + 9).pending_marker).write_bytes(orjson.dumps({"files": []}))
    from_ms = START_MS + HOUR  # 23:30
    replay = ReplayRange(from_ms, from_ms + 10 * 60_000, (("playback", 60_000),), 0, 90_000)
    plans = plan_topic(tmp_path, "playback-events", "playback", replay)
    assert list(plans) == [3]
    plan = plans[3]
    first_core_hour = replay.low_ms("playback") // HOUR
    read_offsets = set()
    for _chunk, files in plan.chunks:
        table = read_rows(tmp_path, files, "playback")
        assert all(
            t // HOUR in (first_core_hour, first_core_hour + 1) for t in table.column("event_time_ms").to_pylist()
        )
        read_offsets.update(table.column("kafka_offset").to_pylist())
    expected_stop = min(i for i, e in enumerate(events) if e.event_time_ms // HOUR > replay.stop_ms // HOUR)
    assert plan.stop_offset == expected_stop
    needed = {i for i, e in enumerate(events) if replay.low_ms("playback") <= e.event_time_ms < replay.stop_ms}
    assert needed <= read_offsets
