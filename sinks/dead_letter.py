"""The dead-letter topic: every rejected message with its original bytes and why.

Headers carry the reason, a human-readable detail and where the message came
from (`sp-source-topic`, `sp-source-partition`, `sp-source-offset`,
`sp-source-timestamp-ms`), so a message can be inspected, fixed and
re-published. Letters are produced as their batches come and waited for once
per epoch, before bytewax snapshots the epoch's input offsets (sinks/base.py,
`ProcessSink`): a rejected message is never acknowledged before its letter is
safe in the topic, and the flow does not stop for a broker round trip on every
batch that holds a bad message. Each process writes its own letters: their
bytes never leave the process that read them.

Dead-lettering never stops the flow:

- Size: the producer's limit is the dead-letter topic's `max.message.bytes`
  as the broker reports it (`--dead-letter-max-bytes` when set, or when the
  broker does not report it). A letter over the limit goes truncated, with
  its original size and SHA-256 in headers (sinks/dead_letter_fit.py);
  if the broker still refuses it as too large, a 1 KiB stub of it goes
  instead. Counted in `streampulse_dead_letters_truncated_total` by reason,
  logged once per reason.
- Kafka unreachable: letters wait (no delivery timeout) and the flow waits
  for them at the end of the epoch, with a warning every 30 s: nothing is
  lost, and the offsets of the rejected messages are not snapshotted before
  their letters are safe.
- Any other refusal (e.g. no write permission on the topic, a topic policy):
  retrying cannot help, so the letter is dropped, counted in
  `streampulse_dead_letters_undeliverable_total` by Kafka error, and logged
  once per error with the source coordinates of the message. The rejected
  message itself is still counted in `streampulse_bad_events_total`.

A crash between writing letters and the next snapshot re-reads those
messages on restart and writes their letters again: the producer is
idempotent within a run, not across runs. Readers of the topic deduplicate
by (`sp-source-topic`, `sp-source-partition`, `sp-source-offset`), which is
unique per rejected message (README, "Dead letters").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from connect.kafka_log import with_logging
from flows.health import pipeline_metrics
from flows.partials import DeadLetter
from settings.kafka import KafkaSettings
from sinks.base import ProcessSink, Writer
from sinks.dead_letter_fit import Outgoing, fit_letter, stub

log = logging.getLogger(__name__)

# librdkafka's own default, used when neither the broker nor --dead-letter-max-bytes says.
DEFAULT_MAX_BYTES = 1_000_000
# librdkafka's bounds on message.max.bytes.
LIBRDKAFKA_MIN_BYTES = 1000
LIBRDKAFKA_MAX_BYTES = 1_000_000_000
WAIT_REPORT_S = 30.0
DESCRIBE_TIMEOUT_S = 10.0
# Errors that mean "this record is too large for the topic": answered by a smaller letter, not by a retry.
_SIZE_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})

_logged_lock = threading.Lock()
_logged: set[str] = set()


def _log_once(key: str, message: str, *args: object) -> None:
    """Warn the first time `key` happens in this process; counters count every time."""
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    log.warning(message, *args)


def topic_max_message_bytes(kafka: KafkaSettings, topic: str) -> int | None:
    """The topic's `max.message.bytes` as the broker reports it; None if it does not (or cannot be asked)."""
    admin = AdminClient(kafka.client_config())
    try:
        futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
        for future in futures.values():
            entry = future.result(DESCRIBE_TIMEOUT_S).get("max.message.bytes")
            if entry is not None and entry.value:
                return int(entry.value)
    except (KafkaException, ValueError) as exc:
        log.info("could not read max.message.bytes of topic %s: %s", topic, exc)
    return None


def dead_letter_limit(kafka: KafkaSettings) -> int:
    """The largest dead letter to produce: --dead-letter-max-bytes, else the topic's limit, else 1,000,000."""
    if kafka.dead_letter_max_bytes is not None:
        return kafka.dead_letter_max_bytes
    reported = topic_max_message_bytes(kafka, kafka.dead_letter_topic)
    if reported is not None:
        reported = min(reported, LIBRDKAFKA_MAX_BYTES)
        log.info("dead letters up to %d bytes (max.message.bytes of %s) go whole", reported, kafka.dead_letter_topic)
        return reported
    log.info(
        "the broker does not report max.message.bytes of %s: dead letters over %d bytes go truncated "
        "(set --dead-letter-max-bytes to the topic's real limit)",
        kafka.dead_letter_topic,
        DEFAULT_MAX_BYTES,
    )
    return DEFAULT_MAX_BYTES


def producer_config(kafka: KafkaSettings, limit: int) -> dict[str, Any]:
    """Librdkafka settings of the dead-letter producer for a topic limit of `limit` bytes."""
    # Polled only when it writes: its connection errors would come late, the readers tell of outages.
    config = with_logging(kafka.client_config(), kafka.bootstrap, outages=False)
    config.update(
        {
            # Idempotence keeps librdkafka's own retries from writing a letter twice (within a run).
            "enable.idempotence": True,
            "linger.ms": 20,
            "compression.type": "lz4",
            # A letter up to the topic's limit is accepted locally (librdkafka's default is 1,000,000), within
            # the bounds librdkafka allows; a topic allowing more than 1e9 bytes still gets letters up to 1e9.
            "message.max.bytes": min(max(limit, LIBRDKAFKA_MIN_BYTES), LIBRDKAFKA_MAX_BYTES),
            # No delivery timeout: while Kafka is away the letters wait, and the flow with them.
            "message.timeout.ms": 0,
        }
    )
    return config


