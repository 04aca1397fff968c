"""A scripted incident through real Kafka, the real flow and real Redis comes out as an anomaly, and nothing else does.

Six minutes of load-generator traffic with one incident (US TVs rebuffer ten
times as often for two minutes, tests/rebuffer_storm.py), in 2-second windows
so the detector warms up within the first minute, run with `streampulse run
--exit-at-end`. The anomaly must be on the anomalies topic (keyed by series)
and in Redis under the namespace, for the right series, country and device
type, opened soon after the incident's start; every anomaly raised must be
explained by it. The traffic starts at 21:00 UTC yesterday, the same time of
day on every run; tests/unit/flows/anomaly/test_anomaly_every_hour.py shows the detector's
verdict on it is the same at every hour of the day.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from loadgen.api import produce
from settings.windows import resolution_name
from sinks.anomaly_sink import recent_anomalies
from tests.conftest import Stack
from tests.integration.helpers import own_topics, read_to_end, streampulse, yesterday_at
from tests.integration.test_metrics_against_truth import assert_anomalies_of_one_detector
from tests.rebuffer_storm import COARSE_MS, FINE_MS, LATENESS_MS, check_anomalies, storm

pytestmark = pytest.mark.integration

START_HOUR_UTC = 21  # the hour the test once failed at, when it still followed the wall clock


def _consume_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every message of the (one-partition) topic, as (key, decoded JSON)."""
    return [(message.key(), orjson.loads(message.value() or b"")) for message in read_to_end(bootstrap, topic)]


# 4 workers: 4 shards, the cells' series on their shards, the roll-ups (where the incident also shows) in their own step.
@pytest.mark.parametrize("workers", [1, 4])
def test_a_scripted_incident_is_published_as_one_anomaly_to_kafka_and_redis(
    stack: Stack, unique_name: str, workers: int
) -> None:
    generated = storm(yesterday_at(START_HOUR_UTC))
    incident = generated.truth["incidents"][0]
    kafka = own_topics(stack.bootstrap, unique_name)
    assert produce(generated.messages, kafka)["failed"] == 0
    namespace = f"test-{unique_name}"
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0",
        "--kafka-bootstrap", stack.bootstrap, "--playback-topic", kafka.playback_topic,
        "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
        "--anomalies-topic", kafka.anomalies_topic,
        "--redis-url", stack.redis_url, "--namespace", namespace,
        "--fine-window", f"{FINE_MS}ms", "--coarse-window", f"{COARSE_MS}ms",
        "--allowed-lateness", f"{LATENESS_MS}ms", "--workers", str(workers),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    messages = _consume_all(stack.bootstrap, kafka.anomalies_topic)
    events = [event for _key, event in messages]
    for key, event in messages:
        assert key == f"{event['series']}:{event['country']}:{event['device_type']}".encode()
    anomaly = check_anomalies(events, incident)

    # Redis holds each anomaly's latest state, the same as the last event of it on the topic.
    client = redis.Redis.from_url(stack.redis_url)
    stored = {doc["anomaly_id"]: doc for doc in recent_anomalies(client, namespace)}
    latest = {e["anomaly_id"]: e for e in events}
    assert stored == latest
    assert stored[anomaly["anomaly_id"]]["series"] == "rebuffer_ratio"
    assert client.ttl(f"sp:{namespace}:anomalies") > 0
    # Whatever the shards, the anomalies are one detector's on the final windows Redis holds.
    assert_anomalies_of_one_detector(client, namespace, resolution_name(FINE_MS))
