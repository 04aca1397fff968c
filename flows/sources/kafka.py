"""The bytewax input: one reader per Kafka partition, decoding and pre-aggregating each batch.

Each reader is assigned its partition directly (no consumer group: no
rebalance, and bytewax distributes partitions over workers itself), decodes
every message with the contract's decoder, folds valid events into window
partials (flows/fold/partition_aggregator.py) and emits one `BatchSummary` per
consumed batch. Its snapshot is the next offset to read with what the
aggregator remembers (duplicate ids, open sessions, the partition's newest
event time), so recovery (bytewax snapshots sources and state together)
resumes exactly after the last batch the window store has seen, judging the
next events as if it had never stopped.

The end of a partition is what the fetcher reports (librdkafka's
end-of-partition event), not the ListOffsets high watermark: tansu 0.6 reports
the latter short of the real end by the last record batch (measured: 2090 for
2508 messages), while its fetch-side end is exact. With `exit_at_end` a reader
stops at its partition's first end-of-partition event, which is at or past
every message produced before it started. In a live run, a partition at its
end and quiet for `idle_after_ms` is reported idle, so it stops holding the
watermark back; a partition merely caught up for a moment still holds it.

In a replay (`ReaderConfig.replay`) a reader starts at the first record
that can hold an event of the range's lead (flows/sources/kafka_seek.py) and hands
its events to a `ReplayFeed` (flows/sources/replay_range.py), which drops what the
range cannot need, stops the partition past the range, and paces.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from connect.kafka_log import process_summary, with_logging
from flows.fold.partition_aggregator import Folder
from flows.health import pipeline_metrics
from flows.kafka_lag import lag_monitor
from flows.partials import BatchSummary, DeadLetter
from flows.sources.kafka_seek import seek_offset
from flows.sources.reader_base import PartitionReader, Records
from flows.sources.reader_config import ReaderConfig
from schemas.decoder import Event, EventDecoder, Rejection
from settings.kafka import KafkaSettings

log = logging.getLogger(__name__)

EMPTY_POLL_BACKOFF = timedelta(milliseconds=20)
STATE_REPORT_INTERVAL_S = 5.0


def consumer_config(kafka: KafkaSettings, on_error: Callable[[KafkaError], None] | None = None) -> dict[str, object]:
    """Librdkafka consumer settings for partition readers; `on_error` also hears the client's errors."""
    # librdkafka's lines go through the process's summary (connect/kafka_log.py): an outage is told once.
    config = with_logging(kafka.client_config(), kafka.bootstrap, on_error=on_error)
    config.update(
        {
            # Required by the client even with assign(); nothing is ever committed under it.
            "group.id": "streampulse-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # The default 1 s backoff stalls a consumer that is slower than its fetcher (measured ~15 % faster).
            "fetch.queue.backoff.ms": 10,
            # Fetches on a caught-up partition return after this long: the end-of-partition event (what
            # --exit-at-end and idleness wait for) and fresh events arrive within it rather than 500 ms.
            "fetch.wait.max.ms": 100,
            # Prefetch per partition: the 64 MB default, times a reader per partition, was most of a replay's
            # memory (peak RSS 350 MB -> 155 MB at 4 MB on 1 M events, throughput unchanged within noise).
            "queued.max.messages.kbytes": 4096,
            # The fetcher's end-of-partition event is the reliable "caught up" signal (see module doc).
            "enable.partition.eof": True,
        }
    )
    return config


# The next offset to read, and what the aggregator remembers (duplicate ids, open sessions, newest event time).
ReaderSnapshot = tuple[int, bytes]


def dead_letter(topic: str, partition: int, message: Message, rejection: Rejection) -> DeadLetter:
    """The dead letter of a message the decoder rejected: where it was, its bytes, and why."""
    _kind, timestamp_ms = message.timestamp()
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=message.offset() or 0,
        timestamp_ms=timestamp_ms,
        key=message.key(),
        value=message.value(),
        reason=rejection.reason,
        detail=rejection.detail,
    )