class DeadLetterWriter(Writer[DeadLetter]):
    """One worker's dead-letter producer: every letter of a batch written, truncated, stubbed or given up on."""

    def __init__(self, settings: KafkaSettings, limit: int) -> None:
        self._settings = settings
        self._limit = limit
        self._producer = Producer(producer_config(settings, limit))
        self._topic = settings.dead_letter_topic
        # Letters to send again after their delivery failed: (letter, send it as a stub).
        self._again: list[tuple[DeadLetter, bool]] = []
        self._broken = False
        self._retried = ""  # the last transient error librdkafka reported, while letters wait to be resent
        metrics = pipeline_metrics()
        self._written = metrics.dead_letters_written
        self._truncated = metrics.dead_letters_truncated
        self._undeliverable = metrics.dead_letters_undeliverable

    def write(self, items: Sequence[DeadLetter]) -> None:
        """Produce `items` (never raises); `settle` waits for them."""
        if self._broken:  # a fatal error: the producer is replaced once what it holds is drained
            self._wait()
        self._resend()
        for letter in items:
            self._send(letter, as_stub=False)

    def settle(self) -> None:
        """Return once every letter produced so far is written or given up on (counted and logged)."""
        self._wait()

    def _resend(self) -> None:
        """Send again the letters whose delivery failed so far."""
        again, self._again = self._again, []
        for letter, as_stub in again:
            self._send(letter, as_stub)

    def _send(self, letter: DeadLetter, as_stub: bool) -> None:
        outgoing = stub(letter) if as_stub else fit_letter(letter, self._limit)
        headers: list[tuple[str, str | bytes | None]] = [*outgoing.headers]  # the type librdkafka's stubs want
        while True:
            try:
                self._producer.produce(
                    self._topic,
                    value=outgoing.value,
                    key=outgoing.key,
                    headers=headers,
                    on_delivery=self._on_delivery(letter, outgoing, as_stub),
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                self._producer.poll(1.0)
            except KafkaException as exc:  # refused before sending, e.g. over message.max.bytes
                self._failed(letter, as_stub, exc.args[0])
                return
        self._producer.poll(0)

    def _on_delivery(
        self, letter: DeadLetter, outgoing: Outgoing, as_stub: bool
    ) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                self._failed(letter, as_stub, err)
                return
            self._written.inc()
            if outgoing.truncated:
                self._truncated.labels(letter.reason).inc()
                _log_once(
                    f"truncated:{letter.reason}",
                    "dead letter of %s[%d]@%d (%s) is %d bytes, over the %d-byte limit of %s: written truncated, "
                    "with its size and SHA-256 in headers (counted in streampulse_dead_letters_truncated_total; "
                    "logged once per reason)",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    letter.reason,
                    len(letter.value or b""),
                    self._limit,
                    self._topic,
                )

        return delivered

    def _failed(self, letter: DeadLetter, as_stub: bool, err: KafkaError) -> None:
        if err.code() in _SIZE_ERRORS and not as_stub:
            self._again.append((letter, True))  # too large after all (the limit was a guess): a stub goes
        elif err.retriable() and not err.fatal():
            self._again.append((letter, as_stub))
            self._retried = err.str()
        else:
            self._undeliverable.labels(err.name()).inc()
            _log_once(
                f"undeliverable:{err.name()}",
                "could not write the dead letter of %s[%d]@%d (%s) to %s: %s. It is dropped and counted in "
                "streampulse_dead_letters_undeliverable_total; others failing the same way are only counted",
                letter.topic,
                letter.partition,
                letter.offset,
                letter.reason,
                self._topic,
                err.str(),
            )
            # A fatal error leaves the producer unusable (it fails what it still holds): replace it once drained.
            self._broken = self._broken or err.fatal()

    def _wait(self) -> None:
        """Return once every letter produced is written or given up on (counted and logged)."""
        started = time.monotonic()
        while True:
            remaining = self._producer.flush(WAIT_REPORT_S)
            if self._broken and not remaining:
                self._producer = Producer(producer_config(self._settings, self._limit))
                self._broken = False
            again = len(self._again)
            self._resend()
            if not remaining and not again:
                return
            if remaining or self._retried:
                log.warning(
                    "%d dead letter(s) for %s not written after %.0f s (%s): retrying, the flow waits",
                    remaining + again,
                    self._topic,
                    time.monotonic() - started,
                    self._retried or "no answer from Kafka",
                )
            if self._retried:  # librdkafka gave up on a transient error: give Kafka a moment before resending
                self._retried = ""
                time.sleep(1.0)


class DeadLetterSink(ProcessSink[DeadLetter]):
    """Bytewax sink producing rejected messages to the dead-letter topic: one producer per process.

    Its input is each batch's letters keyed with `process_part(process)` (sinks/base.py), `process` being this
    process's index in the cluster (0 alone).
    """

    def __init__(self, settings: KafkaSettings, process: int) -> None:
        super().__init__(self._writer, process)
        self._settings = settings

    def _writer(self) -> DeadLetterWriter:
        return DeadLetterWriter(self._settings, dead_letter_limit(self._settings))
