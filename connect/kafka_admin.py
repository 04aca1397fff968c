"""Talking to the Kafka cluster itself: is it there, and do the topics exist."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connect.kafka_log import with_logging
from settings.errors import ConfigError
from settings.kafka import KafkaSettings

log = logging.getLogger(__name__)


class KafkaUnavailable(ConfigError):
    """Kafka could not be reached; the message says where we tried and what to check."""


class KafkaRejected(KafkaUnavailable):
    """Kafka answered but refused us (credentials, mechanism, TLS): retrying cannot help, the settings must change."""


def admin_client(kafka: KafkaSettings) -> AdminClient:
    """An admin client for the configured cluster, its librdkafka lines summarised (connect/kafka_log.py)."""
    return AdminClient(with_logging(kafka.client_config(), kafka.bootstrap))


def wait_for_kafka(kafka: KafkaSettings, timeout_s: float = 30.0) -> AdminClient:
    """Return an admin client once the cluster answers a metadata request.

    Raises KafkaRejected as soon as the cluster refuses our credentials or TLS (no point waiting for those), and
    KafkaUnavailable after `timeout_s` without an answer. Both say in one line what to fix; the probe itself logs
    nothing (its errors are what the line is made of).
    """
    errors: list[KafkaError] = []
    silent = logging.getLogger("streampulse.kafka.probe")
    silent.propagate = False
    silent.addHandler(logging.NullHandler())
    try:
        config: dict[str, Any] = {**kafka.client_config(), "logger": silent, "log_level": 0}
        config["error_cb"] = errors.append
        probe = AdminClient(config)
    except KafkaException as exc:
        # librdkafka checks its TLS settings (the CA file can be read and parsed) when the client is made.
        raise KafkaRejected(
            f"Kafka client settings rejected ({_reason(exc)}): check --kafka-ssl-ca-location and "
            "--kafka-security-protocol"
        ) from None
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        try:
            probe.list_topics(timeout=min(1.0, max(deadline - time.monotonic(), 0.1)))
            return admin_client(kafka)
        except KafkaException as exc:
            last_error = _reason(exc)
        probe.poll(0)  # serves error_cb: the errors that tell a refusal from a dead broker
        refusal = refusal_message(kafka, errors)
        if refusal is not None:
            raise KafkaRejected(refusal)
        time.sleep(0.2)
    raise KafkaUnavailable(
        f"Kafka at {kafka.bootstrap} did not answer within {timeout_s:.0f} s ({last_error}). "
        "Check --kafka-bootstrap / STREAMPULSE_KAFKA_BOOTSTRAP and that the broker is running."
    )


def refusal_message(kafka: KafkaSettings, errors: list[KafkaError]) -> str | None:
    """One line saying what to fix if `errors` show the cluster refusing us, or None if it may just be down."""
    for error in errors:
        text = " ".join(error.str().split())  # one line, whatever librdkafka wrote
        lowered = text.lower()
        where = f"Kafka at {kafka.bootstrap}"
        if "unsupported sasl mechanism" in lowered or "mechanism handshake failed" in lowered:
            return (
                f"{where} does not accept SASL mechanism {kafka.sasl_mechanism} ({text}). "
                "Set --kafka-sasl-mechanism / STREAMPULSE_KAFKA_SASL_MECHANISM to one the broker enables."
            )
        if error.code() == KafkaError._AUTHENTICATION or "authentication" in lowered:
            return (
                f"{where} rejected the SASL credentials of user {kafka.sasl_username!r} "
                f"({kafka.sasl_mechanism}): {text}. Check the password (--kafka-sasl-password-file / "
                "STREAMPULSE_KAFKA_SASL_PASSWORD), --kafka-sasl-username and --kafka-sasl-mechanism."
            )
        if "certificate verify failed" in lowered:
            ca = kafka.ssl_ca_location or "the system's CA store"
            return (
                f"{where}: its TLS certificate is not trusted by {ca} ({text}). Give the CA certificate that "
                "signed the broker's certificate with --kafka-ssl-ca-location / STREAMPULSE_KAFKA_SSL_CA_LOCATION."
            )
        if error.code() == KafkaError._SSL or "ssl handshake failed" in lowered:
            return (
                f"{where}: TLS handshake failed ({text}). Check --kafka-security-protocol (does the listener "
                "speak TLS?) and --kafka-ssl-ca-location."
            )
        if "security.protocol" in lowered:
            return (
                f"{where} closed the connection ({text}). Set --kafka-security-protocol / "
                "STREAMPULSE_KAFKA_SECURITY_PROTOCOL to what the listener speaks."
            )
    return None


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    return " ".join((error.str() if isinstance(error, KafkaError) else str(error)).split())


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
