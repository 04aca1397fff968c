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
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from connect.kafka_log import process_summary, with_logging
from flows.fold.native import make_aggregator
from flows.fold.partition_aggregator import Folder
from flows.health import pipeline_metrics
from flows.kafka_lag import lag_monitor
from flows.partials import BatchSummary, DeadLetter, PartitionState
from flows.sources.kafka_seek import seek_offset
from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayFeed, shared_progress
from schemas.decoder import Event, EventDecoder, Rejection
from settings.kafka import KafkaSettings

log = logging.getLogger(__name__)

IDLE_REPORT_INTERVAL_S = 5.0
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


class KafkaPartitionReader(StatefulSourcePartition[BatchSummary, ReaderSnapshot]):
    """Reads one partition of one topic; its state is the next offset and the aggregator's memory."""

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
        self._config = config
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
        self._next_offset = start
        self._consumer.assign([TopicPartition(topic, partition, start)])
        self._decoder = EventDecoder(family, config.max_message_bytes, config.max_future_skew_ms)
        self._aggregator = make_aggregator(f"{topic}#{partition}", config.windows, folder)
        if resume is not None:
            self._aggregator.restore(resume[1])
        # In a replay, events reach the aggregator through the feed: range filter, stop, pacing, progress. What it
        # lets through is folded once per batch (`add_all`), as in a live run, not once per event.
        self._replayed: list[Any] = []
        self._feed = (
            ReplayFeed(
                config.replay, family, f"{topic}#{partition}", self._replayed.append, shared_progress(config.replay)
            )
            if config.replay is not None
            else None
        )
        self._hold_until: float | None = None
        self._finished = False
        self._at_end = False
        self._last_message_at = time.monotonic()
        self._last_report_at = 0.0
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

    def next_batch(self) -> list[BatchSummary]:
        if self._finished:
            raise StopIteration
        feed = self._feed
        released = 0
        if feed is not None:
            # Paced replay: events held back go first; nothing new is read while some still wait.
            self._hold_until = feed.release(time.time())
            released = feed.released
        held = self._hold_until is not None
        messages = [] if held else self._consumer.consume(self._config.batch_size, 0)
        now = time.monotonic()
        self._empty_poll = not messages
        if messages:
            self._kafka_error = ""  # the broker answered (a partition error in them sets it again below)
        rejects: list[DeadLetter] = []
        records = self._records(messages)
        valid = self._decoded(records, time.time_ns() // 1_000_000, rejects)
        # Events are folded as they are decoded, not gathered first: each is freed before the next is made, so
        # the allocator hands the same warm memory back (8-16 % less CPU for decode + fold in three A/B pairs).
        if feed is None:
            self._aggregator.add_all(valid)
        else:
            for event in valid:
                feed.add(event)
        consumed = len(records)
        if records:
            self._next_offset = (records[-1].offset() or 0) + 1
            self._last_message_at = now
            self._consumed_counter.inc(consumed)
            self._summary.reachable(self._bootstrap)  # ends an outage the log summary reported; a dict lookup
            # At the end only if the end-of-partition event came after the last message.
            last = messages[-1].error()
            self._at_end = last is not None and last.code() == KafkaError._PARTITION_EOF
        if now - self._last_state_at > STATE_REPORT_INTERVAL_S:
            self._report_state(now)
        if feed is not None and not held:
            self._hold_until = feed.release(time.time())
            released += feed.released
        if self._replayed:
            self._aggregator.add_all(self._replayed)
            self._replayed.clear()
        state = self._state(now)
        if feed is not None:
            feed.report(consumed, state == "finished")
        error_changed = self._kafka_error != self._reported_error
        if not consumed and not released and state == "active" and not error_changed:
            return []
        if (
            state == "idle"
            and not consumed
            and not error_changed
            and now - self._last_report_at < IDLE_REPORT_INTERVAL_S
        ):
            return []
        self._last_report_at = now
        summary = self._aggregator.summary(state)
        summary.rejects = rejects
        summary.consumed, summary.lag, summary.kafka_error = consumed, self._lag_messages, self._kafka_error
        self._reported_error = self._kafka_error
        if summary.duplicates:
            self._duplicates_counter.inc(summary.duplicates)
        for letter in rejects:
            self._bad_counter.labels(self._topic, letter.reason).inc()
        if state == "finished":
            self._finished = True
        return [summary]

    def _records(self, messages: list[Message]) -> list[Message]:
        """The messages that carry a record; notes an end-of-partition event, reports errors."""
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._at_end = True
            else:
                self._on_error(error)
        return records

    def _decoded(self, records: list[Message], now_ms: int, rejects: list[DeadLetter]) -> Iterator[Event]:
        """The valid events of `records`, in order; bad ones go to `rejects` as dead letters."""
        decode = self._decoder.decode
        for message in records:
            event = decode(message.value(), now_ms)
            if isinstance(event, Rejection):
                rejects.append(self._dead_letter(message, event))
            else:
                yield event

    def _state(self, now: float) -> PartitionState:
        if self._feed is not None:
            if self._feed.past_range:
                return "finished"
            if self._feed.holding:
                return "active"
        if not self._at_end:
            return "active"
        if self._config.exit_at_end:
            return "finished"
        quiet_ms = (now - self._last_message_at) * 1000
        return "idle" if quiet_ms >= self._config.idle_after_ms else "active"

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

    def _dead_letter(self, message: object, rejection: Rejection) -> DeadLetter:
        _kind, timestamp_ms = message.timestamp()  # type: ignore[attr-defined]
        return DeadLetter(
            topic=self._topic,
            partition=self._partition,
            offset=message.offset(),  # type: ignore[attr-defined]
            timestamp_ms=timestamp_ms,
            key=message.key(),  # type: ignore[attr-defined]
            value=message.value(),  # type: ignore[attr-defined]
            reason=rejection.reason,
            detail=rejection.detail,
        )

    def next_awake(self) -> datetime | None:
        if self._hold_until is not None:
            return datetime.fromtimestamp(self._hold_until, UTC)
        if self._empty_poll:
            # Polling an empty partition in a tight loop would starve the other partitions of this worker.
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
