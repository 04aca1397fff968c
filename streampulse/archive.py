"""`streampulse archive`: both input topics to the Parquet archive (sinks/parquet_archive.py).

One consumer is assigned every partition of the playback and sign-up topics
at the offsets the archive's committed chunks end at (no consumer group, no
Kafka commit: the archive itself is the progress). Each message is decoded
with the contract's decoder, as the flows do: valid events are buffered per
partition, bad ones counted by reason and skipped (the live flow
dead-letters them). A partition's buffer becomes a chunk when it holds
`--chunk-events` messages, exactly, so chunks are cut at the same offsets
whenever the archiver catches up, or, once the partition has caught up,
when its oldest buffered message is `--flush-interval` old, so the archive
trails the topics by about that much. A kill -9 loses at most the buffers,
which the restart reads again.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connect.kafka_admin import wait_for_kafka
from connect.kafka_log import process_summary
from flows.sources.kafka import consumer_config
from schemas.archive_layout import ArchiveError
from schemas.decoder import EventDecoder, Rejection
from settings.errors import ConfigError
from settings.kafka import KafkaSettings
from sinks.archive_metrics import ArchiveMetrics
from sinks.parquet_archive import ArchiveWriter, ChunkBuffer, ChunkWritten
from sinks.prometheus import serve_metrics
from streampulse.configure import add_decoder_options, add_kafka_options, kafka_settings
from streampulse.options import add_flag, add_option, positive_duration_ms, positive_int
from streampulse.run import add_metrics_options, check_input_topics

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0
METRICS_INTERVAL_S = 1.0
METRICS_PORT = "9465"  # beside the flow's 9464, so both run on one host
CONSUME_BATCH = 5000
CONSUME_TIMEOUT_S = 0.2


def add_archive_dir_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The archive directory, shared by `archive` (writes it) and `replay --source archive` (reads it)."""
    add_option(parser, "--archive-dir", default="archive", help="directory of the Parquet archive")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `archive` subcommand."""
    parser = subparsers.add_parser(
        "archive",
        help="write both input topics' valid events to the Parquet archive",
        description="Consume the playback and sign-up topics and write their valid events as Parquet, partitioned "
        "family=/date=/hour= by event time (UTC); restarts continue after the last complete file.",
    )
    group = parser.add_argument_group("archive")
    add_archive_dir_option(group)
    add_flag(group, "--exit-at-end", help="archive up to the end offsets present at start, then exit 0")
    add_option(
        group,
        "--chunk-events",
        type=positive_int,
        default="100000",
        help="messages per partition per chunk (one file per event hour it spans)",
    )
    add_option(
        group,
        "--flush-interval",
        type=positive_duration_ms,
        default="60s",
        help="once a partition has caught up, how long its events may wait in memory before being written",
    )
    add_option(
        group,
        "--start-at",
        default="earliest",
        choices=("earliest", "latest"),
        help="where a partition with nothing archived yet starts",
    )
    add_decoder_options(group)
    add_kafka_options(parser)
    add_metrics_options(parser, default_port=METRICS_PORT)
    parser.set_defaults(func=run)


@dataclass
class _Partition:
    buffer: ChunkBuffer
    decoder: EventDecoder
    at_end: bool = False  # the last thing consumed from it was its end-of-partition event
    done: bool = False  # with --exit-at-end: reached the end present at start
    caught_up_since_chunk: bool = False
    buffered_since: float = 0.0
    next_offset: int = -1  # the next to read: where it started, then after the last message taken


@dataclass
class ArchiveTotals:
    """What an archiver run added."""

    messages: int = 0
    events: int = 0
    files: int = 0
    chunks: int = 0
    bad: dict[str, int] = field(default_factory=dict)

    def add(self, written: ChunkWritten) -> None:
        """Count one committed chunk."""
        self.messages += written.messages
        self.events += written.events
        self.files += written.files
        self.chunks += 1
        for reason, count in written.bad.items():
            self.bad[reason] = self.bad.get(reason, 0) + count


class Archiver:
    """The consume -> decode -> chunk -> commit loop of one archive directory."""

    def __init__(
        self,
        kafka: KafkaSettings,
        root: Path,
        *,
        chunk_events: int = 100_000,
        flush_interval_s: float = 60.0,
        exit_at_end: bool = False,
        start_at: str = "earliest",
        max_message_bytes: int = 65536,
        max_future_skew_ms: int = 3_600_000,
        out: TextIO | None = None,
        metrics: ArchiveMetrics | None = None,
    ) -> None:
        self._kafka = kafka
        self._writer = ArchiveWriter(root)
        self._chunk_events = chunk_events
        self._flush_interval_s = flush_interval_s
        self._exit_at_end = exit_at_end
        self._start_at = start_at
        self._max_message_bytes = max_message_bytes
        self._max_future_skew_ms = max_future_skew_ms
        self._out = out
        self._stop = threading.Event()
        self.totals = ArchiveTotals()
        self.metrics = metrics or ArchiveMetrics()

    def stop(self) -> None:
        """Ask the loop to write what it holds and return (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> ArchiveTotals:
        """Archive until stopped, or to the end offsets present at start with `exit_at_end`."""
        with self._writer.lock():
            resume = self._writer.recover()
            consumer = Consumer(consumer_config(self._kafka))
            try:
                partitions = self._assign(consumer, resume)
                self._loop(consumer, partitions)
                self._observe(consumer, partitions)
            finally:
                consumer.close()
        return self.totals

    def _assign(self, consumer: Consumer, resume: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], _Partition]:
        topics = {self._kafka.playback_topic: "playback", self._kafka.signup_topic: "signup"}
        metadata = consumer.list_topics(timeout=30).topics
        partitions: dict[tuple[str, int], _Partition] = {}
        assignment: list[TopicPartition] = []
        for topic, family in topics.items():
            for p in sorted(metadata[topic].partitions):
                start = resume.get((topic, p))
                if start is None:
                    # Explicit offsets (as the flow's readers): tansu's OFFSET_END is wrong, OFFSET_BEGINNING slow.
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                    start = high if self._start_at == "latest" else low
                decoder = EventDecoder(family, self._max_message_bytes, self._max_future_skew_ms)
                partitions[(topic, p)] = _Partition(ChunkBuffer(topic, family, p), decoder, next_offset=start)
                assignment.append(TopicPartition(topic, p, start))
        consumer.assign(assignment)
        log.info(
            "streampulse archive: %d partitions of %s to %s, resuming %d of them after their last chunk",
            len(assignment),
            ", ".join(topics),
            self._writer.root,
            len(resume),
        )
        return partitions

    def _loop(self, consumer: Consumer, partitions: dict[tuple[str, int], _Partition]) -> None:
        last_line = last_metrics = time.monotonic()
        messages_at_last_line = 0
        while not self._stop.is_set():
            messages = consumer.consume(CONSUME_BATCH, CONSUME_TIMEOUT_S)
            if messages:
                # Kafka answers: ends an outage the log summary reported (connect/kafka_log.py).
                process_summary().reachable(self._kafka.bootstrap)
            now = time.monotonic()
            now_ms = time.time_ns() // 1_000_000
            for message in messages:
                self._take(message, partitions, now, now_ms)
            for state in partitions.values():
                if state.buffer.messages and self._due(state, now):
                    self._commit(state)
            if self._exit_at_end and all(state.done for state in partitions.values()):
                break
            if now - last_metrics >= METRICS_INTERVAL_S:
                self._observe(consumer, partitions)
                last_metrics = now
            if self._out is not None and now - last_line >= PROGRESS_INTERVAL_S:
                consumed = self.totals.messages + sum(s.buffer.messages for s in partitions.values())
                rate = (consumed - messages_at_last_line) / (now - last_line)
                print(self._line(partitions, rate), file=self._out, flush=True)
                last_line, messages_at_last_line = now, consumed
        # Stopping (signal or end): what is buffered is as good as a chunk; writing it spares a re-read.
        for state in partitions.values():
            if state.buffer.messages:
                self._commit(state)

    def _take(self, message: Message, partitions: dict[tuple[str, int], _Partition], now: float, now_ms: int) -> None:
        state = partitions[(message.topic() or "", message.partition() or 0)]
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                state.at_end = state.caught_up_since_chunk = True
                state.done = state.done or self._exit_at_end
            elif error.fatal():
                raise RuntimeError(f"fatal Kafka error on {message.topic()}[{message.partition()}]: {error.str()}")
            else:
                # Transient errors (broker down, leader moving) are retried by librdkafka itself; the summary says
                # so once for all partitions.
                process_summary().on_error(self._kafka.bootstrap, error)
            return
        if state.done:
            return  # past the end present at start: the next run archives it
        buffer = state.buffer
        if not buffer.messages:
            state.buffered_since = now
        offset = message.offset() or 0
        state.next_offset = offset + 1
        event = state.decoder.decode(message.value(), now_ms)
        if isinstance(event, Rejection):
            buffer.add_bad(offset, event.reason)
        else:
            _kind, timestamp_ms = message.timestamp()
            buffer.add_event(offset, timestamp_ms, event)
        state.at_end = False
        if buffer.messages >= self._chunk_events:
            self._commit(state)

    def _due(self, state: _Partition, now: float) -> bool:
        # While catching up, only size cuts chunks, so a restart cuts them at the same offsets.
        return state.done or (state.caught_up_since_chunk and now - state.buffered_since >= self._flush_interval_s)

    def _commit(self, state: _Partition) -> None:
        buffer = state.buffer
        written = self._writer.write(buffer)
        self.totals.add(written)
        self.metrics.committed(buffer.topic, written, time.time())
        state.buffer = ChunkBuffer(buffer.topic, buffer.family, buffer.partition)
        state.caught_up_since_chunk = state.at_end

    def _observe(self, consumer: Consumer, partitions: Mapping[tuple[str, int], _Partition]) -> None:
        """Buffered messages per topic, and each partition's lag behind its high watermark, on /metrics."""
        buffered: dict[str, int] = {}
        for (topic, p), state in partitions.items():
            buffered[topic] = buffered.get(topic, 0) + state.buffer.messages
            if state.next_offset < 0:
                continue
            try:
                # The high watermark of the last fetch response: no request to the broker.
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=1, cached=True)
            except Exception:  # noqa: S112  # a metric can wait for the next round
                continue
            if high >= 0:
                self.metrics.lag.labels(topic, str(p)).set(max(high - state.next_offset, 0))
        for topic, count in buffered.items():
            self.metrics.buffered.labels(topic).set(count)

    def _line(self, partitions: Mapping[tuple[str, int], _Partition], rate: float) -> str:
        totals = self.totals
        bad = sum(totals.bad.values())
        caught_up = sum(1 for s in partitions.values() if s.at_end or s.done)
        return (
            f"archive: {totals.events:,} events in {totals.files:,} files ({totals.chunks:,} chunks), "
            f"{bad:,} bad skipped, {caught_up}/{len(partitions)} partitions caught up, {rate:,.0f} messages/s"
        )

    def summary(self) -> str:
        """The closing line."""
        totals = self.totals
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(totals.bad.items()))
        return (
            f"archive: done: {totals.events:,} events in {totals.files:,} files ({totals.chunks:,} chunks), "
            f"{sum(totals.bad.values()):,} bad skipped{f' ({reasons})' if reasons else ''}"
        )


def run(args: argparse.Namespace) -> int:
    """Archive the input topics until stopped (SIGTERM, Ctrl-C), or to their end with --exit-at-end."""
    kafka = kafka_settings(args)
    check_input_topics(kafka, wait_for_kafka(kafka))
    root = Path(args.archive_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--archive-dir {root} exists and is not a directory")
    metrics = ArchiveMetrics()
    archiver = Archiver(
        kafka,
        root,
        chunk_events=args.chunk_events,
        flush_interval_s=args.flush_interval / 1000,
        exit_at_end=args.exit_at_end,
        start_at=args.start_at,
        max_message_bytes=args.max_message_bytes,
        max_future_skew_ms=args.max_future_skew,
        out=sys.stderr,
        metrics=metrics,
    )
    server = serve_metrics(args.metrics_host, args.metrics_port, metrics.registry)
    log.info("streampulse archive: /metrics on %s:%d", args.metrics_host, server.port)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        archiver.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        archiver.run()
    except ArchiveError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(archiver.summary(), file=sys.stderr, flush=True)
    return 0
