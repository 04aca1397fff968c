"""How to reach Kafka, and the topics streampulse reads and writes: typed, validated before use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from settings.secret import Secret

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka, and the topics streampulse reads and writes."""

    bootstrap: str
    playback_topic: str
    signup_topic: str
    dead_letter_topic: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None
    anomalies_topic: str = "anomalies"
    # None: the dead-letter topic's max.message.bytes as the broker reports it (sinks/dead_letter.py).
    dead_letter_max_bytes: int | None = None

    def client_config(self) -> dict[str, Any]:
        """Librdkafka settings common to producers, consumers and the admin client."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.reveal()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config

    def topic_for(self, family: str) -> str:
        """The input topic of an event family (`playback` or `signup`)."""
        return {"playback": self.playback_topic, "signup": self.signup_topic}[family]
