"""Where each process of `streampulse run` spends its CPU seconds, step by step.

    python -m bench.cpu_split OUT.json -- run --kafka-bootstrap ... --exit-at-end   # one process, accounted
    python -m bench.cpu_split --table OUT-p0.json OUT-p1.json ...                  # the table of several

py-spy samples say which stack a thread was on, not whether it was on a core:
where four processes share two cores, a process waiting for the CPU, a flush
or a peer is sampled all the same. This counts CPU time itself: it runs the
`streampulse` command in-process with the flow's coarse steps (the reading
and folding of a batch, the window store's merge and publish, the anomaly
detector and its roll-up step, each sink's write) wrapped in
`time.thread_time()`, and at exit writes per step its CPU seconds, calls and
wall-clock seconds (a step's wall beyond its CPU is time it waited: for the
broker to take an epoch's dead letters, for Redis, or for a core),
the process's CPU seconds before its first batch (start-up: imports, service
checks, building the flow, joining the cluster) and in all (every thread,
librdkafka's included), and apart the CPU of librdkafka's own threads
(bench/thread_cpu.py: fetching and parsing messages, producing). What no step
holds ("rest") is bytewax's own work (scheduling, exchange between workers,
progress), the small maps between the steps and shutdown. The wrapped calls are per batch or
per publish, never per event, so the accounting costs nothing measurable.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.thread_cpu import ThreadSampler

# (module, class, method, step): what is accounted, and under which name; a sink's write goes under its writer.
STEPS: tuple[tuple[str, str, str, str], ...] = (
    ("flows.sources.reader_base", "PartitionReader", "next_batch", "read, decode and fold"),
    ("flows.sharding", "ShardRouter", "split", "split by shard"),
    ("streampulse.dataflow", "WindowLogic", "on_batch", "window store: merge"),
    ("streampulse.dataflow", "WindowLogic", "on_notify", "window store: publish"),
    ("streampulse.dataflow", "WindowLogic", "on_eof", "window store: publish"),
    ("flows.anomaly.steps", "ShardDetectorLogic", "on_batch", "anomaly detector (the shard's cells)"),
    ("flows.anomaly.steps", "RollUpLogic", "on_batch", "anomaly detector (roll-ups)"),
    ("sinks.base", "_WriterPartition", "write_batch", "sink"),
    ("sinks.base", "_SettlingPartition", "write_batch", "sink"),
    # A process sink waits for its writes here, once per epoch.
    ("sinks.base", "_SettlingPartition", "snapshot", "sink"),
)
# The sink writers by what they write to.
SINKS = {
    "RedisWindowWriter": "Redis: windows",
    "PrometheusWindowWriter": "/metrics: windows",
    "DeadLetterWriter": "dead letters",
    "RedisHealthWriter": "Redis: pipeline health",
    "RedisDetectorStateWriter": "Redis: detector state",
    "RedisAnomalyWriter": "anomalies: Redis",
    "KafkaAnomalyWriter": "anomalies: Kafka",
    "PrometheusDetectionWriter": "anomalies: /metrics",
}
START_UP = "start-up (before the first batch)"
DEAD_LETTERS = SINKS["DeadLetterWriter"]
LIBRDKAFKA = "librdkafka's threads (fetch, produce)"
REST = "rest: bytewax, the maps between steps, shutdown"


class Accounts:
    """CPU seconds and calls per step, of the thread each call ran on."""

    def __init__(self, threads: ThreadSampler | None = None) -> None:
        """`threads`: a running sampler, to count librdkafka's threads apart from the rest."""
        self.cpu_s: dict[str, float] = {}
        self.wall_s: dict[str, float] = {}
        self.calls: Counter[str] = Counter()
        self.process_cpu_before_first_s: float | None = None
        self._threads = threads
        self._librdkafka_before_first_s = 0.0

    def wrap(self, owner: type, method: str, step: str) -> None:
        """Account every call of `owner.method` under `step` (a sink's under what its writer writes to)."""
        original: Callable[..., Any] = getattr(owner, method)

        @functools.wraps(original)
        def accounted(this: Any, *args: Any, **kwargs: Any) -> Any:
            if self.process_cpu_before_first_s is None:
                self.process_cpu_before_first_s = _process_cpu_s()
                if self._threads is not None:  # what librdkafka did before the first batch is start-up's
                    self._threads.sample()
                    self._librdkafka_before_first_s = self._threads.librdkafka_cpu_s()
            started, started_wall = time.thread_time(), time.perf_counter()
            try:
                return original(this, *args, **kwargs)
            finally:
                name = step
                if step == "sink":
                    writer = type(this._writer).__name__
                    name = SINKS.get(writer, f"other sinks ({writer})")
                self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.thread_time() - started
                self.wall_s[name] = self.wall_s.get(name, 0.0) + time.perf_counter() - started_wall
                self.calls[name] += 1

        setattr(owner, method, accounted)

    def as_dict(self) -> dict[str, Any]:
        """The process's figures: CPU s per step, start-up, rest and total; calls and wall s per step."""
        total = _process_cpu_s()
        start_up = self.process_cpu_before_first_s or total
        steps = {name: round(s, 3) for name, s in sorted(self.cpu_s.items(), key=lambda item: -item[1])}
        threads: dict[str, float] = {}
        if self._threads is not None:
            self._threads.sample()
            total -= self._threads.own_cpu_s()  # the sampler's, not the flow's
            librdkafka = self._threads.librdkafka_cpu_s() - self._librdkafka_before_first_s
            threads[LIBRDKAFKA] = round(max(librdkafka, 0.0), 3)
        rest = total - start_up - sum(self.cpu_s.values()) - sum(threads.values())
        return {
            "cpu_s": {START_UP: round(start_up, 3), **steps, **threads, REST: round(max(rest, 0.0), 3)},
            "calls": dict(self.calls),
            "wall_s": {name: round(s, 3) for name, s in self.wall_s.items()},
            "total_cpu_s": round(total, 3),
        }


