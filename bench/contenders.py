"""One timed run of each contender on preloaded topics, checked against the ground truth.

Every run is a child process timed from start to exit (bench/common.py).
Events per second = messages in the topics (valid, duplicate and malformed
alike: what every contender must read) / that wall time. Every run that
counts stream starts is checked: the reference consumers write their cells
to a file; streampulse's are read back from Redis with
`streampulse query stream_starts --resolution 10s --by country,device_type
--format json`, as a user would, and compared with the truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.common import PYTHON, REPO, Timed, run_timed
from bench.preload import CLOSE_AFTER_MS, Cells, Preloaded, compare
from bench.stack import drop_namespace
from streampulse.processes import free_port


@dataclass(frozen=True)
class Target:
    """Where a run reads and writes."""

    bootstrap: str
    redis_url: str
    dead_letter_topic: str
    work_dir: Path


@dataclass
class RunResult:
    """One run of one contender."""

    name: str
    wall_s: float
    messages: int
    peak_rss_bytes: int
    check: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eps(self) -> float:
        """Messages per second of wall time."""
        return self.messages / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """For the JSON results."""
        return {
            "wall_s": round(self.wall_s, 3),
            "eps": round(self.eps),
            "peak_rss_mb": round(self.peak_rss_bytes / 1e6, 1),
            **({"check": self.check} if self.check is not None else {}),
            **self.extra,
        }


def _cells(rows: list[list[Any]]) -> Cells:
    return {(int(w), str(c), str(d)): int(n) for w, c, d, n in rows if n}


# The reference consumers that count stream starts (bench/consumers.py): their output is checked.
BASELINES = ("baseline", "baseline_orjson")


def reference(mode: str, data: Preloaded, target: Target, run_id: str) -> RunResult:
    """`limit`, `baseline` or `baseline_orjson` (bench/consumers.py); the baselines are checked against the truth.

    A baseline is exact when its cells equal the truth's and it rejected exactly the malformed messages.
    """
    out = target.work_dir / f"{run_id}.json"
    argv = [PYTHON, "-m", "bench.consumers", mode, "--bootstrap", target.bootstrap]
    argv += ["--topics", f"{data.playback_topic},{data.signup_topic}", "--out", str(out)]
    timed = run_timed([(run_id, argv)], target.work_dir, timeout_s=_timeout(data))
    result = orjson.loads(out.read_bytes())
    _expect_all_consumed(run_id, result["consumed"], data)
    check = None
    if mode in BASELINES:
        check = compare(data.expected, _cells(result["cells"]))
        check.update(
            exact=check["exact"] and result["rejected"] == data.malformed,
            late=result["late"],
            duplicates=result["duplicates"],
            rejected=result["rejected"],
            malformed=data.malformed,
        )
    return RunResult(mode, timed.wall_s, data.messages, timed.peak_rss_bytes, check, _cpu(timed))


def parallel_limit(data: Preloaded, target: Target, run_id: str, processes: int) -> RunResult:
    """The limit on `processes` processes at once, each reading its share of the partitions (`--share k/N`).

    Nothing is shared or exchanged between them: how evenly and cheaply the most parallel work there is splits on
    this machine, the ceiling of any N-process efficiency measured here (bench/scaleout.py).
    """
    outs = [target.work_dir / f"{run_id}-p{k}.json" for k in range(processes)]
    commands = []
    for k, out in enumerate(outs):
        argv = [
            PYTHON,
            "-m",
            "bench.consumers",
            "limit",
            "--bootstrap",
            target.bootstrap,
            "--share",
            f"{k}/{processes}",
        ]
        argv += ["--topics", f"{data.playback_topic},{data.signup_topic}", "--out", str(out)]
        commands.append((f"{run_id}-p{k}", argv))
    timed = run_timed(commands, target.work_dir, timeout_s=_timeout(data))
    consumed = sum(orjson.loads(out.read_bytes())["consumed"] for out in outs)
    _expect_all_consumed(run_id, consumed, data)
    return RunResult(f"limit_{processes}p", timed.wall_s, data.messages, timed.peak_rss_bytes, None, _cpu(timed))


def _timeout(data: Preloaded) -> float:
    # Generous: a run slower than 2 000 messages/s is broken, not slow.
    return 120 + data.messages / 2_000


def _expect_all_consumed(run_id: str, consumed: int, data: Preloaded) -> None:
    if consumed != data.messages:
        raise RuntimeError(f"{run_id} consumed {consumed:,} messages, the topics hold {data.messages:,}")


def streampulse_argv(target: Target, data: Preloaded, namespace: str, *options: str) -> list[str]:
    """`streampulse run` on the preloaded topics, writing to `namespace`."""
    return [
        PYTHON, "-m", "streampulse.cli", "run",
        "--kafka-bootstrap", target.bootstrap,
        "--playback-topic", data.playback_topic, "--signup-topic", data.signup_topic,
        "--dead-letter-topic", target.dead_letter_topic,
        "--redis-url", target.redis_url, "--namespace", namespace,
        *options,
    ]  # fmt: skip


def cluster_commands(run_id: str, processes: int, argv: list[str]) -> list[tuple[str, list[str]]]:
    """(name, argv) of each process of a `processes`-process bytewax cluster running `argv` (one: `argv` as is)."""
    if processes == 1:
        return [(run_id, argv)]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    return [(f"{run_id}-p{i}", [*argv, "--process-id", str(i), "--addresses", addresses]) for i in range(processes)]


def streampulse(
    name: str,
    data: Preloaded,
    target: Target,
    run_id: str,
    *,
    processes: int = 1,
    workers: int = 1,
    metric_set: str = "all",
) -> RunResult:
    """`streampulse run --exit-at-end` with `processes` x `workers`; stream starts checked from Redis."""
    namespace = f"bench-{run_id}"
    options = ["--exit-at-end", "--metric-set", metric_set, "--metrics-port", "0", "--workers", str(workers)]
    commands = cluster_commands(run_id, processes, streampulse_argv(target, data, namespace, *options))
    timed: Timed = run_timed(commands, target.work_dir, timeout_s=_timeout(data))
    try:
        measured = query_stream_starts(target.redis_url, namespace)
    finally:
        drop_namespace(target.redis_url, namespace)
    return RunResult(
        name, timed.wall_s, data.messages, timed.peak_rss_bytes, compare(data.expected, measured), _cpu(timed)
    )


def _cpu(timed: Timed) -> dict[str, Any]:
    """CPU seconds of the contender's processes (all, each, the busiest), of the rest of the machine (broker,
    Redis, ...), and cores busy."""
    return {
        "cpu_s": round(timed.cpu_s, 2),
        "process_cpu_s": [round(s, 2) for s in timed.process_cpu_s],
        "busiest_process_cpu_s": round(max(timed.process_cpu_s, default=timed.cpu_s), 2),
        "other_cpu_s": round(max(timed.machine_cpu_s - timed.cpu_s, 0.0), 2),
        "cores_busy": round(timed.machine_cpu_s / timed.wall_s, 2) if timed.wall_s > 0 else 0.0,
    }


def query_stream_starts(redis_url: str, namespace: str) -> Cells:
    """Stream starts per (10 s window, country, device_type) as `streampulse query --format json` prints them."""
    import subprocess

    argv = [PYTHON, "-m", "streampulse.cli", "query", "stream_starts", "--resolution", "10s", "--from", "0"]
    argv += ["--by", "country,device_type", "--format", "json", "--redis-url", redis_url, "--namespace", namespace]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"streampulse query failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    cells: Cells = {}
    for line in done.stdout.splitlines():
        row = orjson.loads(line)
        if row["value"]:
            dims = row["dims"]
            cells[(int(row["window_start_ms"]), dims["country"], dims["device_type"])] = int(row["value"])
    return cells


def quix(data: Preloaded, target: Target, run_id: str, peer_python: Path, peer_env: dict[str, str]) -> RunResult:
    """The Quix Streams peer (bench/quix_peer.py) on the playback topic; its closed windows checked."""
    out = target.work_dir / f"{run_id}.json"
    started_at = time.time()
    argv = [str(peer_python), "-m", "bench.quix_peer", "--bootstrap", target.bootstrap]
    argv += ["--topic", data.playback_topic, "--out", str(out), "--started-at", repr(started_at)]
    timed = run_timed([(run_id, argv)], target.work_dir, timeout_s=120 + data.messages / 500, env=peer_env)
    result = orjson.loads(out.read_bytes())
    # `.final()` emits a window once a newer event closes it: compare windows every partition has moved past.
    horizon = data.close_ms - CLOSE_AFTER_MS - 120_000
    measured = {k: v for k, v in _cells(result["cells"]).items() if k[0] < horizon}
    expected = {k: v for k, v in data.expected.items() if k[0] < horizon}
    check = compare(expected, measured)
    check["late_dropped"] = result["late"]
    consumed = int(result["consumed"])
    return RunResult(
        "quix",
        float(result["wall_s"]),
        consumed,
        timed.peak_rss_bytes,
        check,
        {"process_wall_s": round(timed.wall_s, 3)},
    )


Contender = Callable[[Preloaded, Target, str], RunResult]


def topic_messages(bootstrap: str, topic: str) -> int:
    """Messages in every partition of `topic` (end offset - start offset): what a peer reading it must read."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += high - low
        return total
    finally:
        consumer.close()


