"""The dead-letter topic: every rejected message with its original bytes and why.

Headers carry the reason, a human-readable detail and where the message came
from (`sp-source-topic`, `sp-source-partition`, `sp-source-offset`,
`sp-source-timestamp-ms`), so a message can be inspected, fixed and
re-published. Each batch is flushed before the dataflow moves on, so a
rejected message is never acknowledged before it is safe in the topic.
"""

from __future__ import annotations

import logging

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

from flows.partials import DeadLetter
from sinks.prometheus import pipeline_metrics
from streampulse.kafka_log import with_logging
from streampulse.settings import KafkaSettings

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
    """The headers describing a rejected message."""
    return [
        ("sp-reason", letter.reason.encode()),
        ("sp-detail", letter.detail.encode("utf-8", errors="replace")[:1024]),
        ("sp-source-topic", letter.topic.encode()),
        ("sp-source-partition", str(letter.partition).encode()),
        ("sp-source-offset", str(letter.offset).encode()),
        ("sp-source-timestamp-ms", str(letter.timestamp_ms).encode()),
    ]


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, settings: KafkaSettings) -> None:
        # Polled only when it writes: its connection errors would come late, the readers tell of outages.
        config = with_logging(settings.client_config(), settings.bootstrap, outages=False)
        # Idempotence keeps librdkafka's own retries from writing a letter twice.
        config.update({"enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4"})
        self._producer = Producer(config)
        self._topic = settings.dead_letter_topic
        self._failed: list[str] = []

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            pipeline_metrics().dead_letters_written.inc()
        else:
            self._failed.append(str(err))

    def write_batch(self, items: list[DeadLetter]) -> None:
        for letter in items:
            self._producer.produce(
                self._topic,
                value=letter.value,
                key=letter.key,
                headers=dead_letter_headers(letter),
                on_delivery=self._delivered,
            )
            self._producer.poll(0)
        remaining = self._producer.flush(FLUSH_TIMEOUT_S)
        if remaining or self._failed:
            errors, self._failed = self._failed, []
            # Raising stops the flow before the offsets of these messages are snapshotted:
            # on restart they are read and rejected again rather than lost.
            raise RuntimeError(
                f"could not write {remaining + len(errors)} message(s) to the dead-letter topic "
                f"{self._topic!r}: {errors[:3]}. Check that the topic exists and the broker is reachable."
            )

    def close(self) -> None:
        self._producer.flush(FLUSH_TIMEOUT_S)


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Bytewax sink producing rejected messages to the dead-letter topic."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        """One producer per worker."""
        return _DeadLetterPartition(self._settings)
