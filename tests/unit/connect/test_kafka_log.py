"""The summary of librdkafka's lines, and how a Kafka refusal is told apart from a broker that is down."""

from __future__ import annotations

import argparse
import logging
import math
import time

import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from connect.kafka_admin import refusal_message
from connect.kafka_log import KafkaLogSummary, with_logging
from flows.health import PipelineMetrics
from settings.errors import ConfigError
from settings.kafka import KafkaSettings
from settings.secret import Secret
from streampulse.configure import add_kafka_options, kafka_settings

BOOTSTRAP = "127.0.0.1:9092"
REFUSED = (
    "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def summary(lines: list[str]) -> tuple[KafkaLogSummary, Clock]:
    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    out = logging.getLogger("test.kafka_log")
    out.handlers = [Collect()]
    out.propagate = False
    clock = Clock()
    return KafkaLogSummary(out, reminder_s=30.0, clock=clock, wall_clock=lambda: 43_200.0 + clock.now), clock


def test_an_outage_is_one_line_then_a_reminder_with_the_count_then_one_line_when_back(
    summary: tuple[KafkaLogSummary, Clock], lines: list[str]
) -> None:
    kafka, clock = summary
    # 17 clients failing every 0.2 s for 60 s: what flooded the log before (~86 lines a second).
    for _ in range(300):
        clock.now += 0.2
        for _client in range(17):
            kafka.on_line(BOOTSTRAP, logging.ERROR, "FAIL", REFUSED)
            kafka.on_error(BOOTSTRAP, KafkaError(KafkaError._TRANSPORT, REFUSED))
    assert kafka.is_unreachable(BOOTSTRAP)
    kafka.reachable(BOOTSTRAP)
    kafka.reachable(BOOTSTRAP)
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"Kafka {BOOTSTRAP} unreachable since 12:16:40 UTC, retrying: ")
    assert "Connection refused" in lines[0]
    assert lines[1].startswith(f"Kafka {BOOTSTRAP} unreachable since 12:16:40 UTC, retrying; ")
    assert "connection errors" in lines[1]
    assert lines[2].startswith(f"Kafka {BOOTSTRAP} reachable again after 60 s unreachable (10200 connection errors)")
    assert not kafka.is_unreachable(BOOTSTRAP)


def test_other_lines_are_said_once_per_kind_then_with_how_many_were_held_back(
    summary: tuple[KafkaLogSummary, Clock], lines: list[str]
) -> None:
    kafka, clock = summary
    for _ in range(100):
        kafka.on_line(BOOTSTRAP, logging.WARNING, "PARTCNT", "Topic t partition count changed")
    kafka.on_line(BOOTSTRAP, logging.WARNING, "OTHER", "something else")
    clock.now += 31
    kafka.on_line(BOOTSTRAP, logging.WARNING, "PARTCNT", "Topic t partition count changed")
    assert lines == [
        f"Kafka {BOOTSTRAP}: Topic t partition count changed",
        f"Kafka {BOOTSTRAP}: something else",
        f"Kafka {BOOTSTRAP}: Topic t partition count changed (99 more like it held back)",
    ]


def test_a_refusal_is_not_an_outage_and_is_said_once_from_both_the_log_and_error_cb(
    summary: tuple[KafkaLogSummary, Clock], lines: list[str]
) -> None:
    kafka, _clock = summary
    text = "sasl_ssl://h:9093/bootstrap: SASL authentication error: Authentication failed: invalid credentials"
    for _ in range(50):
        kafka.on_line(BOOTSTRAP, logging.ERROR, "FAIL", text)
        kafka.on_error(BOOTSTRAP, KafkaError(KafkaError._AUTHENTICATION, text))
    assert lines == [f"Kafka {BOOTSTRAP}: {text}"]
    assert not kafka.is_unreachable(BOOTSTRAP)


def test_every_client_config_routes_librdkafka_through_the_summary() -> None:
    config = with_logging({"bootstrap.servers": BOOTSTRAP}, BOOTSTRAP)
    assert isinstance(config["logger"], logging.Logger) and not config["logger"].propagate
    assert callable(config["error_cb"])


