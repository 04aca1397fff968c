"""Chaos: a live flow killed with SIGKILL at random moments while events keep arriving, then finished.

The flow runs live with a recovery directory; a producer sends the load generator's stream (every
delivery fault: jitter, duplicates, late and malformed messages) in slices over several seconds. At
moments drawn from a seeded generator the flow is killed with SIGKILL and started again from its
snapshots. A last `run --exit-at-end` finishes the stream. Every metric must equal the ground truth:
nothing lost, nothing counted twice, however the kills fell.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from loadgen.api import Generated, produce
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import create_topics, scrape, start_cluster, streampulse
from tests.integration.helpers import produce as produce_messages
from tests.integration.test_metrics_against_truth import (
    CLOSE_MS,
    PARTITIONS,
    _assert_equal_to_truth,
    _closing_events,
    _connection,
    _kafka,
    closing_point,
    faulty_traffic,
)

pytestmark = pytest.mark.integration

KILLS = 4
SLICES = 12


@pytest.fixture(scope="module")
def generated() -> Generated:
    return faulty_traffic(seed=4711, events=20_000, hour=18, minutes=20)


def _start_live(connection: list[str], recovery: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    [process] = start_cluster([*recovery, *connection], [log], [port], append=True)
    return process, port


def _serving(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_kill_9_at_random_moments_under_live_load_then_finish_equals_truth(
    stack: Stack, unique_name: str, generated: Generated, tmp_path: Path
) -> None:
    kafka = _kafka(stack, unique_name)
    create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
    namespace = f"chaos-{unique_name}"
    connection = _connection(kafka, stack, namespace)
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "1"]
    messages = generated.messages
    # Closing events go after every message the truth counts (tests/integration/test_metrics_against_truth.py).
    cut, close_ms = closing_point(messages)
    CLOSE_MS[namespace] = close_ms - close_ms % 60_000

    failures: list[str] = []

    def producer() -> None:
        step = -(-cut // SLICES)
        for start in range(0, cut, step):
            if produce(messages[start : min(start + step, cut)], kafka)["failed"]:
                failures.append(f"slice at {start}")
            time.sleep(0.7)
        produce_messages(kafka.bootstrap, kafka.playback_topic, _closing_events("playback", close_ms))
        produce_messages(kafka.bootstrap, kafka.signup_topic, _closing_events("signup", close_ms))
        if produce(messages[cut:], kafka)["failed"]:
            failures.append("the held-back tail")

    rng = random.Random(20261206)
    log = tmp_path / "live.log"
    sending = threading.Thread(target=producer, name="chaos-producer")
    sending.start()
    try:
        for kill in range(KILLS):
            process, port = _start_live(connection, recovery, log)
            try:
                # Kill at a random moment once the restarted flow serves /metrics: mid-batch, mid-snapshot or idle.
                deadline = time.monotonic() + 90
                while not _serving(port):
                    assert process.poll() is None, f"restart {kill} died: " + log.read_text()[-3000:]
                    assert time.monotonic() < deadline, f"restart {kill} never served /metrics"
                    time.sleep(0.1)
                time.sleep(rng.uniform(0.5, 4.0))
                assert process.poll() is None, f"restart {kill} died: " + log.read_text()[-3000:]
            finally:
                process.kill()
                process.wait(timeout=30)
    finally:
        sending.join(timeout=300)
    assert not failures, failures
    result = streampulse("run", "--exit-at-end", "--metrics-port", "0", *recovery, *connection, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_equal_to_truth(stack, kafka, namespace, generated)


CLUSTER_KILLS = 2


def _start_cluster(options: list[str], logs: list[Path]) -> list[subprocess.Popen[bytes]]:
    """`streampulse run OPTIONS` as a cluster of one process per log, each serving /metrics on a port the OS picks.

    Not on a port picked beforehand: one found free may be taken before the process binds it (the killed peer's
    restart once failed so, EADDRINUSE), and nothing here scrapes the cluster.
    """
    return start_cluster(options, logs, append=True)


def test_kill_9_one_process_of_a_cluster_then_restart_equals_truth(
    stack: Stack, unique_name: str, generated: Generated, tmp_path: Path
) -> None:
    """Each process owns shards of the window state; one is killed, the cluster restarts from its snapshots."""
    kafka = _kafka(stack, unique_name)
    create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
    namespace = f"chaos-cluster-{unique_name}"
    connection = _connection(kafka, stack, namespace)
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "1"]
    messages = generated.messages
    cut, close_ms = closing_point(messages)
    CLOSE_MS[namespace] = close_ms - close_ms % 60_000
    logs = [tmp_path / "process-0.log", tmp_path / "process-1.log"]

    def tails() -> str:
        return "\n".join(log.read_text()[-1500:] for log in logs)

    rng = random.Random(20261207)
    step = -(-cut // (CLUSTER_KILLS + 1))
    for kill in range(CLUSTER_KILLS):
        assert produce(messages[kill * step : (kill + 1) * step], kafka)["failed"] == 0
        cluster = _start_cluster([*recovery, *connection], logs)
        try:
            time.sleep(rng.uniform(4.0, 8.0))  # mid-stream: windows open, snapshots taken
            assert all(p.poll() is None for p in cluster), f"round {kill}: a process died\n{tails()}"
            cluster[1].kill()  # kill -9 one process; its peer loses the cluster and stops too
            cluster[0].wait(timeout=60)
        finally:
            for process in cluster:
                process.kill()
                process.wait(timeout=30)
    assert produce(messages[CLUSTER_KILLS * step : cut], kafka)["failed"] == 0
    produce_messages(kafka.bootstrap, kafka.playback_topic, _closing_events("playback", close_ms))
    produce_messages(kafka.bootstrap, kafka.signup_topic, _closing_events("signup", close_ms))
    assert produce(messages[cut:], kafka)["failed"] == 0

    # Another number of workers cannot resume these snapshots: refused at start, saying what to do.
    refused = streampulse("run", "--exit-at-end", "--metrics-port", "0", *recovery, *connection, timeout=120)
    assert refused.returncode != 0 and "2 workers in all" in refused.stderr, refused.stderr[-2000:]

    cluster = _start_cluster([*recovery, "--exit-at-end", *connection], logs)
    for process in cluster:
        assert process.wait(timeout=300) == 0, tails()
    _assert_equal_to_truth(stack, kafka, namespace, generated)
