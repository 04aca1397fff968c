"""A scripted incident through real Kafka, the real flow and real Redis comes out as an anomaly, and nothing else does.

Six minutes of load-generator traffic with one incident (US TVs rebuffer ten
times as often for two minutes), in 2-second windows so the detector warms up
within the first minute, run with `streampulse run --exit-at-end`. The
anomaly must be on the anomalies topic (keyed by series) and in Redis under
the namespace, for the right series, country and device type, opened soon
after the incident's start; every anomaly raised must be explained by it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis

from loadgen.api import generate, produce
from sinks.anomaly_sink import recent_anomalies
from streampulse.settings import KafkaSettings
from tests.conftest import Stack
from tests.integration.helpers import create_topics, read_to_end, streampulse

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
FINE_MS = 2_000
INCIDENT_AT_MS = 3 * MINUTE_MS
INCIDENT = {
    "name": "us-tv-rebuffer-storm",
    "start": f"+{INCIDENT_AT_MS // 1000}s",
    "duration": "2m",
    "where": {"country": "US", "device_type": "tv"},
    "effect": {"rebuffer_multiplier": 10},
}


def _consume_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every message of the (one-partition) topic, as (key, decoded JSON)."""
    return [(message.key(), orjson.loads(message.value() or b"")) for message in read_to_end(bootstrap, topic)]


def test_a_scripted_incident_is_published_as_one_anomaly_to_kafka_and_redis(stack: Stack, unique_name: str) -> None:
    hour = 3_600_000
    start = (int(time.time() * 1000) // hour - 2) * hour  # in the past: nothing is "from the future"
    generated = generate(seed=31, start_ms=start, span_ms=6 * MINUTE_MS, rate=300, incidents=[INCIDENT])
    incident = generated.truth["incidents"][0]
    kafka = KafkaSettings(
        bootstrap=stack.bootstrap,
        playback_topic=f"playback-{unique_name}",
        signup_topic=f"signup-{unique_name}",
        dead_letter_topic=f"dead-letter-{unique_name}",
        anomalies_topic=f"anomalies-{unique_name}",
    )
    create_topics(stack.bootstrap, {kafka.playback_topic: 2, kafka.signup_topic: 1})
    assert produce(generated.messages, kafka)["failed"] == 0
    namespace = f"test-{unique_name}"
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0",
        "--kafka-bootstrap", stack.bootstrap, "--playback-topic", kafka.playback_topic,
        "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
        "--anomalies-topic", kafka.anomalies_topic,
        "--redis-url", stack.redis_url, "--namespace", namespace,
        "--fine-window", "2s", "--coarse-window", "10s", "--allowed-lateness", "2s",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    messages = _consume_all(stack.bootstrap, kafka.anomalies_topic)
    events = [event for _key, event in messages]
    for key, event in messages:
        assert key == f"{event['series']}:{event['country']}:{event['device_type']}".encode()
    # Nothing where nothing was injected: every anomaly is the rebuffer storm, in its scope or a roll-up of it.
    unexplained = [
        e
        for e in events
        if not (e["series"] == "rebuffer_ratio" and e["country"] in ("US", "all") and e["device_type"] in ("tv", "all"))
    ]
    assert not unexplained, unexplained
    opened = {e["anomaly_id"]: e for e in events if e["state"] == "open"}
    cell = [e for e in opened.values() if (e["country"], e["device_type"]) == ("US", "tv")]
    assert len(cell) == 1, events  # one incident, one anomaly on its own series
    anomaly = cell[0]
    assert anomaly["direction"] == "up" and anomaly["severity"] == "critical" and anomaly["score"] >= 5
    assert incident["start_ms"] < anomaly["window_end_ms"] <= incident["start_ms"] + 15 * FINE_MS
    assert anomaly["observed"] > 3 * anomaly["expected"]

    # Redis holds each anomaly's latest state, the same as the last event of it on the topic.
    client = redis.Redis.from_url(stack.redis_url)
    stored = {doc["anomaly_id"]: doc for doc in recent_anomalies(client, namespace)}
    latest = {e["anomaly_id"]: e for e in events}
    assert stored == latest
    assert stored[anomaly["anomaly_id"]]["series"] == "rebuffer_ratio"
    assert client.ttl(f"sp:{namespace}:anomalies") > 0
