"""Where `streampulse run --exit-at-end` spends its time: py-spy samples, summed by function and by category.

    python -m bench.profiling STACKS.txt      # summarise a py-spy `--format raw` file

The harness records the flow (all metrics, on 1 process, and on clusters of
2 and 4 processes with a py-spy on every process: `record_cluster`) on the
preloaded topics with `py-spy record --native --format raw` (collapsed stacks: one
line per distinct stack, frames root first, then the sample count). Native
frames show what Python frames cannot: the garbage collector
(`gc_collect_main`), the JSON decoder inside msgspec, librdkafka and
bytewax's Rust runtime. Idle threads (the /metrics server waiting in
`poll`) are left out.

Each sample is put in one category: the garbage collector or start-up
imports if they are anywhere in its stack, else the innermost frame that
belongs to a known part (decoder, Kafka client, per-partition aggregation,
window store, Redis, Prometheus, dead letters, bytewax), else "other".
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import ChildFailed, run_timed, say

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")

# Frames that mark a thread doing nothing (its samples are dropped).
IDLE_MARKERS = ("serve_forever", "Thread._bootstrap")
# (category, test on one frame's "name (file)") from the most specific; the first to match, leaf upwards, wins.
CATEGORIES: tuple[tuple[str, Sequence[str]], ...] = (
    ("decode (schemas/decoder.py, msgspec)", ("schemas/decoder.py", "msgspec/")),
    ("Kafka client (confluent-kafka, librdkafka)", ("confluent_kafka/", "librdkafka", "rd_kafka")),
    (
        "per-partition folding (flows/fold/partition_aggregator.py, *_metrics.py, native/)",
        (
            "flows/fold/partition_aggregator.py",
            "flows/fold/playback.py",
            "flows/fold/signup.py",
            "flows/windows/sketch.py",
            "flows/fold/native.py",
            "streampulse_native",
        ),
    ),
    ("anomaly detection (flows/anomaly/, sinks/anomaly_sink.py)", ("flows/anomaly/", "sinks/anomaly_sink.py")),
    ("splitting summaries by shard (flows/sharding.py)", ("flows/sharding.py",)),
    (
        "window store merge/publish (flows/windows/store.py, window.py, flows/partials.py, WindowLogic)",
        (
            "flows/windows/store.py",
            "flows/windows/window.py",
            "flows/windows/concurrency.py",
            "flows/partials.py",
            "streampulse/dataflow.py",
        ),
    ),
    (
        "Redis writes (sinks/redis_sink.py, redis-py)",
        ("sinks/redis_sink.py", "sinks/redis_layout.py", "sinks/window_read.py", "redis/"),
    ),
    (
        "Prometheus export (sinks/prometheus*.py, flows/windows/metric_values.py, prometheus_client)",
        ("sinks/prometheus", "flows/windows/metric_values.py", "prometheus_client/"),
    ),
    ("dead letters (sinks/dead_letter.py)", ("sinks/dead_letter.py",)),
    (
        "partition reader loop (flows/sources/reader_base.py, kafka.py)",
        ("flows/sources/reader_base.py", "flows/sources/kafka.py"),
    ),
    ("bytewax (Rust runtime and its Python)", ("_bytewax", "bytewax/")),
)
PROJECT_DIRS = ("flows/", "sinks/", "schemas/", "streampulse/")
ENTRY_POINTS = ("<module>", "main", "run")
GC = "garbage collector (gc_collect_*)"
STARTUP = "start-up and shutdown (imports, service checks, building the flow)"
OTHER = "other (interpreter, allocator, libc)"


@dataclass
class Profile:
    """Samples summed three ways."""

    samples: int = 0
    idle_samples: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    self_by_function: Counter[str] = field(default_factory=Counter)
    self_by_line: Counter[str] = field(default_factory=Counter)
    total_by_function: Counter[str] = field(default_factory=Counter)

    def top(self, counter: Counter[str], n: int) -> list[dict[str, Any]]:
        """The n largest entries with their share of the samples."""
        return [
            {"what": what, "samples": count, "share": round(count / self.samples, 4) if self.samples else 0.0}
            for what, count in counter.most_common(n)
        ]

    def as_dict(self, n: int = 15) -> dict[str, Any]:
        """For the JSON results."""
        return {
            "samples": self.samples,
            "idle_samples_dropped": self.idle_samples,
            "by_category": self.top(self.by_category, len(self.by_category)),
            "top_self_functions": self.top(self.self_by_function, n),
            "top_self_lines": self.top(self.self_by_line, n),
            "top_inclusive_project_functions": self.top(self.total_by_function, n),
        }


def _short(frame: str) -> tuple[str, str, str]:
    """(function, file, "function (file)") of one frame, Rust symbols shortened."""
    match = _FRAME.match(frame)
    name, file = (match["name"], match["file"]) if match else (frame, "")
    if ".so" in file and "::" in name:
        name = _RUST_HASH.sub("", name)
        parts = [p for p in name.split("::") if p and not p.startswith("_$LT$")]
        name = "::".join(parts[-2:]) if parts else name
    return name, file, f"{name} ({file})" if file else name


def _category(frames: list[tuple[str, str, str]]) -> str:
    for name, file, _ in frames:
        if name.startswith("gc_collect"):
            return GC
        if "importlib" in file or name in ("check_services", "build_dataflow", "build_parser"):
            return STARTUP
    for name, file, _ in reversed(frames):
        where = f"{name} {file}"
        for category, needles in CATEGORIES:
            if any(needle in where for needle in needles):
                return category
    return OTHER


def summarise(raw: str) -> Profile:
    """Sum py-spy's collapsed stacks (`--format raw`)."""
    profile = Profile()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = stack.split(";")
        if any(marker in frame for frame in raw_frames for marker in IDLE_MARKERS):
            profile.idle_samples += count
            continue
        frames = [_short(f) for f in raw_frames]
        profile.samples += count
        profile.by_category[_category(frames)] += count
        profile.self_by_function[frames[-1][2]] += count
        line_match = _FRAME.match(raw_frames[-1])
        line = f":{line_match['line']}" if line_match and line_match["line"] else ""
        profile.self_by_line[f"{frames[-1][0]} ({frames[-1][1]}{line})" if frames[-1][1] else frames[-1][0]] += count
        # Inclusive time of the project's own functions (the Rust and runpy scaffolding around them is ~100 %).
        for label in {f[2] for f in frames if f[1].startswith(PROJECT_DIRS) and f[0] not in ENTRY_POINTS}:
            profile.total_by_function[label] += count
    return profile


