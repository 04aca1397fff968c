"""/metrics of a cluster: each process exports only the cells its shards own, so a sum over processes is the total.

The truth test's stream (every delivery fault) runs live on 2 workers in one process and on 2 processes of
2 workers; once every event is in, the stream-starts counter summed over the processes equals, per
(country, device_type, cdn), the stream starts Redis holds over all fine windows (which the truth test holds
equal to the ground truth), and nothing is counted twice by a process that holds two shards.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from loadgen.api import Generated
from sinks.redis_layout import index_key
from sinks.window_read import read_windows
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import create_topics, scrape, start_cluster
from tests.integration.test_metrics_against_truth import (
    CLOSE_MS,
    PARTITIONS,
    _connection,
    _expected,
    _kafka,
    _produce_closed,
    generated,  # noqa: F401  (the module's traffic fixture)
)

pytestmark = pytest.mark.integration

COUNTER = "streampulse_stream_starts_total"


def _redis_stream_starts(client: redis.Redis, namespace: str) -> Counter[tuple[str, str, str]]:
    starts = [int(m) for m in client.zrange(index_key(namespace, "10s"), 0, -1)]  # type: ignore[arg-type]
    totals: Counter[tuple[str, str, str]] = Counter()
    for window in read_windows(client, namespace, "10s", starts, ["stream_starts"]):
        for dims, value in window.values.get("stream_starts", {}).items():
            totals[(str(dims[0]), str(dims[1]), str(dims[2]))] += value
    return totals


def _exported(ports: list[int]) -> tuple[Counter[tuple[str, str, str]], int]:
    """The stream-starts counter summed over the processes, and the messages they consumed."""
    totals: Counter[tuple[str, str, str]] = Counter()
    consumed = 0
    for port in ports:
        for (name, labels), value in scrape(port).items():
            if name == COUNTER:
                dims = dict(labels)
                totals[(dims["country"], dims["device_type"], dims["cdn"])] += int(value)
            elif name == "streampulse_events_consumed_total":
                consumed += int(value)
    return +totals, consumed


@pytest.mark.parametrize(("processes", "workers"), [(1, 2), (2, 2)])
def test_counters_summed_over_processes_equal_what_redis_holds(
    stack: Stack,
    unique_name: str,
    generated: Generated,  # noqa: F811  (the fixture imported above)
    processes: int,
    workers: int,
    tmp_path: Path,
) -> None:
    kafka = _kafka(stack, unique_name)
    create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
    namespace = f"summed-{unique_name}"
    CLOSE_MS[namespace] = _produce_closed(generated, kafka)
    ports = [free_port() for _ in range(processes)]
    logs = [tmp_path / f"process-{i}.log" for i in range(processes)]
    cluster = start_cluster(["--workers", str(workers), *_connection(kafka, stack, namespace)], logs, ports)
    client = redis.Redis.from_url(stack.redis_url)
    # What Redis ends with (the truth test holds it to that, window by window): the truth's stream starts.
    truth: Counter[tuple[str, str, str]] = Counter()
    for (_start, country, device, cdn), value in _expected(generated.truth, "10s", "stream_starts", ("cdn",)).items():
        truth[(str(country), str(device), str(cdn))] += value
    try:
        deadline = time.monotonic() + 120
        exported: Counter[tuple[str, str, str]] = Counter()
        stored: Counter[tuple[str, str, str]] = Counter()
        steady = 0
        while time.monotonic() < deadline and steady < 4:
            assert all(p.poll() is None for p in cluster), "\n".join(log.read_text()[-2000:] for log in logs)
            time.sleep(0.5)
            try:
                now, consumed = _exported(ports)
            except OSError:
                continue  # /metrics not served yet
            # Settled: every message consumed, Redis holds every stream start, and the counters unchanged for 2 s.
            latest = _redis_stream_starts(client, namespace)
            done = consumed >= len(generated.messages) and latest == truth
            steady = steady + 1 if done and (now, latest) == (exported, stored) else 0
            exported, stored = now, latest
        assert steady == 4, f"not settled within 120 s: {sum(stored.values())} of {sum(truth.values())} in Redis"
        assert exported == stored == truth
    finally:
        for process in cluster:
            process.kill()
            process.wait(timeout=30)
