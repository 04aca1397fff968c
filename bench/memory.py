"""Memory of `streampulse run` as open sessions (the keyed state of a live flow) grow.

For each step N (default 10 000, 100 000, 1 000 000), N playback sessions
already playing (as after a restart: heartbeats, their start not seen, which
the flow counts as concurrent streams) send a heartbeat every 30 s for 90 s
of event time, their phases spread evenly; countries and device types vary.
Nothing stops, so when the input ends all N sessions are open, and each also
has its three event ids remembered for duplicate detection (ids are kept for
the coarse window plus the allowed lateness: 3 to 5 per session at a steady
30 s heartbeat). A small producer here makes them (faster than the load
generator at this scale).

`streampulse run` (all metrics, 1 process, live: no --exit-at-end) is
started first and the sessions are produced while it runs, held back
whenever it lags more than `MAX_LAG` messages: as in live operation, there
is no backlog for librdkafka to prefetch (a replay of a backlog also holds up
to its queue limit per partition reader, which is not per-session state).
Once /metrics shows every message consumed and a publish interval has
passed, the resident set is read (`rss_mb`) with its high-water mark
(`peak_rss_mb`). Bytes per open session = the growth of the resident set
between the smallest and the largest step / the growth of N. With `split`,
the largest step is run again with one heartbeat per session (one
remembered id instead of three), which tells sessions and ids apart.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from bench.common import PYTHON, peak_rss_bytes, rss_bytes, say, start
from bench.contenders import Target
from bench.stack import create_topics, delete_topics, drop_namespace
from streampulse.processes import free_port, port_open

COUNTRIES = ("US", "BR", "GB", "DE", "FR", "IN", "JP", "MX", "CA", "ES", "IT", "KR", "AU", "NL", "SE", "PL")
DEVICES = ("tv", "mobile", "tablet", "web", "console", "other")
TITLES = 5_000
HEARTBEAT_MS = 30_000
# How far the producer may run ahead of the flow: a live flow's lag, not a replay's backlog.
MAX_LAG = 100_000


@dataclass(frozen=True)
class MemoryStep:
    """One measured step."""

    sessions: int
    heartbeats: int
    messages: int
    rss_bytes: int
    peak_rss_bytes: int
    consume_s: float

    def as_dict(self) -> dict[str, Any]:
        """For the JSON results."""
        return {
            "sessions": self.sessions,
            "heartbeats": self.heartbeats,
            "messages": self.messages,
            "rss_mb": round(self.rss_bytes / 1e6, 1),
            "peak_rss_mb": round(self.peak_rss_bytes / 1e6, 1),
            "consume_s": round(self.consume_s, 1),
        }


def session_events(sessions: int, heartbeats: int, t0_ms: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(session index, key, value) of `heartbeats` heartbeats per session, 30 s apart, in event-time order."""
    tag = uuid.uuid4().hex[:6]
    for beat in range(heartbeats):
        for i in range(sessions):
            session = f"{tag}-session-{i:07d}"
            event = {
                "event_id": f"{session}-{beat}",
                "event_type": "heartbeat",
                "event_time_ms": t0_ms + i * HEARTBEAT_MS // sessions + beat * HEARTBEAT_MS,
                "country": COUNTRIES[i % len(COUNTRIES)],
                "device_type": DEVICES[i // len(COUNTRIES) % len(DEVICES)],
                "schema_version": 1,
                "session_id": session,
                "account_id": f"account-{i * 7919 % 1_000_003}",
                "title_id": f"title-{i * 31 % TITLES}",
                "played_ms": HEARTBEAT_MS,
                "bitrate_kbps": 3000 + i % 5000,
            }
            yield i, session.encode(), orjson.dumps(event)


def produce_live(
    bootstrap: str,
    topic: str,
    partitions: int,
    events: Iterator[tuple[int, bytes, bytes]],
    consumed: Callable[[], float],
) -> int:
    """Produce the events, pausing whenever the flow is more than MAX_LAG messages behind; returns the count."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    produced = 0
    for i, key, value in events:
        while True:
            try:
                producer.produce(topic, value, key, partition=i % partitions)
                break
            except BufferError:
                producer.poll(0.05)
        produced += 1
        if produced % 20_000 == 0:
            producer.poll(0)
            while produced - consumed() > MAX_LAG:
                time.sleep(0.1)
    if producer.flush(120):
        raise RuntimeError("memory: sessions not acknowledged within 120 s")
    return produced


def _consumed(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "streampulse_events_consumed_total"
    )


def measure_step(target: Target, partitions: int, sessions: int, heartbeats: int) -> MemoryStep:
    """Run the live flow, produce one step's sessions to it, and read its memory once all are consumed."""
    run = uuid.uuid4().hex[:8]
    playback, signup = f"bench-mem-playback-{run}", f"bench-mem-signup-{run}"
    namespace = f"bench-mem-{run}"
    create_topics(target.bootstrap, {playback: partitions, signup: partitions})
    port = free_port()
    argv = [PYTHON, "-m", "streampulse.cli", "run", "--kafka-bootstrap", target.bootstrap]
    argv += ["--playback-topic", playback, "--signup-topic", signup, "--dead-letter-topic", target.dead_letter_topic]
    argv += ["--redis-url", target.redis_url, "--namespace", namespace, "--metrics-port", str(port)]
    flow = start(f"memory-{sessions}", argv, target.work_dir / f"memory-{sessions}-{heartbeats}.log")
    try:
        flow.wait_until(lambda: port_open("127.0.0.1", port), 60, "/metrics answered")
        t0 = (time.time_ns() // 1_000_000 - 2 * 3_600_000) // 60_000 * 60_000
        started = time.perf_counter()
        events = session_events(sessions, heartbeats, t0)
        messages = produce_live(target.bootstrap, playback, partitions, events, lambda: _consumed(port))
        flow.wait_until(lambda: _consumed(port) >= messages, 120, "every message consumed")
        consume_s = time.perf_counter() - started
        # A publish interval (1 s) and its Redis write after the last batch: the state is then at rest.
        time.sleep(3.0)
        rss, peak = rss_bytes(flow.popen.pid), peak_rss_bytes(flow.popen.pid)
        return MemoryStep(sessions, heartbeats, messages, rss, peak, consume_s)
    finally:
        flow.stop(grace_s=10)
        delete_topics(target.bootstrap, [playback, signup])
        drop_namespace(target.redis_url, namespace)


def measure_memory(target: Target, partitions: int, steps: Sequence[int], split: bool) -> dict[str, Any]:
    """Every step, and bytes per open session from the smallest to the largest."""
    measured: list[MemoryStep] = []
    for sessions in steps:
        say(f"memory: {sessions:,} open sessions (3 heartbeats each, 30 s apart)")
        step = measure_step(target, partitions, sessions, heartbeats=3)
        say(
            f"memory: {sessions:,} sessions: RSS {step.rss_bytes / 1e6:,.0f} MB at rest, "
            f"peak {step.peak_rss_bytes / 1e6:,.0f} MB, {step.messages:,} messages in {step.consume_s:.1f} s"
        )
        measured.append(step)
    result: dict[str, Any] = {"steps": [s.as_dict() for s in measured]}
    if len(measured) >= 2:
        low, high = measured[0], measured[-1]
        result["bytes_per_open_session"] = round((high.rss_bytes - low.rss_bytes) / (high.sessions - low.sessions))
        result["peak_bytes_per_open_session"] = round(
            (high.peak_rss_bytes - low.peak_rss_bytes) / (high.sessions - low.sessions)
        )
    if split and measured:
        largest = measured[-1]
        say(f"memory: {largest.sessions:,} sessions again, one heartbeat each (one remembered id per session)")
        alone = measure_step(target, partitions, largest.sessions, heartbeats=1)
        result["one_event_per_session"] = alone.as_dict()
        # Two more remembered ids per session (and two more events) is all that differs.
        result["bytes_per_remembered_event_id"] = round((largest.rss_bytes - alone.rss_bytes) / (2 * largest.sessions))
    return result
