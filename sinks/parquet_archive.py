"""The Parquet archive of raw events: its layout, atomic chunk writes, and what is committed.

Layout under the archive directory (Hive-style, so `pyarrow.dataset` and
query engines read it as is; names starting with `_` or `.` are skipped by
them):

    family=playback/date=2026-11-23/hour=10/playback-events.p00003.o00000000000000001000-00000000000000001999.parquet
    _chunks/playback-events/p00003/00000000000000001000-00000000000000001999.json

The archiver cuts each Kafka partition into *chunks*: runs of consecutive
messages, `first`..`last` offset. A chunk's valid events go to one file per
(family, UTC date, UTC hour of event time) they fall in, every file named
after the chunk; its marker under `_chunks/` lists those files with their
row counts and ranges and counts the bad messages skipped. Rows are the
contract's columns (`schemas.arrow.archive_schema`) plus `kafka_partition`,
`kafka_offset` and `kafka_timestamp_ms`, in offset order, so a replay can
restore each partition's order exactly.

A chunk is committed by its marker; it is written so that a crash at any
moment leaves either all of it or none of it once `recover` has run:

1. a *pending* marker naming every file of the chunk (written to a temp
   name, then renamed);
2. each file written to a hidden temp name, fsynced, renamed into place;
3. the marker written (temp, rename), then the pending marker removed.

`recover` deletes the files of a chunk whose marker is missing (the crash
came before step 3) and returns, per partition, the offset after the last
committed chunk: a restart continues exactly there, and since chunks are
cut at the same offsets when catching up, rewrites the same files. Readers
trust only committed chunks, taking their file list from the marker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.archive_layout import (
    CHUNKS_DIR,
    HOUR_MS,
    ArchiveError,
    ChunkId,
    committed_chunks,
    file_schema,
    hour_dir,
)
from schemas.arrow import events_to_table
from schemas.decoder import EventStruct

LOCK_FILE = "_archive.lock"
COMPRESSION = "zstd"


@dataclass
class ChunkBuffer:
    """Messages consumed from one partition since its last chunk: valid events, and bad ones counted."""

    topic: str
    family: str
    partition: int
    first_offset: int = -1
    last_offset: int = -1
    messages: int = 0
    events: list[EventStruct] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    bad: dict[str, int] = field(default_factory=dict)

    def add_event(self, offset: int, timestamp_ms: int, event: EventStruct) -> None:
        """A valid event at `offset`, with its record timestamp."""
        self._took(offset)
        self.events.append(event)
        self.offsets.append(offset)
        self.timestamps.append(timestamp_ms)

    def add_bad(self, offset: int, reason: str) -> None:
        """A message the contract rejects: not archived (the live flow dead-letters it), counted."""
        self._took(offset)
        self.bad[reason] = self.bad.get(reason, 0) + 1

    def _took(self, offset: int) -> None:
        if self.messages == 0:
            self.first_offset = offset
        self.last_offset = offset
        self.messages += 1

    def chunk(self) -> ChunkId:
        """The id of the chunk these messages make."""
        if not self.messages:
            raise ValueError("an empty buffer makes no chunk")
        return ChunkId(self.topic, self.partition, self.first_offset, self.last_offset)


@dataclass(frozen=True)
class ChunkWritten:
    """What one committed chunk added to the archive."""

    chunk: ChunkId
    messages: int
    events: int
    files: int
    bad: dict[str, int]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write: Any) -> None:
    """Write through `write(file)` to a hidden temp name, fsync, rename over `path`, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _write_parquet(table: pa.Table, handle: BinaryIO) -> None:
    pq.write_table(table, handle, compression=COMPRESSION)


def _json_writer(document: dict[str, Any]) -> Any:
    def write(handle: BinaryIO) -> None:
        handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    return write


