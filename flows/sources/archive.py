"""The bytewax input of a replay from the Parquet archive: each Kafka partition again, in offset order.

The live flow judged lateness and duplicates per partition, in partition
order, so the archive keeps each event's partition and offset and this
source replays them that way, one reader per archived partition, through
the same aggregator as the Kafka source (flows/fold/partition_aggregator.py).

Which rows a replay needs (see flows/sources/replay_range.py): every event of the
family's lead and of the range, up to the partition's first event at or
past `stop_ms`. Events of an hour directory lie in that hour, so the *core*
hours, from the lead's start to `stop_ms`, hold all of them; a later hour's
rows are all past `stop_ms`, so the earliest offset among them (from the
chunk markers) is where the partition stops at the latest. Only committed
chunks are read, their files listed by their markers, so an archiver
writing at the same time cannot show a half-written chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import FixedPartitionedSource

from flows.fold.partition_aggregator import Folder
from flows.partials import BatchSummary
from flows.sources.reader_base import PartitionReader, Records
from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayRange
from schemas.archive_layout import (
    HOUR_MS,
    ArchiveError,
    ChunkId,
    chunk_marker,
    committed_chunks,
    hour_dir,
    parse_file_name,
    read_rows,
)
from schemas.decoder import EVENT_CLASSES, EventStruct


@dataclass
class PartitionPlan:
    """What to read of one partition: its chunks with rows in the core hours, and where it stops at the latest."""

    topic: str
    partition: int
    # (chunk, its files in the core hours), in offset order
    chunks: list[tuple[ChunkId, list[str]]] = field(default_factory=list)
    # Offsets from here on are past the range: the earliest row of a later hour.
    stop_offset: int | None = None


def plan_topic(root: Path, topic: str, family: str, replay: ReplayRange) -> dict[int, PartitionPlan]:
    """Per partition, the committed chunks of `topic` a replay of `replay` reads, and where each stops."""
    first_hour = replay.low_ms(family) // HOUR_MS
    last_hour = replay.stop_ms // HOUR_MS
    seen: set[ChunkId] = set()
    for hour in range(first_hour, last_hour + 1):
        directory = root / hour_dir(family, hour)
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            chunk = parse_file_name(entry.name)
            if chunk is not None and chunk.topic == topic:
                seen.add(chunk)
    plans: dict[int, PartitionPlan] = {}
    markers: dict[ChunkId, dict[str, Any]] = {}
    for chunk in sorted(seen):
        marker = chunk_marker(root, chunk)
        if marker is None:
            continue  # being written right now: not part of the archive yet
        markers[chunk] = marker
        core = [f["path"] for f in marker["files"] if first_hour <= f["hour"] <= last_hour]
        plan = plans.setdefault(chunk.partition, PartitionPlan(topic, chunk.partition))
        plan.chunks.append((chunk, core))
    # Listed after the hour directories: every chunk seen there and committed is listed here.
    committed = committed_chunks(root, topic)
    for partition, plan in plans.items():
        first = plan.chunks[0][0]
        for chunk in committed.get(partition, []):
            if chunk < first:
                continue
            marker = markers.get(chunk) or chunk_marker(root, chunk)
            later = [f["min_offset"] for f in marker["files"] if f["hour"] > last_hour] if marker else []
            if later:
                plan.stop_offset = min(later)
                break
    return plans


class _RowsToEvents:
    """Archive rows back into the decoder's event Structs (what the folders read), by column, not by row dict."""

    def __init__(self, family: str) -> None:
        classes = EVENT_CLASSES[family]
        self._names = sorted({name for cls in classes.values() for name in cls.__struct_fields__})
        position = {name: i + 1 for i, name in enumerate(self._names)}  # column 0 is event_type
        self._makers: dict[str, tuple[type[EventStruct], Callable[[tuple[Any, ...]], tuple[Any, ...]]]] = {
            event_type: (cls, itemgetter(*(position[name] for name in cls.__struct_fields__)))
            for event_type, cls in classes.items()
        }

    def __call__(self, table: pa.Table) -> list[EventStruct]:
        columns = [table.column("event_type").to_pylist(), *(table.column(n).to_pylist() for n in self._names)]
        makers = self._makers
        events: list[EventStruct] = []
        append = events.append
        for row in zip(*columns, strict=True):
            cls, fields = makers[row[0]]
            append(cls(*fields(row)))
        return events


