"""The Parquet archive's layout: where each chunk of raw events lives, and how it is read back.

The writer (sinks/parquet_archive.py) and the archive source (flows/sources/archive.py) share it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import archive_partition, archive_schema

HOUR_MS = 3_600_000


CHUNKS_DIR = "_chunks"


_EPOCH_MS = {b"unit": b"ms", b"epoch": b"unix", b"timezone": b"UTC"}


KAFKA_COLUMNS: tuple[pa.Field, ...] = (
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("kafka_timestamp_ms", pa.int64(), nullable=False, metadata=_EPOCH_MS),
)


_FILE_NAME = re.compile(r"^(?P<topic>[A-Za-z0-9._-]+)\.p(?P<partition>\d+)\.o(?P<first>\d+)-(?P<last>\d+)\.parquet$")


_MARKER_NAME = re.compile(r"^(?P<first>\d+)-(?P<last>\d+)\.json$")


class ArchiveError(RuntimeError):
    """The archive directory cannot be used as asked; the message says why."""


@cache
def file_schema(family: str) -> pa.Schema:
    """The schema of one family's archive files: the contract's columns, then where each row came from in Kafka."""
    base = archive_schema(family)
    return pa.schema([*base, *KAFKA_COLUMNS], metadata=base.metadata)


@dataclass(frozen=True, order=True)
class ChunkId:
    """A run of consecutive messages of one partition, archived together."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int

    @property
    def file_name(self) -> str:
        """The name of each of the chunk's files (one per hour directory); zero-padded so names sort by offset."""
        return f"{self.topic}.p{self.partition:05d}.o{self.first_offset:020d}-{self.last_offset:020d}.parquet"

    @property
    def marker(self) -> str:
        """The marker's path relative to the archive directory."""
        return f"{_partition_dir(self.topic, self.partition)}/{self.first_offset:020d}-{self.last_offset:020d}.json"

    @property
    def pending_marker(self) -> str:
        """The pending marker's path: the chunk's files are being written."""
        return self.marker.removesuffix(".json") + ".pending.json"


def parse_file_name(name: str) -> ChunkId | None:
    """The chunk a data file belongs to, from its name; None for anything else (temp files included)."""
    match = _FILE_NAME.match(name)
    if match is None:
        return None
    return ChunkId(match["topic"], int(match["partition"]), int(match["first"]), int(match["last"]))


def _partition_dir(topic: str, partition: int) -> str:
    return f"{CHUNKS_DIR}/{topic}/p{partition:05d}"


def hour_dir(family: str, hour: int) -> str:
    """The directory (relative) of one family's events of one UTC hour (hours since the epoch)."""
    date, hh = archive_partition(hour * HOUR_MS)
    return f"family={family}/date={date}/hour={hh}"


def committed_chunks(root: Path, topic: str) -> dict[int, list[ChunkId]]:
    """Every committed chunk of `topic` per partition, in offset order (from the markers' names)."""
    topic_dir = root / CHUNKS_DIR / topic
    chunks: dict[int, list[ChunkId]] = {}
    if not topic_dir.is_dir():
        return chunks
    for partition_dir in topic_dir.iterdir():
        if not partition_dir.name.startswith("p") or not partition_dir.name[1:].isdigit():
            continue
        partition = int(partition_dir.name[1:])
        found = []
        for entry in os.scandir(partition_dir):
            match = _MARKER_NAME.match(entry.name)
            if match is not None:
                found.append(ChunkId(topic, partition, int(match["first"]), int(match["last"])))
        if found:
            chunks[partition] = sorted(found)
    return chunks


def chunk_marker(root: Path, chunk: ChunkId) -> dict[str, Any] | None:
    """A committed chunk's marker, or None if the chunk is not committed."""
    try:
        document: dict[str, Any] = orjson.loads((root / chunk.marker).read_bytes())
    except FileNotFoundError:
        return None
    return document


def read_rows(root: Path, paths: Sequence[str], family: str) -> pa.Table:
    """The rows of these archive files (relative paths) as one table in the file schema."""
    tables = [pq.read_table(root / path, schema=file_schema(family)) for path in paths]
    if not tables:
        return file_schema(family).empty_table()
    return pa.concat_tables(tables)
