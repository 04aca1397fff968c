"""Talking to the Kafka cluster itself: is it there, and do the topics exist."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streampulse.settings import ConfigError, KafkaSettings

log = logging.getLogger(__name__)


class KafkaUnavailable(ConfigError):
    """Kafka could not be reached; the message says where we tried and what to check."""


def admin_client(kafka: KafkaSettings) -> AdminClient:
    """An admin client for the configured cluster."""
    return AdminClient(kafka.client_config())


def wait_for_kafka(kafka: KafkaSettings, timeout_s: float = 30.0) -> AdminClient:
    """Return an admin client once the cluster answers a metadata request; raise KafkaUnavailable after `timeout_s`."""
    admin = admin_client(kafka)
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(5.0, max(deadline - time.monotonic(), 0.1)))
            return admin
        except KafkaException as exc:
            last_error = str(exc.args[0]) if exc.args else str(exc)
        time.sleep(0.5)
    raise KafkaUnavailable(
        f"Kafka at {kafka.bootstrap} did not answer within {timeout_s:.0f} s ({last_error}). "
        "Check --kafka-bootstrap / STREAMPULSE_KAFKA_BOOTSTRAP and that the broker is running."
    )


def topic_partitions(kafka: KafkaSettings, topic: str, admin: AdminClient | None = None) -> int | None:
    """How many partitions `topic` has, or None if it does not exist."""
    metadata = (admin or admin_client(kafka)).list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return None
    return len(metadata.partitions)


def ensure_topics(kafka: KafkaSettings, partitions: Mapping[str, int], admin: AdminClient | None = None) -> None:
    """Create the topics that do not exist yet with the given partition counts; keep existing ones."""
    admin = admin or admin_client(kafka)
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in partitions.items() if t not in existing]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            future.result(timeout=60)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if getattr(error, "name", lambda: "")() != "TOPIC_ALREADY_EXISTS":
                raise
    # Metadata can lag creation; wait until every topic is visible so readers find their partitions.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(topic_partitions(kafka, t, admin) for t in partitions):
            return
        time.sleep(0.2)
    raise KafkaUnavailable(f"topics {sorted(partitions)} were created but did not appear in metadata within 30 s")