def record(argv: Sequence[str], out: Path, rate: int = 100, timeout_s: float = 1800) -> Profile | None:
    """Run `argv` under py-spy (native frames if py-spy can, else Python only); None if py-spy is unusable."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        say("profile: py-spy is not installed in this environment (the dev extra has it); skipped")
        return None
    for native in (["--native"], []):
        command = [str(py_spy), "record", "--rate", str(rate), "--format", "raw", "-o", str(out), *native, "--"]
        done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode == 0 and out.exists() and out.stat().st_size:
            return summarise(out.read_text(encoding="utf-8", errors="replace"))
        say(f"profile: py-spy {' '.join(native) or '(Python frames only)'} failed: {done.stderr.strip()[-300:]}")
    return None


def record_cluster(
    commands: Sequence[tuple[str, Sequence[str]]], out_dir: Path, rate: int = 100, timeout_s: float = 1800
) -> list[Profile] | None:
    """Every process of a cluster under a py-spy of its own, all started at once; a Profile per process, in order.

    Native frames if py-spy can, else Python only; None if py-spy is unusable (or the cluster failed both times).
    """
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        say("profile: py-spy is not installed in this environment (the dev extra has it); skipped")
        return None
    for native in (["--native"], []):
        outs = [out_dir / f"profile-{name}.txt" for name, _argv in commands]
        wrapped = [
            (f"py-spy-{name}", [str(py_spy), "record", "--rate", str(rate), "--format", "raw", "-o", str(out)])
            for (name, _argv), out in zip(commands, outs, strict=True)
        ]
        runs = [
            (name, [*command, *native, "--", *argv])
            for (name, command), (_name, argv) in zip(wrapped, commands, strict=True)
        ]
        try:
            run_timed(runs, out_dir, timeout_s=timeout_s)
        except ChildFailed as exc:
            say(f"profile: py-spy {' '.join(native) or '(Python frames only)'} failed: {str(exc)[-300:]}")
            continue
        if all(out.exists() and out.stat().st_size for out in outs):
            return [summarise(out.read_text(encoding="utf-8", errors="replace")) for out in outs]
        say(f"profile: py-spy {' '.join(native) or '(Python frames only)'} wrote no stacks for some process")
    return None


def main(argv: list[str] | None = None) -> int:
    """Print the summary of a raw py-spy file."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m bench.profiling STACKS.txt", file=sys.stderr)
        return 2
    profile = summarise(Path(args[0]).read_text(encoding="utf-8", errors="replace"))
    for title, entries in profile.as_dict().items():
        if isinstance(entries, list):
            print(f"\n{title}:")
            for entry in entries:
                print(f"  {entry['share']:6.1%}  {entry['what']}")
        else:
            print(f"{title}: {entries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