def split_messages(messages: list[Message], at_end: bool) -> tuple[list[Message], bool, list[KafkaError]]:
    """What one `consume` returned: the messages that carry a record, whether the partition is now at its end, errors.

    `at_end` is what was known before. An end-of-partition event sets it; records after the last such event
    clear it (the end is the fetcher's event, not the high watermark: see the module docstring).
    """
    records: list[Message] = []
    errors: list[KafkaError] = []
    for message in messages:
        error = message.error()
        if error is None:
            records.append(message)
        elif error.code() == KafkaError._PARTITION_EOF:
            at_end = True
        else:
            errors.append(error)
    if records:
        # At the end only if the end-of-partition event came after the last message.
        last = messages[-1].error()
        at_end = last is not None and last.code() == KafkaError._PARTITION_EOF
    return records, at_end, errors


class KafkaPartitionReader(PartitionReader[ReaderSnapshot]):
    """Reads one partition of one topic; its state is the next offset and the aggregator's memory.

    What it adds to `PartitionReader`: the consumer, decoding with dead letters, the end-of-partition event,
    client errors for the health document, lag and the per-partition counters.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        partition: int,
        family: str,
        folder: Folder,
        config: ReaderConfig,
        resume: ReaderSnapshot | None,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._batch_size = config.batch_size
        # The last client error (broker down, ...) since a message last came: the health document's "Kafka reachable".
        self._kafka_error = ""
        self._reported_error = ""
        self._lag_messages = -1  # as of the last state report, for the health document (the gauge: flows/kafka_lag.py)
        self._consumer = Consumer(consumer_config(kafka, on_error=self._on_client_error))
        if resume is not None:
            start = resume[0]
        else:
            # Explicit offsets: OFFSET_BEGINNING costs tansu 0.5 s per partition, OFFSET_END is wrong there.
            low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            start = high if config.start_at == "latest" else low
            if config.replay is not None:
                # A replay starts at the first record that can hold an event of its lead (flows/sources/replay_range.py).
                start = seek_offset(self._consumer, topic, partition, config.replay.seek_ms(family), low, high)
        self._consumer.assign([TopicPartition(topic, partition, start)])
        super().__init__(
            f"{topic}#{partition}", family, folder, config, next_offset=start, exit_at_end=config.exit_at_end
        )
        if resume is not None:
            self._aggregator.restore(resume[1])
        self._decoder = EventDecoder(family, config.max_message_bytes, config.max_future_skew_ms)
        self._rejects: list[DeadLetter] = []
        self._last_state_at = 0.0
        self._bootstrap = kafka.bootstrap
        self._summary = process_summary()
        # Lag is measured on a thread of its own (flows/kafka_lag.py): this reader stands still when its worker is
        # stuck on a sink, which is when lag matters most.
        self._lag = lag_monitor(kafka)
        self._lag.track(topic, partition, lambda: self._next_offset)
        metrics = pipeline_metrics()
        self._consumed_counter = metrics.events_consumed.labels(topic, str(partition))
        self._duplicates_counter = metrics.duplicate_events.labels(topic)
        self._bad_counter = metrics.bad_events
        self._keys_gauge = metrics.keys_held.labels(topic, str(partition))
        self._ids_gauge = metrics.remembered_event_ids.labels(topic, str(partition))
        self._empty_poll = False

    def read_records(self) -> Records:
        """The next messages of the partition, decoded as they are folded; rejects go to this batch's dead letters."""
        messages = self._consumer.consume(self._batch_size, 0)
        self._empty_poll = not messages
        if messages:
            self._kafka_error = ""  # the broker answered (a partition error in them sets it again below)
        self._rejects = []
        records, at_end, errors = split_messages(messages, self._at_end)
        for error in errors:
            self._on_error(error)
        if not records:
            return Records((), 0, self._next_offset, at_end)
        self._consumed_counter.inc(len(records))
        self._summary.reachable(self._bootstrap)  # ends an outage the log summary reported; a dict lookup
        # Events are folded as they are decoded, not gathered first: each is freed before the next is made, so
        # the allocator hands the same warm memory back (8-16 % less CPU for decode + fold in three A/B pairs).
        events = self._decoded(records, time.time_ns() // 1_000_000, self._rejects)
        return Records(events, len(records), (records[-1].offset() or 0) + 1, at_end)

    def _decoded(self, records: list[Message], now_ms: int, rejects: list[DeadLetter]) -> Iterator[Event]:
        """The valid events of `records`, in order; bad ones go to `rejects` as dead letters."""
        decode = self._decoder.decode
        topic, partition = self._topic, self._partition
        for message in records:
            event = decode(message.value(), now_ms)
            if isinstance(event, Rejection):
                rejects.append(dead_letter(topic, partition, message, event))
            else:
                yield event

    def after_fold(self, now: float) -> None:
        """Every `STATE_REPORT_INTERVAL_S`: the memory gauges, the lag, and whether a standing error has cleared."""
        if now - self._last_state_at > STATE_REPORT_INTERVAL_S:
            self._report_state(now)

    def has_news(self) -> bool:
        """A client error appeared or cleared since the last summary: the health document must hear it."""
        return self._kafka_error != self._reported_error

    def complete(self, summary: BatchSummary) -> None:
        """The batch's dead letters, lag and client error; the duplicate and bad-event counters."""
        # Handed over once: a later summary without a read of its own (a paced replay releasing) has none.
        rejects, self._rejects = self._rejects, []
        summary.rejects = rejects
        summary.lag, summary.kafka_error = self._lag_messages, self._kafka_error
        self._reported_error = self._kafka_error
        if summary.duplicates:
            self._duplicates_counter.inc(summary.duplicates)
        for letter in rejects:
            self._bad_counter.labels(self._topic, letter.reason).inc()

    def _report_state(self, now: float) -> None:
        self._last_state_at = now
        self._keys_gauge.set(self._aggregator.keys_held)
        self._ids_gauge.set(self._aggregator.remembered_ids)
        if self._kafka_error:
            # A quiet partition gets no message to clear an error with: ask the broker itself (only while one stands).
            with contextlib.suppress(KafkaException):  # still unreachable: the error stands on the health document
                self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._partition), timeout=1)
                self._kafka_error = ""
        try:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._partition), timeout=1, cached=True
            )
        except Exception:
            return
        if high >= 0:
            self._lag_messages = max(high - self._next_offset, 0)

    def _on_client_error(self, error: KafkaError) -> None:
        # Served from consume(): broker-level errors (all brokers down, connection refused) that no message carries.
        self._kafka_error = error.str()

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise RuntimeError(f"fatal Kafka error on {self._topic}[{self._partition}]: {error.str()}")
        # Transient errors (broker down, leader moving) are retried by librdkafka itself; the summary says so once
        # for all readers rather than once per reader and poll.
        process_summary().on_error(self._bootstrap, error)
        self._kafka_error = error.str()

    def poll_again_at(self) -> datetime | None:
        """Shortly after an empty poll: polling an empty partition in a tight loop starves the worker's others."""
        if self._empty_poll:
            return datetime.now(UTC) + EMPTY_POLL_BACKOFF
        return None

    def snapshot(self) -> ReaderSnapshot:
        return self._next_offset, self._aggregator.snapshot()

    def close(self) -> None:
        self._lag.untrack(self._topic, self._partition)
        self._consumer.close()


