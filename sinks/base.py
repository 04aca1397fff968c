"""The one shape every streampulse sink has: a bytewax sink built from a writer, and the two ways writes fail.

- `WorkerSink(make_writer)`: each worker builds its own `Writer` (its own Redis client or Kafka
  producer); bytewax hands it every batch routed to that worker, and closes it at shutdown.
- `ProcessSink(make_writer, process)`: one writer per process, for a stream keyed with
  `process_part(process)`: its items never leave the process that made them, are written as they
  come, and are made safe (`Writer.settle`) once per epoch, before bytewax snapshots the epoch's
  input as done, rather than once per batch.
- `RetryUntilAccepted`: a write that must not be lost nor fail the flow (Redis) is retried with
  backoff until the service takes it — logged once when an outage starts and once when it ends, and
  counted on every failed attempt. The dataflow stops pulling input meanwhile, so nothing is lost,
  and since writes are absolute values nothing is doubled when they go through.
- `produce_all_or_raise`: a batch produced to Kafka is flushed whole before the flow moves on; what
  the broker refused raises, so the batch's input is not snapshotted as done and a restart retries it.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

X = TypeVar("X")


class Writer(ABC, Generic[X]):
    """What one worker writes with: a batch at a time, closed once at shutdown."""

    @abstractmethod
    def write(self, items: list[X]) -> None:
        """Write one batch (never empty); raising stops the flow before the batch's input is snapshotted."""

    def settle(self) -> None:
        """Return once every item written so far is safe; a `ProcessSink` calls it at the end of each epoch.

        A writer that waits within `write` has nothing left to wait for: nothing by default.
        """

    def close(self) -> None:
        """Release what the writer holds (a producer to flush, a client); nothing by default."""


class _WriterPartition(StatelessSinkPartition[X]):
    def __init__(self, writer: Writer[X]) -> None:
        self._writer = writer

    def write_batch(self, items: list[X]) -> None:
        if items:
            self._writer.write(items)

    def close(self) -> None:
        self._writer.close()


class WorkerSink(DynamicSink[X], Generic[X]):
    """A bytewax sink whose every worker writes through a writer of its own, made by `make_writer(worker_index)`."""

    def __init__(self, make_writer: Callable[[int], Writer[X]]) -> None:
        self._make_writer = make_writer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WriterPartition[X]:
        """This worker's writer."""
        return _WriterPartition(self._make_writer(worker_index))


# Zero-padded: bytewax orders a sink's partitions by name and `part_fn` indexes that order.
_PART_DIGITS = 6
_PART_PREFIX = "process-"


def process_part(process: int) -> str:
    """The key that keeps an item in process `process` on its way to a `ProcessSink`."""
    return f"{_PART_PREFIX}{process:0{_PART_DIGITS}d}"


class _SettlingPartition(StatefulSinkPartition[list[X], None]):
    def __init__(self, writer: Writer[X]) -> None:
        self._writer = writer

    def write_batch(self, values: list[list[X]]) -> None:
        items = [item for batch in values for item in batch]
        if items:
            self._writer.write(items)

    def snapshot(self) -> None:
        # Bytewax snapshots a partition at the end of every epoch it was written in, before the epoch (and so
        # the input offsets of what was written) counts as done: the writes must be safe by then.
        self._writer.settle()

    def close(self) -> None:
        self._writer.settle()
        self._writer.close()