def late_counted(data: Preloaded, measured: Cells) -> int:
    """Of the stream starts counted beyond the truth, how many its late events can explain (cell by cell).

    A consumer whose lateness cutoff lets some late events through counts them in their own cells; extra counts
    elsewhere (or beyond a cell's late events) have another cause.
    """
    return sum(max(0, min(n - data.expected.get(k, 0), data.late.get(k, 0))) for k, n in measured.items())


def pathway(
    data: Preloaded, target: Target, run_id: str, peer_python: Path, peer_env: dict[str, str], partitions: int
) -> RunResult:
    """The Pathway peer (bench/pathway_peer.py) on the playback topic; every window it emitted checked.

    Its time is the process's, start to exit (`mode="static"` exits at the end of the topic), as for streampulse;
    its events are the playback topic's messages.
    """
    out = target.work_dir / f"{run_id}.json"
    argv = [str(peer_python), "-m", "bench.pathway_peer", "--bootstrap", target.bootstrap]
    argv += ["--topic", data.playback_topic, "--partitions", str(partitions), "--out", str(out)]
    timed = run_timed([(run_id, argv)], target.work_dir, timeout_s=120 + data.messages / 500, env=peer_env)
    result = orjson.loads(out.read_bytes())
    measured = _cells(result["cells"])
    check = compare(data.expected, measured)
    check["late_counted_at_most"] = late_counted(data, measured)
    # Its reader skips what does not fit the schema without counting it; what did fit, for the report.
    check["parsed"] = int(result["parsed"])
    messages = topic_messages(target.bootstrap, data.playback_topic)
    return RunResult("pathway", timed.wall_s, messages, timed.peak_rss_bytes, check, _cpu(timed))


# Every throughput contender by name: a run on the preloaded topics (bench/harness.py alternates them).
CONTENDERS: dict[str, Contender] = {
    "limit": lambda d, t, i: reference("limit", d, t, i),
    "limit_2p": lambda d, t, i: parallel_limit(d, t, i, 2),
    "limit_4p": lambda d, t, i: parallel_limit(d, t, i, 4),
    "baseline": lambda d, t, i: reference("baseline", d, t, i),
    "baseline_orjson": lambda d, t, i: reference("baseline_orjson", d, t, i),
    "streampulse_all_1p": lambda d, t, i: streampulse("streampulse_all_1p", d, t, i),
    "streampulse_all_2p": lambda d, t, i: streampulse("streampulse_all_2p", d, t, i, processes=2),
    "streampulse_all_4p": lambda d, t, i: streampulse("streampulse_all_4p", d, t, i, processes=4),
    "streampulse_all_w2": lambda d, t, i: streampulse("streampulse_all_w2", d, t, i, workers=2),
    "streampulse_starts_1p": lambda d, t, i: streampulse("streampulse_starts_1p", d, t, i, metric_set="stream_starts"),
}
