"""Connection settings shared by every subcommand: Kafka, Redis, topics, namespace.

Secrets (SASL password, Redis password) are `Secret`s: they can be read from a
file (`--x-file`) or the environment, and never print, so neither a log line
nor an error message can leak them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from urllib.parse import urlsplit

from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayRange
from schemas.contract import families
from settings.errors import ConfigError
from settings.kafka import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSettings
from settings.redis import RedisSettings
from settings.secret import Secret
from settings.windows import WindowConfig
from streampulse.options import add_option, duration_ms, message_bytes, positive_duration_ms, positive_int

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _read_secret(args: argparse.Namespace, name: str) -> Secret | None:
    direct = getattr(args, name, None)
    path = getattr(args, f"{name}_file", None)
    if direct and path:
        raise ConfigError(f"give --{name.replace('_', '-')} or --{name.replace('_', '-')}-file, not both")
    if path:
        try:
            return Secret(Path(path).read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(f"cannot read --{name.replace('_', '-')}-file {path}: {exc.strerror}") from None
    return Secret(direct) if direct else None


def add_kafka_options(parser: argparse.ArgumentParser) -> None:
    """Options to reach Kafka and name the topics."""
    group = parser.add_argument_group("Kafka")
    add_option(group, "--kafka-bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers, host:port[,...]")
    topics = families()
    add_option(group, "--playback-topic", default=topics["playback"].default_topic, help="topic of playback events")
    add_option(group, "--signup-topic", default=topics["signup"].default_topic, help="topic of sign-up events")
    add_option(group, "--dead-letter-topic", default="streampulse-dead-letter", help="topic for rejected events")
    add_option(group, "--anomalies-topic", default="anomalies", help="topic the anomaly detector publishes to")
    add_option(
        group,
        "--dead-letter-max-bytes",
        type=message_bytes,
        help="largest dead letter produced whole; larger ones go truncated, with their size and SHA-256 in headers "
        "(default: the dead-letter topic's max.message.bytes as the broker reports it, else 1000000)",
    )
    add_option(
        group, "--kafka-security-protocol", default="PLAINTEXT", choices=SECURITY_PROTOCOLS, help="Kafka security"
    )
    add_option(group, "--kafka-sasl-mechanism", choices=SASL_MECHANISMS, help="SASL mechanism")
    add_option(group, "--kafka-sasl-username", help="SASL user name")
    add_option(group, "--kafka-sasl-password", secret=True, help="SASL password (prefer the -file form)")
    add_option(group, "--kafka-sasl-password-file", help="file holding the SASL password")
    add_option(group, "--kafka-ssl-ca-location", help="CA certificate file for TLS")


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    """Options to reach Redis and choose the key namespace."""
    group = parser.add_argument_group("Redis")
    add_option(group, "--redis-url", default="redis://127.0.0.1:6379/0", help="Redis URL (redis:// or rediss://)")
    add_option(group, "--redis-password", secret=True, help="Redis password (prefer the -file form)")
    add_option(group, "--redis-password-file", help="file holding the Redis password")
    add_option(
        group,
        "--redis-ssl-ca-location",
        help="CA certificate file (PEM) that signed the Redis server's certificate, for rediss:// URLs "
        "(default: the system's CAs)",
    )
    add_option(group, "--namespace", default="live", help="Redis key namespace; replays use their own")


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """Validated Kafka settings from parsed options; raises ConfigError saying what to fix."""
    bootstrap = args.kafka_bootstrap.strip()
    for server in bootstrap.split(","):
        host, sep, port_text = server.strip().rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(
                f"--kafka-bootstrap {args.kafka_bootstrap!r}: each server must be host:port, e.g. 127.0.0.1:9092"
            )
    names = {
        "--playback-topic": args.playback_topic,
        "--signup-topic": args.signup_topic,
        "--dead-letter-topic": args.dead_letter_topic,
    }
    for flag, topic in [*names.items(), ("--anomalies-topic", args.anomalies_topic)]:
        if not _TOPIC.match(topic):
            raise ConfigError(f"{flag} {topic!r} is not a valid Kafka topic name (letters, digits, . _ -)")
    if len(set(names.values())) != len(names):
        raise ConfigError("the playback, sign-up and dead-letter topics must be three different topics")
    if args.anomalies_topic in names.values():
        raise ConfigError(
            f"--anomalies-topic {args.anomalies_topic!r} must differ from the input and dead-letter topics"
        )
    protocol = args.kafka_security_protocol
    password = _read_secret(args, "kafka_sasl_password")
    if protocol.startswith("SASL") and not (args.kafka_sasl_mechanism and args.kafka_sasl_username and password):
        raise ConfigError(
            f"--kafka-security-protocol {protocol} needs --kafka-sasl-mechanism, --kafka-sasl-username "
            "and a password (--kafka-sasl-password-file or STREAMPULSE_KAFKA_SASL_PASSWORD)"
        )
    ca_location = args.kafka_ssl_ca_location
    if ca_location and not Path(ca_location).is_file():
        # Checked here rather than by librdkafka at connect time: its message names neither the flag nor the file.
        raise ConfigError(
            f"--kafka-ssl-ca-location {ca_location}: no such file. Give the PEM file of the CA that signed the "
            "broker's certificate (or STREAMPULSE_KAFKA_SSL_CA_LOCATION)."
        )
    return KafkaSettings(
        bootstrap=bootstrap,
        playback_topic=args.playback_topic,
        signup_topic=args.signup_topic,
        dead_letter_topic=args.dead_letter_topic,
        anomalies_topic=args.anomalies_topic,
        dead_letter_max_bytes=args.dead_letter_max_bytes,
        security_protocol=protocol,
        sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_username=args.kafka_sasl_username,
        sasl_password=password,
        ssl_ca_location=ca_location,
    )


def redis_settings(args: argparse.Namespace) -> RedisSettings:
    """Validated Redis settings from parsed options; raises ConfigError saying what to fix."""
    parts = urlsplit(args.redis_url)
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise ConfigError(
            f"--redis-url must look like redis://host:port/db or rediss://host:port/db, got {parts.scheme}://…"
        )
    if not _NAMESPACE.match(args.namespace):
        raise ConfigError(
            f"--namespace {args.namespace!r}: use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return RedisSettings(
        url=args.redis_url,
        namespace=args.namespace,
        password=_read_secret(args, "redis_password"),
        ssl_ca_location=_redis_ca(args, parts.scheme),
    )


def _redis_ca(args: argparse.Namespace, scheme: str) -> str | None:
    """The --redis-ssl-ca-location file, checked readable now rather than at the first connection."""
    location: str | None = getattr(args, "redis_ssl_ca_location", None)
    if not location:
        return None
    if scheme != "rediss":
        raise ConfigError(
            f"--redis-ssl-ca-location is for TLS: use a rediss:// --redis-url (got {scheme}://…), or drop the CA"
        )
    try:
        with Path(location).open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--redis-ssl-ca-location {location}: {exc.strerror}; give the CA certificate file (PEM) that signed "
            "the Redis server's certificate"
        ) from None
    return location


def add_decoder_options(group: argparse._ArgumentGroup) -> None:
    """What the contract decoder rejects beyond the contract itself (every command that decodes events takes them)."""
    add_option(group, "--max-message-bytes", type=positive_int, default="65536", help="larger messages are rejected")
    add_option(
        group,
        "--max-future-skew",
        type=duration_ms,
        default="1h",
        help="events further ahead of the clock are rejected",
    )


def add_flow_options(parser: argparse.ArgumentParser) -> None:
    """Options of the dataflow: windows, lateness, limits, Redis retention."""
    group = parser.add_argument_group("windows and input")
    add_option(group, "--fine-window", type=positive_duration_ms, default="10s", help="fine window (live watching)")
    add_option(group, "--coarse-window", type=positive_duration_ms, default="1m", help="coarse window (history)")
    add_option(
        group, "--allowed-lateness", type=duration_ms, default="30s", help="how long a window waits for late events"
    )
    add_option(
        group,
        "--publish-interval",
        type=positive_duration_ms,
        default="1s",
        help="how often open windows are published",
    )
    add_decoder_options(group)
    add_option(
        group, "--batch-size", type=positive_int, default="20000", help="messages consumed per partition per batch"
    )
    add_option(
        group,
        "--start-at",
        default="earliest",
        choices=("earliest", "latest"),
        help="where a partition without saved progress starts",
    )
    add_option(group, "--redis-ttl", type=positive_duration_ms, default="7d", help="retention of window keys in Redis")
    add_option(
        group,
        "--session-timeout",
        type=positive_duration_ms,
        default="60s",
        help="a session silent this long stops counting as a concurrent stream (2 x the heartbeat interval)",
    )
    add_option(
        group,
        "--metric-set",
        default="all",
        choices=("all", "stream_starts"),
        help="compute every metric, or stream starts alone (for like-for-like benchmarks)",
    )


def reader_config(args: argparse.Namespace, exit_at_end: bool, replay: ReplayRange | None = None) -> ReaderConfig:
    """Validated reader settings from parsed options; raises ConfigError saying what to fix."""
    try:
        windows = WindowConfig(
            fine_ms=args.fine_window,
            coarse_ms=args.coarse_window,
            allowed_lateness_ms=args.allowed_lateness,
            publish_interval_ms=args.publish_interval,
        )
    except ValueError as exc:
        raise ConfigError(f"--fine-window/--coarse-window/--allowed-lateness: {exc}") from None
    return ReaderConfig(
        windows=windows,
        batch_size=args.batch_size,
        start_at=args.start_at,
        exit_at_end=exit_at_end,
        max_message_bytes=args.max_message_bytes,
        max_future_skew_ms=args.max_future_skew,
        session_timeout_ms=args.session_timeout,
        metric_set=args.metric_set,
        replay=replay,
    )