class ArchivePartitionReader(PartitionReader[int]):
    """Replays one archived partition; state is the next offset (the offset after the last event fed).

    What it adds to `PartitionReader`: the partition's rows in offset order, a slice of a chunk at a time. The
    archive is finite, so the partition finishes at its end.
    """

    def __init__(
        self, root: Path, plan: PartitionPlan, family: str, folder: Folder, config: ReaderConfig, resume: int | None
    ) -> None:
        replay = config.replay
        if replay is None:
            raise ValueError("the archive source serves replays only (ReaderConfig.replay is not set)")
        self._root = root
        self._plan = plan
        self._family = family
        self._batch_size = config.batch_size
        self._low = replay.low_ms(family)
        name = f"{plan.topic}#{plan.partition}"
        next_offset = resume if resume is not None else 0
        super().__init__(name, family, folder, config, next_offset=next_offset, exit_at_end=True)
        self._to_events = _RowsToEvents(family)
        self._batches = self._events()

    def _events(self) -> Iterator[tuple[list[EventStruct], int]]:
        """Events in offset order, a slice of a chunk at a time, with the offset after the slice's last one."""
        plan, size = self._plan, self._batch_size
        for chunk, files in plan.chunks:
            if chunk.last_offset < self._next_offset or not files:
                continue
            table = read_rows(self._root, files, self._family)
            offsets = table.column("kafka_offset")
            keep = pc.and_(
                pc.greater_equal(table.column("event_time_ms"), self._low),
                pc.greater_equal(offsets, self._next_offset),
            )
            if plan.stop_offset is not None:
                keep = pc.and_(keep, pc.less(offsets, plan.stop_offset))
            table = table.filter(keep).sort_by("kafka_offset")
            if not table.num_rows:
                continue
            events = self._to_events(table)
            offsets_list = table.column("kafka_offset").to_pylist()
            for start in range(0, len(events), size):
                end = min(start + size, len(events))
                yield events[start:end], offsets_list[end - 1] + 1

    def read_records(self) -> Records:
        """The next slice of archived events; at the end once every planned chunk is read."""
        batch = next(self._batches, None)
        if batch is None:
            return Records((), 0, self._next_offset, at_end=True)
        events, next_offset = batch
        return Records(events, len(events), next_offset, at_end=False)

    def snapshot(self) -> int:
        return self._next_offset


class ArchiveEventSource(FixedPartitionedSource[BatchSummary, int]):
    """Every archived partition of the given topics that holds rows the replay needs."""

    def __init__(
        self,
        root: Path,
        topics: Mapping[str, str],
        folders: Mapping[str, Callable[[], Folder]],
        config: ReaderConfig,
    ) -> None:
        """`topics` maps topic -> event family; `folders` makes a family's per-partition folding logic."""
        if config.replay is None:
            raise ValueError("the archive source serves replays only (ReaderConfig.replay is not set)")
        self._root = root
        self._replay = config.replay
        self._topics = dict(topics)
        self._folders = folders
        self._config = config
        self._plans: dict[str, dict[int, PartitionPlan]] = {}
        self._lock = threading.Lock()

    def _plan(self, topic: str) -> dict[int, PartitionPlan]:
        # Workers of one process build their partitions concurrently: plan each topic once.
        with self._lock:
            if topic not in self._plans:
                self._plans[topic] = plan_topic(self._root, topic, self._topics[topic], self._replay)
            return self._plans[topic]

    def list_parts(self) -> list[str]:
        if not self._root.is_dir():
            raise ArchiveError(f"the archive directory {self._root} does not exist (--archive-dir)")
        parts: list[str] = []
        for topic in self._topics:
            # Every archived partition, whether or not it has rows in the range, so the list is the same
            # whichever range: a partition without any finishes at once.
            parts.extend(f"{topic}#{p}" for p in sorted(committed_chunks(self._root, topic)))
        if not parts:
            raise ArchiveError(
                f"the archive at {self._root} holds nothing of the topics {', '.join(self._topics)}; "
                "check --archive-dir and --playback-topic/--signup-topic"
            )
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> ArchivePartitionReader:
        topic, _, partition = for_part.rpartition("#")
        family = self._topics[topic]
        plan = self._plan(topic).get(int(partition), PartitionPlan(topic, int(partition)))
        return ArchivePartitionReader(self._root, plan, family, self._folders[family](), self._config, resume_state)
