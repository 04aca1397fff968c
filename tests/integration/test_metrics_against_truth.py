"""Every metric, through real Kafka, the real flow and real Redis, equals the load generator's ground truth.

The stream has out-of-order delivery across partitions, duplicates, events
later than the allowed lateness and malformed messages of every kind. The
flow runs with 1 worker, 2 workers, 2 processes and 2 processes of 2 workers
(1, 2, 2 and 4 shards of the window state); the aggregates must not change. Expected values come from the generator's truth file (its own
bookkeeping of what it produced) and, for percentiles, from the raw events.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from flows.anomaly.detector import AnomalyDetector
from flows.windows.catalog import AGGREGATES
from loadgen.api import Generated, Message, generate, produce
from loadgen.config import FaultConfig, ModelParams
from settings.kafka import KafkaSettings
from sinks.anomaly_sink import recent_anomalies
from sinks.redis_layout import index_key, shards_key
from sinks.redis_query import query
from sinks.window_read import read_windows
from streampulse.processes import free_port
from tests.conftest import Stack
from tests.integration.helpers import (
    REPO,
    create_topics,
    read_to_end,
    scrape,
    start_cluster,
    streampulse,
    wait_cluster,
    yesterday_at,
)
from tests.integration.helpers import produce as produce_messages

pytestmark = pytest.mark.integration

PARTITIONS = 4
CLOSE_MS: dict[str, int] = {}  # namespace -> start of the window of the closing events
SESSION_TIMEOUT_MS = 60_000
FAULTS = FaultConfig(
    jitter_ms=2_000,
    late_fraction=0.004,
    late_by_ms=600_000,
    duplicate_fraction=0.01,
    duplicate_delay_ms=3_000,
    malformed_fraction=0.004,
)


@pytest.fixture(scope="module")
def generated() -> Generated:
    start = yesterday_at(20)  # the same time of day on every run: the same traffic, whatever the hour
    return generate(
        seed=2024,
        events=25_000,
        start_ms=start,
        span_ms=25 * 60_000,
        # Warm start: sessions already playing count as concurrent from their first event, in flow and truth alike.
        params=ModelParams(warm_start=True),
        faults=FAULTS,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def _closing_events(family: str, time_ms: int) -> list[tuple[int, bytes | None, bytes]]:
    """One valid event per partition far after everything else: every partition's watermark passes the stream's end."""
    common = {"event_time_ms": time_ms, "country": "BR", "device_type": "tv", "schema_version": 1}
    messages: list[tuple[int, bytes | None, bytes]] = []
    for p in range(PARTITIONS):
        if family == "playback":
            event = {"event_type": "play_attempt", "session_id": f"close-{p}", "account_id": "a", "title_id": "t"}
        else:
            event = {"event_type": "signup_started", "signup_id": f"close-{p}", "channel": "organic"}
        messages.append(
            (p, f"close-{p}".encode(), orjson.dumps({"event_id": f"close-{family}-{p}", **common, **event}))
        )
    return messages


def closing_point(messages: list[Message], everything: list[Message] | None = None) -> tuple[int, int]:
    """(index after the last message the truth counts, event time of the closing events) of a generated stream.

    The messages from the index on are those held back past the stream's end: they go after the closing events.
    """
    cut = max(i for i, m in enumerate(messages) if m.kind in ("valid", "duplicate")) + 1
    close_ms: int = max(m.event["event_time_ms"] for m in (everything or messages) if m.event is not None) + 15 * 60_000
    return cut, close_ms


def faulty_traffic(seed: int, events: int, hour: int, minutes: int) -> Generated:
    """Generated traffic with every delivery fault (FAULTS), starting yesterday at `hour`:00 UTC, cold start."""
    return generate(
        seed=seed,
        events=events,
        start_ms=yesterday_at(hour),  # a fixed time of day: the same traffic whenever the test runs
        span_ms=minutes * 60_000,
        params=ModelParams(warm_start=False),
        faults=FAULTS,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def _produce_closed(generated: Generated, kafka: KafkaSettings, all_messages: Generated | None = None) -> int:
    """Produce the generated stream, closing it before the events held back past its end; returns the close time.

    An event the generator holds back beyond the end of the stream would otherwise find its partition with
    nothing newer, its window still open, and rightly be counted: the generator's truth calls it late.
    """
    messages = generated.messages
    cut, close_ms = closing_point(messages, (all_messages or generated).messages)
    assert produce(messages[:cut], kafka)["failed"] == 0
    produce_messages(kafka.bootstrap, kafka.playback_topic, _closing_events("playback", close_ms))
    produce_messages(kafka.bootstrap, kafka.signup_topic, _closing_events("signup", close_ms))
    assert produce(messages[cut:], kafka)["failed"] == 0
    return close_ms - close_ms % 60_000


def _kafka(stack: Stack, name: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=stack.bootstrap,
        playback_topic=f"playback-{name}",
        signup_topic=f"signup-{name}",
        dead_letter_topic=f"dead-letter-{name}",
    )


def _connection(kafka: KafkaSettings, stack: Stack, namespace: str) -> list[str]:
    return [
        "--kafka-bootstrap", kafka.bootstrap, "--playback-topic", kafka.playback_topic,
        "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
        "--redis-url", stack.redis_url, "--namespace", namespace,
    ]  # fmt: skip


def _run(topology: str, connection: list[str], tmp_path: Path) -> None:
    if topology == "1 worker":
        result = streampulse("run", "--exit-at-end", "--metrics-port", "0", *connection, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    elif topology == "2 workers":
        result = streampulse("run", "--exit-at-end", "--workers", "2", "--metrics-port", "0", *connection, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        workers = "2" if topology == "2 processes x 2 workers" else "1"
        logs = [tmp_path / f"process-{i}.log" for i in range(2)]
        wait_cluster(start_cluster(["--exit-at-end", "--workers", workers, *connection], logs), logs)


def _cells(truth: dict[str, Any], resolution: str, section: str) -> Iterator[tuple[int, dict[str, Any]]]:
    node = truth["windows"] if section == "windows" else truth["late"]["windows"]
    for window in node[resolution]["windows"]:
        for cell in window["cells"]:
            yield window["start_ms"], cell


def _expected(truth: dict[str, Any], resolution: str, name: str, dims: tuple[str, ...]) -> Counter[tuple[Any, ...]]:
    """Truth values of `name` per (window, country, device_type, *dims), late events taken out."""
    totals: Counter[tuple[Any, ...]] = Counter()
    for section, sign in (("windows", 1), ("late", -1)):
        for start, cell in _cells(truth, resolution, section):
            if name not in cell:
                continue
            for path, value in _flatten(cell[name], len(dims)):
                totals[(start, cell["country"], cell["device_type"], *path)] += sign * value
    return +totals


def _flatten(value: Any, depth: int) -> Iterator[tuple[tuple[str, ...], int]]:
    if depth == 0:
        yield (), value
        return
    for key, sub in value.items():
        for path, leaf in _flatten(sub, depth - 1):
            yield (key, *path), leaf


def _measured(
    client: redis.Redis, ns: str, resolution: str, metric: str, by: tuple[str, ...], top: int = 10
) -> dict[tuple[Any, ...], float]:
    """Query values per (window, country, device_type, *by), windows before the closing events only."""
    rows = query(client, ns, metric, resolution, 0, CLOSE_MS[ns], by=("country", "device_type", *by), top_n=top)
    values: dict[tuple[Any, ...], float] = {}
    for row in rows:
        if row.value:
            extra = tuple(row.dims[d] for d in by) + ((row.dims["title_id"],) if metric == "top_titles" else ())
            values[(row.window_start_ms, row.dims["country"], row.dims["device_type"], *extra)] = row.value
    return values


def _late_ids(truth: dict[str, Any]) -> set[str]:
    return {e["event_id"] for e in truth["late"]["events"]}


def _exact_percentiles(generated: Generated, size_ms: int, q: float) -> dict[tuple[Any, ...], int]:
    late = _late_ids(generated.truth)
    values: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for e in generated.events():
        if e["event_type"] == "play_start" and e["event_id"] not in late:
            t = e["event_time_ms"]
            values[(t - t % size_ms, e["country"], e["device_type"])].append(e["startup_ms"])
    return {k: sorted(v)[math.floor(q * (len(v) - 1))] for k, v in values.items()}


def _concurrency_exempt(generated: Generated, size_ms: int) -> set[tuple[int, str, str]]:
    """Window ends a late playback event could have kept a session alive at: the flow never counts late events."""
    exempt: set[tuple[int, str, str]] = set()
    by_id = {x["event_id"]: x for x in generated.events()}
    for e in generated.truth["late"]["events"]:
        if e["family"] != "playback":
            continue
        t = e["event_time_ms"]
        event = by_id[e["event_id"]]
        for end in range(t - t % size_ms + size_ms, t + SESSION_TIMEOUT_MS + size_ms + 1, size_ms):
            exempt.add((end - size_ms, event["country"], event["device_type"]))
    return exempt


def _dead_letters(kafka: KafkaSettings) -> Counter[str]:
    """Dead letters by reason, one per rejected message: a crash may send a letter again (README, "Dead letters
    after a crash"), and a reader of the topic deduplicates by the source coordinates, as this one does."""
    reasons: dict[tuple[bytes, bytes, bytes], str] = {}
    for message in read_to_end(kafka.bootstrap, kafka.dead_letter_topic):
        headers: dict[str, bytes] = {}
        for header in message.headers() or []:
            headers[str(header[0])] = header[1] if isinstance(header[1], bytes) else b""
        assert headers["sp-source-topic"].decode() in (kafka.playback_topic, kafka.signup_topic)
        source = (headers["sp-source-topic"], headers["sp-source-partition"], headers["sp-source-offset"])
        reasons[source] = headers["sp-reason"].decode()
    return Counter(reasons.values())


# Every worker owns a shard of the window state (flows/sharding.py).
SHARDS = {"1 worker": 1, "2 workers": 2, "2 processes": 2, "2 processes x 2 workers": 4}


@pytest.mark.parametrize("topology", list(SHARDS))
def test_every_metric_equals_ground_truth(
    stack: Stack, unique_name: str, generated: Generated, topology: str, tmp_path: Path
) -> None:
    kafka = _kafka(stack, unique_name)
    create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
    namespace = f"truth-{unique_name}"
    CLOSE_MS[namespace] = _produce_closed(generated, kafka)
    _run(topology, _connection(kafka, stack, namespace), tmp_path)
    _assert_equal_to_truth(stack, kafka, namespace, generated)
    # Each worker wrote its own cells: the rows of a window come from every shard.
    text = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    shards = SHARDS[topology]
    assert text.hget(shards_key(namespace), "count") == str(shards)
    fields: set[str] = set()
    for key in text.scan_iter(match=f"sp:{namespace}:win:1m:*"):
        fields.update(text.hkeys(key))  # type: ignore[arg-type]
    writers = {field for field in fields if field.startswith("agg:stream_starts:")}
    assert writers == {f"agg:stream_starts:{shard}" for shard in range(shards)}
    assert_anomalies_of_one_detector(redis.Redis.from_url(stack.redis_url), namespace)


def assert_anomalies_of_one_detector(client: redis.Redis, namespace: str, fine: str = "10s") -> None:
    """The anomalies in Redis, in their latest states, are one detector's on the final windows Redis holds.

    Whatever the cluster: the cells' series ran on their shards and the roll-ups in their own step. (This
    stream raises none; tests/integration/test_anomalies.py runs it on a stream with an incident.)
    """
    starts = sorted(int(m) for m in client.zrange(index_key(namespace, fine), 0, -1))  # type: ignore[arg-type]
    detector = AnomalyDetector()
    expected: dict[str, str] = {}
    for window in read_windows(client, namespace, fine, starts, list(AGGREGATES)):
        assert window.final
        for detection in detector.observe(window.start_ms, window.end_ms, window.values, scores=False):
            expected.update({event.anomaly_id: event.state for event in detection.events})
    stored = {str(doc["anomaly_id"]): str(doc["state"]) for doc in recent_anomalies(client, namespace, limit=10_000)}
    assert stored == expected


def test_a_run_killed_and_restarted_from_its_snapshots_equals_ground_truth(
    stack: Stack, unique_name: str, generated: Generated, tmp_path: Path
) -> None:
    """kill -9 with sessions open, ids remembered and windows open; the restart resumes from the snapshots."""
    kafka = _kafka(stack, unique_name)
    create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
    namespace = f"recovery-{unique_name}"
    connection = _connection(kafka, stack, namespace)
    recovery = ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "1"]
    # The first half is read live, then the process is killed; the rest arrives while it is down.
    half = len(generated.messages) // 2
    first, rest = generated.messages[:half], generated.messages[half:]
    assert produce(first, kafka)["failed"] == 0
    port = free_port()
    log = tmp_path / "killed.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "streampulse.cli", "run", "--metrics-port", str(port), *recovery, *connection],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        while _consumed(port) < half:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"consumed {_consumed(port)} of {half}"
            time.sleep(0.2)
        time.sleep(2.5)  # two snapshot intervals: the snapshot covers everything consumed
    finally:
        process.kill()
        process.wait(timeout=30)
    remaining = Generated(messages=rest, truth=generated.truth, result=generated.result)
    CLOSE_MS[namespace] = _produce_closed(remaining, kafka, all_messages=generated)
    result = streampulse("run", "--exit-at-end", "--metrics-port", "0", *recovery, *connection, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_equal_to_truth(stack, kafka, namespace, generated)


def _consumed(port: int) -> int:
    try:
        samples = scrape(port)
    except OSError:
        return 0
    return int(sum(v for (name, _labels), v in samples.items() if name == "streampulse_events_consumed_total"))


def _assert_equal_to_truth(stack: Stack, kafka: KafkaSettings, namespace: str, generated: Generated) -> None:
    truth = generated.truth
    client = redis.Redis.from_url(stack.redis_url)
    text = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    counts = {
        # metric id: (truth cell key, dims below country/device_type)
        "play_attempts": ("play_attempts", ()),
        "stream_starts": ("stream_starts", ("cdn",)),
        "start_failures": ("start_failures", ("error_code",)),
        "playback_errors": ("playback_errors", ("error_code",)),
        "bitrate_downshifts": ("bitrate_downshifts", ()),
        "signups_started": ("signups_started", ("channel",)),
        "signups_completed": ("signups_completed", ("channel", "plan")),
        "signups_failed": ("signups_failed", ("channel", "failure_reason")),
        "payments_submitted": ("payments_submitted", ("payment_method",)),
        "new_subscription_value_cents": ("new_subscription_value_cents", ("plan", "currency")),
    }
    for resolution, size_ms in (("10s", 10_000), ("1m", 60_000)):
        for metric, (key, dims) in counts.items():
            assert _measured(client, namespace, resolution, metric, dims) == _expected(truth, resolution, key, dims), (
                f"{metric} at {resolution}"
            )
        titles = _measured(client, namespace, resolution, "top_titles", (), top=100_000)
        assert titles == _expected(truth, resolution, "title_starts", ("title_id",)), f"title starts at {resolution}"

        rebuffer = _expected(truth, resolution, "rebuffer_ms_sum", ())
        played = _expected(truth, resolution, "played_ms_sum", ())
        expected_ratio = {
            k: rebuffer[k] / (played[k] + rebuffer[k]) for k in set(rebuffer) | set(played) if rebuffer[k]
        }
        measured_ratio = _measured(client, namespace, resolution, "rebuffer_ratio", ())
        assert measured_ratio.keys() == expected_ratio.keys()
        assert all(math.isclose(measured_ratio[k], expected_ratio[k], rel_tol=1e-9) for k in expected_ratio)

        pauses = _expected(truth, resolution, "events", ("event_type",))
        expected_pauses = {
            k: pauses[(*k, "pause")] / played[k] * 3_600_000 for k in played if played[k] and pauses[(*k, "pause")]
        }
        measured_pauses = _measured(client, namespace, resolution, "pauses_per_hour", ())
        assert {k: v for k, v in measured_pauses.items() if v}.keys() == expected_pauses.keys()
        assert all(math.isclose(measured_pauses[k], expected_pauses[k], rel_tol=1e-9) for k in expected_pauses)

        weighted = _expected(truth, resolution, "heartbeat_bitrate_weighted_sum", ())
        beats = _expected(truth, resolution, "heartbeat_played_ms_sum", ())
        measured_bitrate = _measured(client, namespace, resolution, "avg_bitrate_kbps", ())
        assert measured_bitrate.keys() == {k for k in beats if weighted[k]}
        off = {
            k: (measured_bitrate[k], weighted[k], beats[k])
            for k in measured_bitrate
            if not math.isclose(measured_bitrate[k], weighted[k] / beats[k], rel_tol=1e-9)
        }
        assert not off, list(off.items())[:5]

        declines = _expected(truth, resolution, "payment_declines", ("payment_method",))
        submitted = _expected(truth, resolution, "payments_submitted", ("payment_method",))
        measured_rate = _measured(client, namespace, resolution, "payment_failure_rate", ("payment_method",))
        assert measured_rate == {k: declines[k] / submitted[k] for k in declines if submitted[k]}

        for q, metric in ((0.5, "startup_ms_p50"), (0.9, "startup_ms_p90"), (0.99, "startup_ms_p99")):
            exact = _exact_percentiles(generated, size_ms, q)
            sketched = _measured(client, namespace, resolution, metric, ())
            assert sketched.keys() == {k for k, v in exact.items() if v}
            assert all(abs(sketched[k] - exact[k]) <= 0.01 * exact[k] for k in sketched), metric

        concurrency = _measured(client, namespace, resolution, "concurrent_streams", ())
        expected_concurrency = _expected(truth, resolution, "concurrent_streams", ())
        exempt = _concurrency_exempt(generated, size_ms)
        differing = {
            k for k in set(concurrency) | set(expected_concurrency) if concurrency.get(k, 0) != expected_concurrency[k]
        }
        assert differing <= exempt, sorted(differing - exempt)[:5]
        assert sum(expected_concurrency.values()) > 0

    # Late events: counted per window, as many as the generator held back past the allowed lateness.
    for resolution in ("10s", "1m"):
        late = 0
        starts = sorted({int(str(m)) for m in text.zrange(f"sp:{namespace}:windows:{resolution}", 0, -1)})
        # The closing events' own windows: a live flow never finalizes them.
        for window in read_windows(client, namespace, resolution, [s for s in starts if s < CLOSE_MS[namespace]]):
            late += sum(window.late.values())
            assert window.final, (resolution, window.start_ms)
        assert late == truth["late"]["count"], resolution
    # Every malformed message is in the dead-letter topic with the reason the generator meant.
    assert _dead_letters(kafka) == Counter({reason: n for reason, n in truth["malformed"]["by_reason"].items() if n})