class ArchiveWriter:
    """Writes chunks into one archive directory; one writer per directory at a time (`lock`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_handle: BinaryIO | None = None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock, or raise ArchiveError if another archiver holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle = (self.root / LOCK_FILE).open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ArchiveError(
                f"another archiver is writing to {self.root} (it holds {LOCK_FILE}); one archiver per directory"
            ) from None
        try:
            yield
        finally:
            handle.close()

    def recover(self) -> dict[tuple[str, int], int]:
        """Undo every chunk a crash left half-written; return the next offset to archive per (topic, partition)."""
        chunks_dir = self.root / CHUNKS_DIR
        if not chunks_dir.is_dir():
            return {}
        for pending in sorted(chunks_dir.glob("*/p*/*.pending.json")):
            final = pending.with_name(pending.name.removesuffix(".pending.json") + ".json")
            if not final.exists():
                listed = orjson.loads(pending.read_bytes())["files"]
                for relative in listed:
                    path = self.root / relative
                    for leftover in (path, path.with_name(f".{path.name}.tmp")):
                        leftover.unlink(missing_ok=True)
            pending.unlink()
        for temp in chunks_dir.glob("*/p*/.*.tmp"):
            temp.unlink()
        next_offsets: dict[tuple[str, int], int] = {}
        for topic_dir in chunks_dir.iterdir():
            for partition, chunks in committed_chunks(self.root, topic_dir.name).items():
                next_offsets[(topic_dir.name, partition)] = max(c.last_offset for c in chunks) + 1
        return next_offsets

    def write(self, buffer: ChunkBuffer) -> ChunkWritten:
        """Commit the buffer's messages as one chunk (see the module docstring for the steps)."""
        chunk = buffer.chunk()
        by_hour: dict[int, list[int]] = {}
        for i, event in enumerate(buffer.events):
            by_hour.setdefault(event.event_time_ms // HOUR_MS, []).append(i)
        files = [f"{hour_dir(buffer.family, hour)}/{chunk.file_name}" for hour in sorted(by_hour)]
        _write_atomically(self.root / chunk.pending_marker, _json_writer({"files": files}))
        described = []
        for relative, hour in zip(files, sorted(by_hour), strict=True):
            rows = by_hour[hour]
            table = self._table(buffer, rows)
            _write_atomically(self.root / relative, partial(_write_parquet, table))
            times = [buffer.events[i].event_time_ms for i in rows]
            described.append(
                {
                    "path": relative,
                    "hour": hour,
                    "rows": len(rows),
                    "min_offset": buffer.offsets[rows[0]],
                    "max_offset": buffer.offsets[rows[-1]],
                    "min_event_time_ms": min(times),
                    "max_event_time_ms": max(times),
                }
            )
        marker = {
            "topic": chunk.topic,
            "partition": chunk.partition,
            "family": buffer.family,
            "first_offset": chunk.first_offset,
            "last_offset": chunk.last_offset,
            "messages": buffer.messages,
            "events": len(buffer.events),
            "bad": dict(sorted(buffer.bad.items())),
            "min_timestamp_ms": min(buffer.timestamps, default=None),
            "max_timestamp_ms": max(buffer.timestamps, default=None),
            "files": described,
        }
        _write_atomically(self.root / chunk.marker, _json_writer(marker))
        (self.root / chunk.pending_marker).unlink()
        return ChunkWritten(chunk, buffer.messages, len(buffer.events), len(files), dict(buffer.bad))

    @staticmethod
    def _table(buffer: ChunkBuffer, rows: Sequence[int]) -> pa.Table:
        events = events_to_table(buffer.family, [buffer.events[i] for i in rows])
        kafka = [
            pa.array([buffer.partition] * len(rows), pa.int32()),
            pa.array([buffer.offsets[i] for i in rows], pa.int64()),
            pa.array([buffer.timestamps[i] for i in rows], pa.int64()),
        ]
        return pa.Table.from_arrays([*events.columns, *kafka], schema=file_schema(buffer.family))
