"""Peak memory and run time of `streampulse run --exit-at-end` across a gap in event time.

    python -m bench.gap_bench --gaps 2m,1d,30d,1y [--sessions 10000] [--tree OTHER_CHECKOUT ...]

For each gap: twenty minutes of playback traffic with thousands of sessions
playing, then five minutes the gap later (tests/unit/gap_traffic.py; one
partition holds only the traffic after the gap, so its reader gets there
first, as a device clock a month ahead or a resumed topic would), produced
once to the embedded stack (tansu + valkey), then run through the flow of
each `--tree` (this checkout by default; another checkout's code runs with
it first on PYTHONPATH). Peak RSS is the kernel's high-water mark (VmHWM),
sampled every 50 ms; a run past `--rss-limit-mb` or `--timeout` is stopped
and reported as such, so a flow that grows with the gap cannot take the
machine down.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from bench.common import peak_rss_bytes, say
from streampulse.local_stack import start_embedded_stack
from tests.integration.helpers import create_topics
from tests.unit.gap_traffic import PHASE_MS, gap_traffic

REPO = Path(__file__).resolve().parents[1]
GAPS_MS = {"2m": 120_000, "1h": 3_600_000, "1d": 86_400_000, "30d": 30 * 86_400_000, "1y": 365 * 86_400_000}
PARTITIONS = 4
COUNTRIES = ("BR", "US", "DE", "IN", "GB", "FR", "JP", "MX")
DEVICES = ("tv", "mobile", "tablet", "web", "console")


def produce(bootstrap: str, topic: str, messages: list[tuple[int, bytes, bytes]]) -> None:
    """Produce (partition, key, value) messages, waiting when the producer's queue is full; all acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True})
    for partition, key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("messages still in flight after 120 s")


def run_flow(tree: Path, args: list[str], log_path: Path, rss_limit: int, timeout_s: float) -> tuple[str, float, int]:
    """(outcome, wall seconds, peak RSS bytes) of one flow run from the code in `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streampulse.cli", *args], stdout=log, stderr=log, cwd=tree, env=env
        )
    peak, outcome = 0, "ok"
    try:
        while process.poll() is None:
            peak = max(peak, peak_rss_bytes(process.pid))
            if peak > rss_limit:
                outcome = f"stopped: RSS over {rss_limit >> 20} MB"
                break
            if time.monotonic() - started > timeout_s:
                outcome = f"stopped: not done in {timeout_s:.0f} s"
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    wall = time.monotonic() - started
    if outcome == "ok" and process.returncode != 0:
        outcome = f"exit {process.returncode} (signal or crash; log {log_path})"
    return outcome, wall, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaps", default="2m,1d,30d,1y", help=f"comma-separated, of {', '.join(GAPS_MS)}")
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions before the gap")
    parser.add_argument("--tree", action="append", type=Path, help="checkout whose flow to run (repeatable)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    parser.add_argument(
        "--batch-size",
        default="1000",
        help="the flow's --batch-size: small as in a live flow, where messages arrive a few at a time, so the "
        "store publishes while one partition is past the gap and the others are not",
    )
    args = parser.parse_args()
    trees: list[Path] = args.tree or [REPO]
    with tempfile.TemporaryDirectory(prefix="gap-bench-") as work:
        stack = start_embedded_stack(Path(work) / "stack")
        try:
            for name in args.gaps.split(","):
                gap_ms = GAPS_MS[name]
                now_ms = int(time.time() * 1000)
                base_ms = now_ms - gap_ms - PHASE_MS - 15 * 60_000
                base_ms -= base_ms % 60_000
                per_partition = gap_traffic(
                    gap_ms, base_ms, PARTITIONS, args.sessions, COUNTRIES, DEVICES, seed=5, ahead=0
                )
                topic = f"playback-gap-{name}"
                create_topics(stack.bootstrap, {topic: PARTITIONS, f"signup-gap-{name}": 1})
                messages = [
                    (p, e.session_id.encode(), orjson.dumps(vars(e)))
                    for p, events in enumerate(per_partition)
                    for e in events
                ]
                say(f"gap {name}: producing {len(messages)} events")
                produce(stack.bootstrap, topic, messages)
                for i, tree in enumerate(trees):
                    flow_args = [
                        "run", "--exit-at-end", "--metrics-port", "0", "--kafka-bootstrap", stack.bootstrap,
                        "--playback-topic", topic, "--signup-topic", f"signup-gap-{name}",
                        "--dead-letter-topic", f"dead-letter-gap-{name}", "--anomalies-topic", f"anomalies-gap-{name}",
                        "--redis-url", stack.redis_url, "--namespace", f"gap-{name}-{i}",
                        "--batch-size", args.batch_size,
                    ]  # fmt: skip
                    outcome, wall, peak = run_flow(
                        tree, flow_args, Path(work) / f"{name}-{i}.log", args.rss_limit_mb << 20, args.timeout
                    )
                    print(
                        f"gap {name:>3}  tree {tree}  events {len(messages)}  "
                        f"wall {wall:6.1f} s  peak RSS {peak >> 20:5d} MB  {outcome}",
                        flush=True,
                    )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
