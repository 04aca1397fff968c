"""Load-generator throughput: events per second written to a JSON Lines file on one core.

Run: .venv/bin/python bench/loadgen_bench.py [--events N] [--repeat R] [--truth] [--faults] [--realistic] [--profile]

Each pass is a whole `streampulse loadgen --mode simulated --out FILE.jsonl`
run (model, encoding with orjson, delivery, file writes; with --truth also
the ground truth, built and serialised), timed from start to the closed file.
The default traffic is one simulated day at the rate that fits N events. The
best pass counts (least disturbed by other processes on the machine); the
median is shown too.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadgen.config import FaultConfig, LoadgenConfig
from loadgen.incidents import load_scenario
from loadgen.realism import RealismParams, scenario_realism
from loadgen.runner import run
from loadgen.sinks import JsonlSink

START_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def one_pass(config: LoadgenConfig, out: Path, truth: bool) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, bytes written)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(config, JsonlSink(str(out)), with_truth=truth)
    if truth:
        assert result.truth is not None
        out.with_suffix(".truth.json").write_bytes(orjson.dumps(result.truth))
    assert result.valid_events == config.events
    return time.perf_counter() - wall, time.process_time() - cpu, out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--span-hours", type=float, default=24.0, help="simulated event time the events cover")
    parser.add_argument("--truth", action="store_true", help="also build and write the ground truth")
    parser.add_argument("--faults", action="store_true", help="jitter, 1%% late, 1%% duplicates, 1%% malformed")
    parser.add_argument(
        "--realistic", action="store_true", help="the realistic-day scenario's traffic options and incidents"
    )
    parser.add_argument("--profile", action="store_true", help="one pass under cProfile, top functions")
    args = parser.parse_args()

    faults = FaultConfig()
    if args.faults:
        faults = FaultConfig(jitter_ms=2000, late_fraction=0.01, duplicate_fraction=0.01, malformed_fraction=0.01)
    config = LoadgenConfig(
        start_ms=START_MS,
        seed=args.seed,
        events=args.events,
        span_ms=int(args.span_hours * 3_600_000),
        faults=faults,
        realism=RealismParams(**scenario_realism("realistic-day")) if args.realistic else RealismParams(),
        incidents=load_scenario("realistic-day") if args.realistic else (),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.jsonl"
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(one_pass, config, out, args.truth)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
            return
        walls, cpus = [], []
        size = 0
        for _ in range(args.repeat):
            wall, cpu, size = one_pass(config, out, args.truth)
            walls.append(wall)
            cpus.append(cpu)
    n = args.events
    what = ("with" if args.truth else "no") + " ground truth, " + ("faults" if args.faults else "no faults")
    what += ", realistic-day traffic" if args.realistic else ""
    print(f"loadgen: {n:,} events to JSON Lines ({size / n:.0f} B/event), {what}")
    print(f"  python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible, {args.repeat} passes")
    for name, wall, cpu in (
        ("best", min(walls), min(cpus)),
        ("median", statistics.median(walls), statistics.median(cpus)),
    ):
        print(f"  {name:<6} {n / wall:>12,.0f} events/s wall   {n / cpu:>12,.0f} events/s CPU")


if __name__ == "__main__":
    main()
