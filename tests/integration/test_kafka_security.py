"""Kafka over SASL_SSL (SCRAM-SHA-512 + TLS) on a real Apache Kafka: right credentials work, wrong ones fail fast.

The broker (tests/services/apache_kafka.py, `secure=True`) has a plaintext listener, which the tests produce
through, and a SASL_SSL one with certificates made for this module, which streampulse is pointed at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.integration.helpers import create_topics, playback_sessions, produce_log, streampulse
from tests.services.apache_kafka import ApacheKafka, SecureListener, start_apache_kafka
from tests.services.redis_server import RedisServer, start_redis_server

# It starts its own Apache Kafka, with a SASL_SSL listener (tests/services/apache_kafka.py).
pytestmark = [pytest.mark.integration, pytest.mark.stacks("apache")]

PARTITIONS = 2
# The bar is ~5 s; the assertion leaves room for a loaded 2-core machine (the old code took 31 s).
FAIL_FAST_S = 15.0


@dataclass(frozen=True)
class SecureStack:
    kafka: ApacheKafka
    listener: SecureListener
    redis: RedisServer
    password_file: Path
    wrong_password_file: Path


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    work = tmp_path_factory.mktemp("secure-kafka")
    kafka = start_apache_kafka(work / "kafka", secure=True)
    try:
        redis = start_redis_server(work / "redis")
    except Exception:
        kafka.stop()
        raise
    assert kafka.secure is not None
    password_file = work / "sasl-password"
    password_file.write_text(kafka.secure.password + "\n", encoding="utf-8")
    wrong_password_file = work / "wrong-sasl-password"
    wrong_password_file.write_text("not-the-password\n", encoding="utf-8")
    try:
        yield SecureStack(kafka, kafka.secure, redis, password_file, wrong_password_file)
    finally:
        redis.stop()
        kafka.stop()


def _env(stack: SecureStack, **overrides: str) -> dict[str, str]:
    """The connection settings as environment variables (as an operator would give secrets), with overrides."""
    env = {
        "STREAMPULSE_KAFKA_BOOTSTRAP": stack.listener.bootstrap,
        "STREAMPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMPULSE_KAFKA_SASL_MECHANISM": stack.listener.mechanism,
        "STREAMPULSE_KAFKA_SASL_USERNAME": stack.listener.username,
        "STREAMPULSE_KAFKA_SASL_PASSWORD_FILE": str(stack.password_file),
        "STREAMPULSE_KAFKA_SSL_CA_LOCATION": str(stack.listener.ca_file),
        "STREAMPULSE_REDIS_URL": stack.redis.url,
    }
    env.update(overrides)
    return env


def test_right_credentials_give_exact_aggregates(secure: SecureStack, unique_name: str) -> None:
    now = int(time.time() * 1000)
    log = playback_sessions(7, PARTITIONS, sessions=300, start_ms=now - 20 * 60_000, span_ms=3 * 60_000)
    topic, signups = f"playback-{unique_name}", f"signup-{unique_name}"
    create_topics(secure.kafka.bootstrap, {topic: PARTITIONS, signups: 1})
    produce_log(secure.kafka.bootstrap, topic, log)
    env = _env(secure)
    result = streampulse(
        "--log-level", "DEBUG", "run", "--exit-at-end", "--metrics-port", "0", "--playback-topic", topic,
        "--signup-topic", signups, "--dead-letter-topic", f"dead-letter-{unique_name}", "--namespace", unique_name,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert secure.listener.password not in result.stdout + result.stderr
    query = streampulse(
        "query", "stream_starts", "--from", "0", "--by", "country,device_type", "--format", "json",
        "--namespace", unique_name, env=env,
    )  # fmt: skip
    rows = [orjson.loads(line) for line in query.stdout.splitlines()]
    counts = {(r["window_start_ms"], r["dims"]["country"], r["dims"]["device_type"]): r["value"] for r in rows}
    assert {k: v for k, v in counts.items() if v} == log.expected_starts(10_000)
    assert all(r["final"] for r in rows)


def test_demo_passes_the_credentials_it_was_given_to_its_flows_and_load_generator(
    secure: SecureStack, unique_name: str, tmp_path: Path
) -> None:
    listener = secure.listener
    result = streampulse(
        "demo", "--duration", "20", "--rate", "50", "--partitions", "1", "--metrics-port", "0",
        "--work-dir", str(tmp_path), "--playback-topic", f"playback-{unique_name}",
        "--signup-topic", f"signup-{unique_name}", "--dead-letter-topic", f"dead-letter-{unique_name}",
        "--anomalies-topic", f"anomalies-{unique_name}", "--namespace", unique_name,
        "--kafka-bootstrap", listener.bootstrap, "--redis-url", secure.redis.url,
        # Given as flags, as an operator would: the children must get them without a password on their argv.
        "--kafka-security-protocol", "SASL_SSL", "--kafka-sasl-mechanism", listener.mechanism,
        "--kafka-sasl-username", listener.username, "--kafka-sasl-password-file", str(secure.password_file),
        "--kafka-ssl-ca-location", str(listener.ca_file),
        env={}, timeout=120,
    )  # fmt: skip
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout[-2000:] + logs[-3000:]
    assert listener.password not in result.stdout + result.stderr + logs
    query = streampulse(
        "query", "stream_starts", "--from", "0", "--format", "json", "--redis-url", secure.redis.url,
        "--namespace", unique_name,
    )  # fmt: skip
    assert query.stdout.strip(), "the demo's flows wrote no window: " + logs[-3000:]


# (what is wrong, the environment that makes it wrong, words the one line must hold: the cause and the flag to fix)
FAILURES: dict[str, tuple[Callable[[SecureStack], dict[str, str]], tuple[str, ...]]] = {
    "wrong-password": (
        lambda s: {"STREAMPULSE_KAFKA_SASL_PASSWORD_FILE": str(s.wrong_password_file)},
        ("rejected the SASL credentials", "--kafka-sasl-password-file"),
    ),
    "untrusted-ca": (
        lambda s: {"STREAMPULSE_KAFKA_SSL_CA_LOCATION": str(s.listener.other_ca_file)},
        ("not trusted", "--kafka-ssl-ca-location"),
    ),
    "missing-ca": (
        lambda s: {"STREAMPULSE_KAFKA_SSL_CA_LOCATION": str(s.listener.ca_file.with_name("no-such-ca.pem"))},
        ("no such file", "--kafka-ssl-ca-location"),
    ),
    "wrong-mechanism": (
        lambda s: {"STREAMPULSE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
        ("does not accept SASL mechanism SCRAM-SHA-256", "--kafka-sasl-mechanism"),
    ),
}


def _command(name: str, unique_name: str, tmp_path: Path) -> list[str]:
    topics = ["--playback-topic", f"playback-{unique_name}", "--signup-topic", f"signup-{unique_name}"]
    now_ms = int(time.time() * 1000)
    last_hour = ["--from", str(now_ms - 3_600_000), "--to", str(now_ms)]
    return {
        "run": ["run", "--exit-at-end", "--metrics-port", "0", *topics, "--namespace", unique_name],
        "replay": ["replay", *last_hour, *topics, "--namespace", unique_name],
        "archive": ["archive", "--exit-at-end", "--metrics-port", "0", "--archive-dir", str(tmp_path), *topics],
        "loadgen": ["loadgen", "--events", "100", *topics],
        "demo": ["demo", "--duration", "5", "--metrics-port", "0", "--work-dir", str(tmp_path), *topics],
    }[name]


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("command", ["run", "replay", "archive", "loadgen", "demo"])
def test_wrong_credentials_fail_fast_with_what_to_fix(
    secure: SecureStack, command: str, failure: str, unique_name: str, tmp_path: Path
) -> None:
    overrides, words = FAILURES[failure]
    create_topics(secure.kafka.bootstrap, {f"playback-{unique_name}": 1, f"signup-{unique_name}": 1})
    started = time.monotonic()
    result = streampulse(*_command(command, unique_name, tmp_path), env=_env(secure, **overrides(secure)), timeout=60)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert took < FAIL_FAST_S, f"{command} took {took:.1f} s to fail: {output[-2000:]}"
    lines = [line for line in output.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, f"one line must say {words}; got:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert secure.listener.password not in output