class KafkaEventSource(FixedPartitionedSource[BatchSummary, ReaderSnapshot]):
    """Every partition of the given topics, each read by a `KafkaPartitionReader`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Mapping[str, str],
        folders: Mapping[str, Callable[[], Folder]],
        config: ReaderConfig,
    ) -> None:
        """`topics` maps topic -> event family; `folders` makes a family's per-partition folding logic."""
        self._kafka = kafka
        self._topics = dict(topics)
        self._folders = folders
        self._config = config

    def list_parts(self) -> list[str]:
        admin = AdminClient(with_logging(self._kafka.client_config(), self._kafka.bootstrap))
        parts: list[str] = []
        for topic in self._topics:
            metadata = admin.list_topics(topic, timeout=30).topics.get(topic)
            if metadata is None or metadata.error is not None:
                reason = metadata.error.str() if metadata is not None and metadata.error else "not found"
                raise RuntimeError(
                    f"Kafka topic {topic!r} is not readable ({reason}). Create it (streampulse loadgen creates "
                    "its topics) or point --playback-topic/--signup-topic at existing ones."
                )
            parts.extend(f"{topic}#{p}" for p in sorted(metadata.partitions))
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: ReaderSnapshot | None) -> KafkaPartitionReader:
        topic, _, partition = for_part.rpartition("#")
        family = self._topics[topic]
        return KafkaPartitionReader(
            self._kafka, topic, int(partition), family, self._folders[family](), self._config, resume_state
        )