class ProcessSink(FixedPartitionedSink[list[X], None], Generic[X]):
    """A bytewax sink with one partition per process, for lists of items keyed with `process_part(process)`.

    Each process lists only its own partition, so bytewax builds it on one of this process's workers and routes
    there only the items this process keyed: they are handed between the process's workers, never sent to
    another process. The partition writes each batch as it comes and waits for the writes once per epoch
    (`Writer.settle`), so a writer whose every write waits for a round trip (a Kafka flush) waits once per epoch
    instead. It keeps no resume state: what an epoch wrote is safe before its snapshot, and a restart re-reads
    only epochs that were not.
    """

    def __init__(self, make_writer: Callable[[], Writer[X]], process: int) -> None:
        self._make_writer = make_writer
        self._process = process

    def list_parts(self) -> list[str]:
        """This process's partition only."""
        return [process_part(self._process)]

    def part_fn(self, item_key: str) -> int:
        """The partition of the process that keyed the item (partitions are ordered by process)."""
        return int(item_key.removeprefix(_PART_PREFIX))

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SettlingPartition[X]:
        """This process's writer."""
        return _SettlingPartition(self._make_writer())


class _Outages:
    """The writers of this process failing to reach each place, so an outage is told once, not once per writer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[int, float]] = {}  # place -> (writers failing, since)

    def begin(self, place: str) -> bool:
        """A writer starts failing; True if it is the first (the one to tell)."""
        with self._lock:
            count, since = self._failing.get(place, (0, time.monotonic()))
            self._failing[place] = (count + 1, since)
            return count == 0

    def end(self, place: str) -> float | None:
        """A writer got through; how long the outage lasted if it was the last one failing, else None."""
        with self._lock:
            count, since = self._failing.pop(place, (1, time.monotonic()))
            if count > 1:
                self._failing[place] = (count - 1, since)
                return None
            return time.monotonic() - since


_OUTAGES = _Outages()


class RetryUntilAccepted:
    """Runs a write again, with exponential backoff, until it no longer raises one of `transient`."""

    def __init__(
        self,
        what: str,
        transient: tuple[type[BaseException], ...],
        on_failure: Callable[[], None],
        log: logging.Logger,
        initial_s: float = 0.1,
        max_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        place: str | None = None,
    ) -> None:
        """`what` names the write in log lines ("Redis write"); `on_failure` counts each failed attempt.

        `place` (e.g. "Redis at host:port"): the writers of a process that write there tell an outage together,
        once when the first fails and once when the last gets through.
        """
        self._place = place
        self._sleep = sleep
        self._what = what
        self._transient = transient
        self._on_failure = on_failure
        self._log = log
        self._initial_s = initial_s
        self._max_s = max_s

    def run(self, write: Callable[[], None]) -> None:
        """Call `write` until it succeeds; a non-transient error propagates at once."""
        delay = self._initial_s
        failing_since: float | None = None
        while True:
            try:
                write()
            except self._transient as exc:
                self._on_failure()
                if failing_since is None:
                    failing_since = time.monotonic()
                    if self._place is None or _OUTAGES.begin(self._place):
                        where = f"{self._place}: " if self._place else ""
                        self._log.warning(
                            "%s%s failed (%s); retrying with backoff until it is reachable again",
                            where,
                            self._what,
                            exc,
                        )
                self._sleep(delay)
                delay = min(delay * 2, self._max_s)
                continue
            if failing_since is not None:
                if self._place is None:
                    self._log.warning("%s resumed after %.1f s", self._what, time.monotonic() - failing_since)
                elif (lasted := _OUTAGES.end(self._place)) is not None:
                    self._log.warning("%s: writes resumed after %.1f s", self._place, lasted)
            return


def produce_all_or_raise(
    producer: Producer,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes, list[tuple[str, str | bytes | None]] | None]],
    what: str,
    flush_timeout_s: float = 30.0,
    on_delivered: Callable[[], None] | None = None,
) -> None:
    """Produce (key, value, headers) messages to `topic`, wait for every delivery; raise if any failed."""
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(str(err))
        elif on_delivered is not None:
            on_delivered()

    for key, value, headers in messages:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        producer.poll(0)
    remaining = producer.flush(flush_timeout_s)
    if remaining or failed:
        raise RuntimeError(
            f"could not write {remaining + len(failed)} {what} to the topic {topic!r}: {failed[:3]}. "
            "Check that the topic exists and the broker is reachable; a restart retries them."
        )