def _process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def run_accounted(out: Path, argv: Sequence[str]) -> int:
    """Run `streampulse ARGV` in this process with its steps accounted; write the figures to `out` at exit."""
    threads = ThreadSampler()
    threads.start()
    accounts = Accounts(threads)
    for module, owner, method, step in STEPS:
        accounts.wrap(getattr(importlib.import_module(module), owner), method, step)
    atexit.register(lambda: out.write_bytes(orjson.dumps(accounts.as_dict())))
    from streampulse.cli import main

    return main(list(argv))


def _waited(figure: dict[str, Any], step: str) -> float:
    """Wall seconds `step` spent off the CPU: waiting for a service, or for a core."""
    waited: float = figure["wall_s"][step] - figure["cpu_s"].get(step, 0.0)
    return max(waited, 0.0)


def table(figures: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """A markdown table: a row per step, a column per process (CPU seconds)."""
    steps: list[str] = []
    for figure in figures:
        steps += [s for s in figure["cpu_s"] if s not in steps and s not in (LIBRDKAFKA, REST)]
    if any(LIBRDKAFKA in figure["cpu_s"] for figure in figures):
        steps.append(LIBRDKAFKA)
    steps.append(REST)
    lines = [f"| step | {' | '.join(labels)} |", "|---|" + "---:|" * len(labels)]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{f['cpu_s'].get(step, 0.0):.2f}" for f in figures) + " |")
    lines.append("| **all** | " + " | ".join(f"**{f['total_cpu_s']:.2f}**" for f in figures) + " |")
    for label, dead_letters in (
        ("wall s waiting in dead letters (for the broker)", True),
        ("wall s waiting in the other steps", False),
    ):
        row = [
            sum(_waited(f, step) for step in f.get("wall_s", {}) if (step == DEAD_LETTERS) == dead_letters)
            for f in figures
        ]
        lines.append(f"| {label} | " + " | ".join(f"{w:.2f}" for w in row) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run one accounted process, or print the table of several processes' figures."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--table"]:
        paths = [Path(p) for p in argv[1:]]
        print("\n".join(table([orjson.loads(p.read_bytes()) for p in paths], [p.stem for p in paths])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where the figures go (JSON), written at exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the streampulse command and its options")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the streampulse command after --, e.g. -- run --exit-at-end ...")
    return run_accounted(out_path(args.out, command), command)


def out_path(out: Path, command: Sequence[str]) -> Path:
    """`out`, or for a process of a cluster (`--process-id N`) `out` with `-pN` before its suffix."""
    if "--process-id" in command:
        process = command[command.index("--process-id") + 1]
        return out.with_name(f"{out.stem}-p{process}{out.suffix}")
    return out


if __name__ == "__main__":
    sys.exit(main())
