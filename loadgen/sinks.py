"""Where generated messages go: a JSON Lines file, Parquet files, Kafka, or a list in memory.

Every sink takes batches of messages already in delivery order and returns a
small report from `close()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Protocol

from loadgen.faults import DUPLICATE, LATE, MALFORMED, VALID, Out
from schemas.contract import FAMILIES
from settings.kafka import KafkaSettings

FAMILY_PLACEHOLDER = "{family}"


class SinkError(RuntimeError):
    """The destination cannot take the messages; the message says why and what to do."""


class Sink(Protocol):
    """A destination for messages in delivery order."""

    def write(self, messages: list[Out]) -> None:
        """Send or store a batch of messages."""
        ...

    def close(self) -> dict[str, Any]:
        """Finish (flush, close files) and report what happened."""
        ...


def family_path(path: str, family: str) -> Path:
    """The file of one family: `{family}` in the path is replaced, else the family goes before the suffix.

    `out.parquet` -> `out.playback.parquet`; `out/{family}.jsonl` -> `out/playback.jsonl`.
    """
    if FAMILY_PLACEHOLDER in path:
        return Path(path.replace(FAMILY_PLACEHOLDER, family))
    p = Path(path)
    return p.with_name(f"{p.stem}.{family}{p.suffix}")


def _open(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("wb", buffering=1 << 20)
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror}") from None


class JsonlSink:
    """One message per line, in delivery order: one file, or one per family with `{family}` in the path."""

    def __init__(self, path: str) -> None:
        self.paths: dict[str, Path] = {}
        self._files: dict[str, IO[bytes]] = {}
        if FAMILY_PLACEHOLDER in path:
            for family in FAMILIES:
                self.paths[family] = family_path(path, family)
                self._files[family] = _open(self.paths[family])
            self._single: IO[bytes] | None = None
        else:
            self.paths["all"] = Path(path)
            self._single = _open(Path(path))
        self.lines = 0

    def write(self, messages: list[Out]) -> None:
        """Append the messages' bytes, one per line."""
        if not messages:
            return
        if self._single is not None:
            self._single.write(b"\n".join([m[3] for m in messages]))
            self._single.write(b"\n")
        else:
            for m in messages:
                f = self._files[m[1]]
                f.write(m[3])
                f.write(b"\n")
        self.lines += len(messages)

    def close(self) -> dict[str, Any]:
        """Close the files."""
        for f in [self._single, *self._files.values()]:
            if f is not None:
                f.close()
        return {"lines": self.lines, "files": {k: str(v) for k, v in self.paths.items()}}


class ParquetSink:
    """Valid events (and re-delivered copies) as Parquet in the archive's Arrow schema, one file per family.

    Malformed messages cannot be represented in the archive schema; the runner refuses them up front.
    """

    ROWS_PER_GROUP = 65_536

    def __init__(self, path: str) -> None:
        import pyarrow.parquet as pq

        from schemas.arrow import archive_schema, events_to_table

        self._events_to_table = events_to_table
        self.paths = {family: family_path(path, family) for family in FAMILIES}
        self._writers: dict[str, Any] = {}
        for family, p in self.paths.items():
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                self._writers[family] = pq.ParquetWriter(str(p), archive_schema(family))
            except OSError as exc:
                raise SinkError(f"cannot write {p}: {exc.strerror}") from None
        self._rows: dict[str, list[dict[str, Any]]] = {family: [] for family in FAMILIES}
        self.rows = dict.fromkeys(FAMILIES, 0)

    def write(self, messages: list[Out]) -> None:
        """Buffer the messages' events; full row groups go to disk."""
        for m in messages:
            if m[5] == MALFORMED or m[4] is None:
                raise SinkError("malformed messages cannot be written to Parquet; drop --malformed-fraction")
            rows = self._rows[m[1]]
            rows.append(m[4])
            if len(rows) >= self.ROWS_PER_GROUP:
                self._flush(m[1])

    def _flush(self, family: str) -> None:
        rows = self._rows[family]
        if rows:
            self._writers[family].write_table(self._events_to_table(family, rows))
            self.rows[family] += len(rows)
            self._rows[family] = []

    def close(self) -> dict[str, Any]:
        """Write what is buffered and close the files."""
        for family in FAMILIES:
            self._flush(family)
            self._writers[family].close()
        return {"rows": dict(self.rows), "files": {k: str(v) for k, v in self.paths.items()}}


class MemorySink:
    """Keeps the messages in a list (the Python API and tests)."""

    def __init__(self) -> None:
        self.messages: list[Out] = []

    def write(self, messages: list[Out]) -> None:
        """Keep the batch."""
        self.messages.extend(messages)

    def close(self) -> dict[str, Any]:
        """Nothing to close."""
        return {"messages": len(self.messages)}


