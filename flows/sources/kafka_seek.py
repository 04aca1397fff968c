"""Where a replay starts reading a Kafka partition: the first record at or after a timestamp, checked.

Kafka answers "the earliest offset whose timestamp is at or after T"
(ListOffsets by timestamp, `offsets_for_times`), so every record before that
offset is older than T. Measured on this project's brokers (records with
non-monotonic timestamps, 63 targets per partition): Apache Kafka 4.3
answers exactly; tansu 0.6 answers the partition's first offset for every
target, even one past the last record. A broker's answer is therefore
checked against the record just before it (which must be older than T); a
wrong or failed answer falls back to the partition's beginning, which is
always correct, only slower. An answer equal to the beginning needs no
check to be safe; its first record is read only to say, once, that the
lookup did not narrow anything.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 10.0

_said_unsupported = False


def seek_offset(consumer: Consumer, topic: str, partition: int, timestamp_ms: int, low: int, high: int) -> int:
    """The offset to start reading `topic[partition]` from so that no record at or after `timestamp_ms` is missed.

    `low`/`high` are the partition's watermark offsets. Leaves the consumer
    assigned wherever the checks left it: assign the returned offset next.
    """
    where = f"{topic}[{partition}]"
    try:
        answer = consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)], LOOKUP_TIMEOUT_S)[0]
    except KafkaException as exc:
        log.warning("%s: timestamp lookup failed (%s); reading the partition from its beginning", where, exc)
        return low
    if answer.error is not None:
        log.warning("%s: timestamp lookup failed (%s); reading the partition from its beginning", where, answer.error)
        return low
    offset = answer.offset
    if offset < 0:
        # No record at or after the timestamp: nothing of the range is in this partition.
        return high
    if offset <= low:
        _check_beginning(consumer, topic, partition, low, timestamp_ms)
        if low > 0:
            # Records before `low` are gone (retention): they may have held events the replay needs.
            log.warning(
                "%s: the partition starts at offset %d now: records up to the replay's start may have been deleted "
                "(retention); if the range is older than what Kafka keeps, replay it with --source archive",
                where,
                low,
            )
        return low
    before = record_timestamp(consumer, topic, partition, offset - 1)
    if before is not None and before >= timestamp_ms:
        log.warning(
            "%s: the broker's timestamp lookup answered offset %d, but offset %d is already at %d >= %d; "
            "reading the partition from its beginning",
            where,
            offset,
            offset - 1,
            before,
            timestamp_ms,
        )
        return low
    return offset


def _check_beginning(consumer: Consumer, topic: str, partition: int, low: int, timestamp_ms: int) -> None:
    global _said_unsupported
    if _said_unsupported:
        return
    first = record_timestamp(consumer, topic, partition, low)
    if first is not None and first < timestamp_ms:
        _said_unsupported = True
        log.info(
            "the broker answers timestamp lookups with each partition's first offset (%s[%d]: its first record is "
            "at %d, before %d): replays read partitions from their beginning (correct, only slower; tansu 0.6 does "
            "this, Apache Kafka does not)",
            topic,
            partition,
            first,
            timestamp_ms,
        )


def record_timestamp(consumer: Consumer, topic: str, partition: int, offset: int) -> int | None:
    """The timestamp of the record at `offset` (or the next one present), None at the end or on timeout."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while time.monotonic() < deadline:
        for message in consumer.consume(1, 0.5):
            error = message.error()
            if error is None:
                _kind, timestamp = message.timestamp()
                return int(timestamp)
            if error.code() == KafkaError._PARTITION_EOF:
                return None
    return None
