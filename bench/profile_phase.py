"""The profile phase of `make bench`: where `streampulse run --exit-at-end` (all metrics) spends its time.

py-spy on the 1-process run, then on every process of 2- and 4-process clusters (bench/profiling.py); then
the CPU seconds of each process counted step by step at 1, 2 and 4 processes (bench/cpu_split.py). Results
go into the sitting's results under `profile`, `profile_2p`, `profile_4p` and `cpu_split`; what could not
run, under `skipped`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bench import contenders as c
from bench.common import ChildFailed, run_timed, say
from bench.cpu_split import out_path
from bench.preload import Preloaded
from bench.profiling import record, record_cluster
from bench.stack import drop_namespace


def run_profiles(
    results: dict[str, Any], data: Preloaded, target: c.Target, work_dir: Path, run_id: str, rate: int
) -> None:
    """The whole phase on the preloaded topics: py-spy at 1, 2 and 4 processes, then the step-by-step CPU."""
    namespace = f"bench-profile-{run_id}"
    argv = c.streampulse_argv(target, data, namespace, "--exit-at-end", "--metrics-port", "0")
    out = work_dir / "profile-streampulse-all-1p.txt"
    say(f"profile: py-spy record --native at {rate} Hz (raw stacks: {out})")
    profile = record(argv, out, rate=rate)
    drop_namespace(target.redis_url, namespace)
    if profile is None:
        results["skipped"]["profile"] = "py-spy could not record here"
    else:
        results["profile"] = {**profile.as_dict(), "mode": "py-spy --native", "raw_stacks": str(out)}
        for entry in profile.as_dict()["by_category"]:
            say(f"profile: {entry['share']:6.1%} {entry['what']}")
        for processes in (2, 4):
            _profile_cluster(results, data, target, work_dir, run_id, rate, processes)
    results["cpu_split"] = cpu_split(results, data, target, work_dir, run_id)


def _profile_cluster(
    results: dict[str, Any], data: Preloaded, target: c.Target, work_dir: Path, run_id: str, rate: int, processes: int
) -> None:
    """All metrics on a cluster of `processes`, a py-spy on every process: where each one's time goes."""
    key = f"profile_{processes}p"
    namespace = f"bench-profile-{processes}p-{run_id}"
    argv = c.streampulse_argv(target, data, namespace, "--exit-at-end", "--metrics-port", "0")
    commands = c.cluster_commands(f"streampulse-all-{processes}p", processes, argv)
    say(f"profile: {processes} processes, a py-spy on each (raw stacks: {work_dir}/profile-*-p*.txt)")
    profiles = record_cluster(commands, work_dir, rate=rate)
    drop_namespace(target.redis_url, namespace)
    if profiles is None:
        results["skipped"][key] = "py-spy could not record the cluster here"
        return
    results[key] = {
        "mode": "py-spy, one per process (native frames where it can)",
        "processes": [
            {"process_id": i, **profile.as_dict(n=10), "raw_stacks": str(work_dir / f"profile-{name}.txt")}
            for i, ((name, _argv), profile) in enumerate(zip(commands, profiles, strict=True))
        ],
    }
    for i, profile in enumerate(profiles):
        top = ", ".join(f"{e['share']:.0%} {e['what'][:40]}" for e in profile.as_dict()["by_category"][:3])
        say(f"profile {processes}p, process {i}: {profile.samples:,} samples: {top}")


def cpu_split(
    results: dict[str, Any], data: Preloaded, target: c.Target, work_dir: Path, run_id: str
) -> dict[str, list[dict[str, Any]]]:
    """All metrics on 1, 2 and 4 processes with each step's CPU seconds counted (bench/cpu_split.py)."""
    split: dict[str, list[dict[str, Any]]] = {}
    for processes in (1, 2, 4):
        namespace = f"bench-cpu-split-{processes}p-{run_id}"
        flow = c.streampulse_argv(target, data, namespace, "--exit-at-end", "--metrics-port", "0")
        out = work_dir / f"cpu-split-{processes}p.json"
        argv = [flow[0], "-m", "bench.cpu_split", str(out), "--", *flow[3:]]  # flow: PYTHON -m streampulse.cli
        commands = c.cluster_commands(f"cpu-split-{processes}p", processes, argv)
        try:
            run_timed(commands, work_dir, timeout_s=600)
        except ChildFailed as exc:
            results["skipped"][f"cpu_split_{processes}p"] = str(exc).splitlines()[0]
            continue
        finally:
            drop_namespace(target.redis_url, namespace)
        paths = [out] if processes == 1 else [out_path(out, ["--process-id", str(i)]) for i in range(processes)]
        split[str(processes)] = [orjson.loads(path.read_bytes()) for path in paths]
        busiest = max(split[str(processes)], key=lambda figures: figures["total_cpu_s"])
        top = ", ".join(f"{s:.2f} {step}" for step, s in sorted(busiest["cpu_s"].items(), key=lambda kv: -kv[1])[:4])
        say(f"CPU split, {processes} process(es), the busiest: {busiest['total_cpu_s']:.2f} CPU s: {top}")
    return split
