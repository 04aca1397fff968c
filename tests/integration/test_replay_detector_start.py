"""A replay's anomaly detectors start from the live run's saved state: its anomalies over the range are the live ones.

The rebuffer-storm traffic (tests/rebuffer_storm.py: six minutes, 2-second
windows, US TVs rebuffering ten times as often from minute 3 to 5) goes
through real Kafka and `run --exit-at-end`, which leaves the detectors' state
in Redis every 30 s of event time. A replay of [2:30, 6:00) then starts from
the state through 2:30: the same state and the same windows, so every anomaly
event of the range is the live run's (compared with the live events on the
anomalies topic). A cold replay of the same range spends its first 30 windows
(1 minute) warming up on the storm's own start and misses it: its anomalies
differ, so the comparison can fail. Without a live state the replay starts
cold and says so; on another worker count it starts from the state cut for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis

from flows.anomaly.warm_start import parts_of
from loadgen.api import produce
from settings.kafka import KafkaSettings
from sinks.anomaly_sink import recent_anomalies
from sinks.redis_layout import detector_state_key, detector_states_key, replay_marker_key
from tests.conftest import Stack
from tests.integration.helpers import own_topics, read_to_end, streampulse, yesterday_at
from tests.rebuffer_storm import COARSE_MS, FINE_MS, INCIDENT_AT_MS, LATENESS_MS, SPAN_MS, storm

pytestmark = pytest.mark.integration

START_HOUR_UTC = 21  # the hour tests/integration/test_anomalies.py runs the storm at
INTERVAL_MS = 30_000
FROM_OFFSET_MS = INCIDENT_AT_MS - 30_000  # 2:30: the storm starts inside a cold replay's 60-second warm-up


@dataclass(frozen=True)
class Live:
    """The storm in Kafka and what `run --exit-at-end` made of it with `workers` workers."""

    stack: Stack
    kafka: KafkaSettings
    namespace: str
    start_ms: int
    workers: int

    def options(self, namespace: str, workers: int) -> list[str]:
        kafka = self.kafka
        return [
            "--kafka-bootstrap", kafka.bootstrap, "--playback-topic", kafka.playback_topic,
            "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
            "--anomalies-topic", kafka.anomalies_topic, "--redis-url", self.stack.redis_url, "--namespace", namespace,
            "--fine-window", f"{FINE_MS}ms", "--coarse-window", f"{COARSE_MS}ms",
            "--allowed-lateness", f"{LATENESS_MS}ms", "--workers", str(workers),
        ]  # fmt: skip

    def replay(self, namespace: str, *extra: str, workers: int | None = None) -> str:
        """Replay [2:30, 6:00) into `namespace`; its stderr."""
        result = streampulse(
            "replay", "--from", str(self.start_ms + FROM_OFFSET_MS), "--to", str(self.start_ms + SPAN_MS),
            *self.options(namespace, workers or self.workers), "--live-namespace", self.namespace,
            "--timestamp-skew", "1m", *extra, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def live(request: pytest.FixtureRequest, stack: Stack) -> Live:
    name = os.urandom(5).hex()
    kafka = own_topics(stack.bootstrap, name)
    start = yesterday_at(START_HOUR_UTC)
    assert produce(storm(start).messages, kafka)["failed"] == 0
    run = Live(stack, kafka, f"live-{name}", start, request.param)
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0", *run.options(run.namespace, run.workers),
        "--detector-state-interval", f"{INTERVAL_MS}ms", "--detector-states-kept", "100", timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _live_events_from(live: Live, from_ms: int) -> dict[str, dict[str, Any]]:
    """Each anomaly's latest event in the windows from `from_ms` on, as the live run published them to Kafka."""
    latest: dict[str, dict[str, Any]] = {}
    for message in read_to_end(live.stack.bootstrap, live.kafka.anomalies_topic):
        event = orjson.loads(message.value() or b"")
        if event["window_start_ms"] >= from_ms:
            latest[event["anomaly_id"]] = event
    return latest


def _replayed(client: redis.Redis, namespace: str) -> dict[str, dict[str, Any]]:
    return {doc["anomaly_id"]: doc for doc in recent_anomalies(client, namespace, limit=1000)}


def _marker(client: redis.Redis, namespace: str) -> dict[str, str]:
    fields: dict[bytes, bytes] = client.hgetall(replay_marker_key(namespace))  # type: ignore[assignment]
    return {k.decode(): v.decode() for k, v in fields.items()}


def test_a_replay_from_live_state_publishes_the_live_anomalies_and_a_cold_one_does_not(live: Live) -> None:
    client = redis.Redis.from_url(live.stack.redis_url)
    from_ms = live.start_ms + FROM_OFFSET_MS
    # The live run left a whole state every 30 s of event time, with the retention TTL.
    members = {m.decode() for m in client.zrange(detector_states_key(live.namespace), 0, -1)}  # type: ignore[union-attr]
    assert f"{from_ms}:{live.workers}" in members
    stored = detector_state_key(live.namespace, from_ms, live.workers)
    assert len(client.hkeys(stored)) == 1 + len(parts_of(live.workers))  # a part per shard but the last, roll-ups
    assert client.ttl(stored) > 0

    expected = _live_events_from(live, from_ms)
    storm_cell = [
        e for e in expected.values() if (e["series"], e["country"], e["device_type"]) == ("rebuffer_ratio", "US", "tv")
    ]
    assert storm_cell, expected  # the storm is inside the range, and the live run caught it

    warm_ns = f"warm-{live.namespace}"
    stderr = live.replay(warm_ns)
    assert "anomaly detector: warm from live state through" in stderr
    assert stderr.rstrip().splitlines()[-1].startswith("replay: anomaly detector: warm from live state through")
    assert _marker(client, warm_ns)["detector_state_through_ms"] == str(from_ms)
    assert _replayed(client, warm_ns) == expected

    cold_ns = f"cold-{live.namespace}"
    stderr = live.replay(cold_ns, "--detector-start", "cold")
    assert "anomaly detector: cold: --detector-start cold" in stderr
    cold = _replayed(client, cold_ns)
    assert cold != expected
    assert not any(
        (e["series"], e["country"], e["device_type"]) == ("rebuffer_ratio", "US", "tv") for e in cold.values()
    )


def test_a_replay_without_live_state_starts_cold_and_says_so(live: Live) -> None:
    client = redis.Redis.from_url(live.stack.redis_url)
    namespace = f"nostate-{live.namespace}"
    result = streampulse(
        "replay", "--from", str(live.start_ms + FROM_OFFSET_MS), "--to", str(live.start_ms + SPAN_MS),
        *live.options(namespace, live.workers), "--live-namespace", f"never-{live.namespace}",
        "--timestamp-skew", "1m", timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "anomaly detector: cold: no live state at or before" in result.stderr
    marker = _marker(client, namespace)
    assert marker["detector_start"].startswith("anomaly detector: cold: no live state")
    assert marker["detector_state_through_ms"] == "-1"


def test_a_replay_on_another_shard_count_starts_from_the_state_cut_for_it(live: Live) -> None:
    client = redis.Redis.from_url(live.stack.redis_url)
    other = 1 if live.workers == 2 else 2
    namespace = f"resharded-{live.namespace}"
    stderr = live.replay(namespace, workers=other)
    assert f"saved by {live.workers} shards and cut for {other}" in stderr
    assert _replayed(client, namespace) == _live_events_from(live, live.start_ms + FROM_OFFSET_MS)