class KafkaSink:
    """Produces to the family topics, keyed by the family's key field, counting delivery reports.

    Idempotent: every partition receives its messages exactly once and in the order they were written, also
    across retries and broker restarts.

    The broker is checked with a metadata request (bounded by `timeout_s`) before anything is produced, so an
    unreachable broker is a clear error instead of a hang.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        linger_ms: int = 20,
        batch_size: int = 1_000_000,
        compression: str = "none",
        timeout_s: float = 10.0,
        flush_timeout_s: float = 60.0,
        timestamps: str = "delivery",
    ) -> None:
        from confluent_kafka import KafkaException, Producer

        from connect.kafka_admin import KafkaRejected, KafkaUnavailable, wait_for_kafka
        from connect.kafka_log import with_logging

        self.settings = settings
        self.flush_timeout_s = flush_timeout_s
        self.use_delivery_time = timestamps == "delivery"
        self.topics = {family: settings.topic_for(family) for family in FAMILIES}
        self.produced = 0
        self.acked = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.by_kind = [0, 0, 0, 0]
        self._last_error: str | None = None
        config = {
            **settings.client_config(),
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "compression.type": compression,
            # Idempotence numbers every batch, so a retry (no leader yet right after a topic is created, a
            # broker restart) cannot land after a later batch: each partition keeps the send order, which the
            # ground truth assumes. It needs (and librdkafka then enforces) acks=all and at most 5 in flight.
            "enable.idempotence": True,
            "acks": "all",
        }
        try:
            # Refused credentials or TLS fail here within seconds, with what to fix (connect/kafka_admin.py).
            wait_for_kafka(settings, timeout_s)
        except KafkaRejected as exc:
            raise SinkError(str(exc)) from None
        except KafkaUnavailable as exc:
            raise SinkError(f"cannot reach Kafka: {exc}") from None
        # librdkafka's lines go through the summary (connect/kafka_log.py): an outage is told once, not per try.
        try:
            self._producer = Producer(with_logging(config, settings.bootstrap, self._on_error))
        except KafkaException as exc:
            raise SinkError(f"Kafka producer configuration rejected: {exc}") from None
        self._check(timeout_s)

    def _on_error(self, err: Any) -> None:
        self._last_error = str(err)

    def _check(self, timeout_s: float) -> None:
        from confluent_kafka import KafkaException

        where = self.settings.bootstrap
        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            detail = self._last_error or str(exc)
            raise SinkError(
                f"cannot reach Kafka at {where} within {timeout_s:g} s ({detail}); "
                "is the broker running and --kafka-bootstrap right?"
            ) from None
        for topic in self.topics.values():
            if topic in metadata.topics and metadata.topics[topic].error is None:
                continue
            try:  # asking for the topic creates it when the broker auto-creates topics
                found = self._producer.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
            except KafkaException as exc:
                raise SinkError(f"cannot read metadata of topic {topic!r} at {where}: {exc}") from None
            if found is None or found.error is not None:
                raise SinkError(
                    f"topic {topic!r} does not exist at {where} and the broker did not create it; create it first"
                )

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed += 1
            reason = err.str() if hasattr(err, "str") else str(err)
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def write(self, messages: list[Out]) -> None:
        """Hand the batch to the producer, waiting for room in its queue when it is full."""
        producer = self._producer
        topics = self.topics
        cb = self._on_delivery
        use_time = self.use_delivery_time
        for m in messages:
            topic = topics[m[1]]
            while True:
                try:
                    if use_time:
                        producer.produce(topic, m[3], m[2], on_delivery=cb, timestamp=m[0])
                    else:
                        producer.produce(topic, m[3], m[2], on_delivery=cb)
                    break
                except BufferError:
                    producer.poll(0.05)
            self.by_kind[m[5]] += 1
        self.produced += len(messages)
        producer.poll(0)

    def close(self) -> dict[str, Any]:
        """Wait (bounded) for every delivery report."""
        remaining = self._producer.flush(self.flush_timeout_s)
        return {
            "produced": self.produced,
            "acked": self.acked,
            "failed": self.failed,
            "unconfirmed": remaining,
            "errors": dict(sorted(self.errors.items())),
            "by_kind": {
                "valid": self.by_kind[VALID] + self.by_kind[LATE],
                "duplicate": self.by_kind[DUPLICATE],
                "malformed": self.by_kind[MALFORMED],
            },
            "topics": self.topics,
        }