SECURE = KafkaSettings(
    "h:9093", "p", "s", "d", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice",
    sasl_password=Secret("hunter2"), ssl_ca_location="/etc/ca.pem",
)  # fmt: skip


@pytest.mark.parametrize(
    ("code", "text", "words"),
    [
        (KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed during authentication due to "
         "invalid credentials with SASL mechanism SCRAM-SHA-512", ("rejected the SASL credentials", "--kafka-sasl-password-file")),
        (KafkaError._AUTHENTICATION, "SASL SCRAM-SHA-256 mechanism handshake failed: Broker: Unsupported SASL "
         "mechanism: broker's supported mechanisms: SCRAM-SHA-512", ("does not accept SASL mechanism", "--kafka-sasl-mechanism")),
        (KafkaError._SSL, "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker "
         "certificate could not be verified", ("not trusted by /etc/ca.pem", "--kafka-ssl-ca-location")),
        (KafkaError._SSL, "SSL handshake failed: wrong version number", ("TLS handshake failed", "--kafka-security-protocol")),
    ],
)  # fmt: skip
def test_a_refusal_says_what_to_fix_in_one_line(code: int, text: str, words: tuple[str, ...]) -> None:
    message = refusal_message(SECURE, [KafkaError(code, text + "\n(after 3ms)")])
    assert message is not None
    assert all(word in message for word in words), message
    assert "\n" not in message and "hunter2" not in message


def test_a_broker_that_is_down_is_not_a_refusal() -> None:
    errors = [
        KafkaError(KafkaError._TRANSPORT, REFUSED),
        KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"),
    ]
    assert refusal_message(SECURE, errors) is None


def test_a_missing_ca_file_stops_at_start_naming_the_flag(tmp_path: object) -> None:
    parser = argparse.ArgumentParser()
    add_kafka_options(parser)
    args = parser.parse_args(["--kafka-security-protocol", "SSL", "--kafka-ssl-ca-location", "/no/such/ca.pem"])
    with pytest.raises(ConfigError, match=r"--kafka-ssl-ca-location /no/such/ca.pem: no such file"):
        kafka_settings(args)


def test_the_watermark_delay_is_computed_when_scraped_from_the_wall_clock() -> None:
    metrics = PipelineMetrics(CollectorRegistry())

    def delay() -> float | None:
        return metrics.registry.get_sample_value("streampulse_watermark_delay_seconds")

    before = delay()
    assert before is not None and math.isnan(before), "unknown before the first watermark, not 0"
    metrics.observe_watermark(int((time.time() - 10) * 1000))
    first = delay()
    assert first is not None and 9.5 < first < 12
    time.sleep(0.3)
    second = delay()
    # No publish in between (a stuck flow publishes nothing), yet the delay follows the clock.
    assert second is not None and second - first == pytest.approx(0.3, abs=0.2)


def test_kafka_reachability_is_unknown_until_measured() -> None:
    metrics = PipelineMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value("streampulse_kafka_reachable")
    assert value is not None and math.isnan(value)


def test_connection_errors_served_late_do_not_open_a_new_outage(
    summary: tuple[KafkaLogSummary, Clock], lines: list[str]
) -> None:
    kafka, clock = summary
    kafka.unreachable(BOOTSTRAP, "Connection refused")
    clock.now += 20
    kafka.reachable(BOOTSTRAP)
    clock.now += 0.5
    kafka.on_line(BOOTSTRAP, logging.ERROR, "FAIL", REFUSED)  # queued during the outage, served just now
    # A client polled only now and then never tells of outages, however late.
    clock.now += 3600
    kafka.on_line(BOOTSTRAP, logging.ERROR, "FAIL", REFUSED, outages=False)
    kafka.on_error(BOOTSTRAP, KafkaError(KafkaError._TRANSPORT, REFUSED), outages=False)
    assert len(lines) == 2 and "reachable again" in lines[1], lines
    assert not kafka.is_unreachable(BOOTSTRAP)
    kafka.on_line(BOOTSTRAP, logging.ERROR, "FAIL", REFUSED)  # a new outage, told by a client polled all the time
    assert kafka.is_unreachable(BOOTSTRAP) and len(lines) == 3
