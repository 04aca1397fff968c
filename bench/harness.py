"""`make bench`: throughput, freshness and memory of the real flows, next to the limit, baselines and Quix Streams.

    .venv/bin/python -m bench                 # the full run (10-20 minutes on 2 cores)
    .venv/bin/python -m bench --quick         # a small one (~2 minutes)
    .venv/bin/python -m bench --kafka-bootstrap H:P --redis-url redis://H:P/0   # on given services
    .venv/bin/python -m bench --only throughput --contenders limit,streampulse_all_1p --rounds 5

Phases (all by default; `--only`/`--skip` pick):

- throughput: the load generator preloads the topics (simulated time, delivery
  faults on); then, in rounds with the contenders alternating, each reads
  them to the end: the limit, the two hand-written baselines (the issue's,
  decoding with orjson and plain Python checks; and the same with our
  msgspec contract decoder), streampulse with all metrics on 1, 2 and 4
  processes and 2 workers, and with stream_starts only (bench/contenders.py).
  Medians; every counting run checked against the truth; every process's CPU
  seconds recorded, from which the scale-out efficiency and capacity come
  (bench/scaleout.py).
- profile: `streampulse run --exit-at-end` (all metrics) under py-spy on every process: 1, 2 and 4 processes
  (bench/profiling.py); then each process's CPU seconds step by step (bench/cpu_split.py).
- freshness: produce -> visible in Redis and on /metrics under steady live load (bench/freshness.py).
- memory: RSS as open sessions grow (bench/memory.py).
- quix, pathway: the peers (bench/peers_phase.py), Quix Streams (bench/quix_peer.py) and Pathway
  (bench/pathway_peer.py), each in its own virtual environment, in one sitting
  on one broker (Apache Kafka when Quix runs: it needs it) with the limit and
  streampulse stream_starts only beside them for the ratios.

Results: a markdown table on stdout and in `bench/results/latest.md`, all
numbers in `bench/results/latest.json` (written after every phase).
"""

from __future__ import annotations

import argparse
import compileall
import functools
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench import contenders as c
from bench import scaleout
from bench.common import REPO, ChildFailed, code_fingerprint, git_commit, machine, median_or_none, run_timed, say
from bench.contenders import CONTENDERS
from bench.freshness import measure_freshness, summary_line
from bench.memory import measure_memory
from bench.peers_phase import PEERS, preload_topics, run_peers
from bench.preload import Preloaded
from bench.profile_phase import run_profiles
from bench.report import render
from bench.stack import Services, create_topics, delete_topics, start_services
from streampulse.options import positive_duration_ms

PHASES = ("throughput", "profile", "freshness", "memory", "quix", "pathway")
# The peers' phases run in one sitting, on one broker (bench/peer.py makes their environments).
# The keys latest.json always has (null when not measured).
REQUIRED_KEYS = (
    "limit_eps",
    "baseline_eps",
    "baseline_orjson_eps",
    "streampulse_all_1p_eps",
    "streampulse_all_2p_eps",
    "streampulse_all_4p_eps",
    "streampulse_starts_1p_eps",
    "scaleout_efficiency_2p",
    "scaleout_efficiency_4p",
    "capacity_2p_eps",
    "capacity_4p_eps",
    "wallclock_ratio_2p",
    "other_cpu_s_2p",
    "quix_eps",
    "pathway_eps",
    "freshness_p50_ms",
    "freshness_p99_ms",
    "freshness_prometheus_p99_ms",
    "peak_rss_mb_1m_sessions",
)
# --quick, and the full run's defaults.
QUICK = {
    "events": 100_000,
    "rounds": 1,
    "quix_events": 30_000,
    "freshness_seconds": 10.0,
    "memory_steps": "10000,100000",
}
FULL = {
    "events": 2_000_000,
    # Five, not three: one run in three can come out 15-20 % dearer in CPU on this shared machine (librdkafka's
    # threads, bench/README.md), and a median of three then moves with it.
    "rounds": 5,
    "quix_events": 400_000,
    "freshness_seconds": 30.0,
    "memory_steps": "10000,100000,1000000",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The harness's options; `--quick` changes the defaults of those not given."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
    )
    parser.add_argument("--events", type=int, help=f"valid events to preload (default {FULL['events']:,})")
    parser.add_argument("--rounds", type=int, help=f"rounds of the contenders (default {FULL['rounds']})")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of each input topic")
    parser.add_argument("--span", type=positive_duration_ms, default="1h", help="event time the events cover")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", help=f"phases to run, comma-separated: {', '.join(PHASES)}")
    parser.add_argument("--skip", default="", help="phases to leave out, comma-separated")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="throughput contenders, comma-separated")
    parser.add_argument("--stack", choices=("embedded", "apache", "external"), help="services (default embedded)")
    parser.add_argument("--kafka-bootstrap", help="use this Kafka (with --redis-url): the external stack")
    parser.add_argument("--redis-url", help="use this Redis (with --kafka-bootstrap)")
    parser.add_argument(
        "--quix-events", type=int, help=f"valid events for the Quix phase (default {FULL['quix_events']:,})"
    )
    parser.add_argument("--freshness-rate", type=float, default=20_000.0, help="live load, events/s")
    parser.add_argument("--freshness-seconds", type=float, help="how long markers are sent")
    parser.add_argument(
        "--freshness-drain", type=float, default=50.0, help="wait at most this long for the last markers (0: skip)"
    )
    parser.add_argument("--memory-steps", help="open sessions per memory step, comma-separated")
    parser.add_argument("--no-memory-split", action="store_true", help="skip the one-id-per-session memory run")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work-dir", type=Path, help="logs and scratch files (default: a temporary directory)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the logs even when everything passed")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.stack is None:
        args.stack = "external" if args.kafka_bootstrap or args.redis_url else "embedded"
    phases = args.only.split(",") if args.only else list(PHASES)
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    unknown = (set(phases) | skip) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}; phases: {', '.join(PHASES)}")
    args.phases = [p for p in PHASES if p in phases and p not in skip]
    args.contender_list = [x.strip() for x in args.contenders.split(",") if x.strip()]
    if set(args.contender_list) - set(CONTENDERS):
        parser.error(f"unknown contender(s); known: {', '.join(CONTENDERS)}")
    return args


class Bench:
    """One sitting: services, preloaded topics, the phases, and the results written as they come."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.run_id = uuid.uuid4().hex[:6]
        self.results: dict[str, Any] = {
            "format": "streampulse-bench",
            "version": 1,
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": git_commit(),
            "code_fingerprint": code_fingerprint(),
            "machine": machine().as_dict(),
            "services": args.stack,
            "config": {
                "events": args.events,
                "rounds": args.rounds,
                "partitions": args.partitions,
                "span_s": args.span / 1000,
                "seed": args.seed,
                "phases": args.phases,
                "contenders": args.contender_list,
            },
            **dict.fromkeys(REQUIRED_KEYS),
            "ratios": {},
            "runs": {},
            "failures": {},
            "skipped": {},
        }

    # -- output --------------------------------------------------------------------------------------------------

    def write(self) -> None:
        """latest.json and latest.md in the results directory (atomically: a reader never sees half a file)."""
        directory: Path = self.args.results_dir
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in (
            ("latest.json", orjson.dumps(self.results, option=orjson.OPT_INDENT_2) + b"\n"),
            ("latest.md", render(self.results).encode()),
        ):
            partial = directory / f"{name}.tmp"
            partial.write_bytes(content)
            partial.replace(directory / name)

    # -- phases --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Every selected phase; returns the exit code (1 if a phase failed)."""
        args = self.args
        _compile_bytecode()
        say(f"services: {args.stack}; work dir {self.work_dir}")
        services = start_services(args.stack, self.work_dir / "services", args.kafka_bootstrap, args.redis_url)
        self.results["services"] = services.name
        failed = False
        try:
            target = c.Target(services.bootstrap, services.redis_url, f"bench-dead-letter-{self.run_id}", self.work_dir)
            create_topics(services.bootstrap, {target.dead_letter_topic: args.partitions})
            main_topics: list[str] = []
            if {"throughput", "profile"} & set(args.phases):
                data = self._preload(services, f"bench-{self.run_id}")
                main_topics = list(data.topics)
                self.results["input"] = self._describe(data)
                for phase, action in (("throughput", self._throughput), ("profile", self._profile)):
                    if phase in args.phases:
                        failed |= self._phase(phase, functools.partial(action, data, target))
                delete_topics(services.bootstrap, main_topics)
            if "freshness" in args.phases:
                failed |= self._phase("freshness", lambda: self._freshness(target))
            if "memory" in args.phases:
                failed |= self._phase("memory", lambda: self._memory(target))
            if set(PEERS) & set(args.phases):
                failed |= self._phase(
                    "peers", lambda: run_peers(self.results, args, services, self.work_dir, self.run_id)
                )
        finally:
            say("stopping the services")
            services.stop()
            self._check_code_unchanged()
        self.write()
        return 1 if failed else 0

    def _check_code_unchanged(self) -> None:
        """Flag results measured while someone changed the product's code (commits or edits)."""
        now = code_fingerprint()
        if now != self.results["code_fingerprint"]:
            self.results["code_changed_during_run"] = f"commit {git_commit()} at the end"
            say("WARNING: the product's code changed during the run: rounds may have measured different code")

    def _phase(self, name: str, action: Callable[[], None]) -> bool:
        """Run a phase; a failure is recorded and reported, and the other phases still run. True if it failed."""
        started = time.monotonic()
        say(f"== {name}")
        try:
            action()
        except Exception as exc:
            say(f"{name} failed: {exc}")
            traceback.print_exc(file=sys.stderr)
            self.results["failures"][name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.write()
            return True
        say(f"== {name} done in {time.monotonic() - started:.0f} s")
        self.write()
        return False

    def _preload(self, services: Services, prefix: str) -> Preloaded:
        return preload_topics(self.args, services, prefix)

    def _describe(self, data: Preloaded) -> dict[str, Any]:
        return {
            "messages": data.messages,
            "valid_events": data.valid_events,
            "mean_message_bytes": round(data.mean_message_bytes),
            "span_s": self.args.span / 1000,
            "late_events": data.late_events,
            "duplicates": data.duplicates,
            "malformed": data.malformed,
            "stream_starts": sum(data.expected.values()),
            "preload_s": round(data.produce_s, 1),
            "preload_eps": round(data.messages / data.produce_s),
        }

    def _throughput(self, data: Preloaded, target: c.Target) -> None:
        args = self.args
        self._startup_cost(target)
        names = args.contender_list
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        self.results["runs"] = runs
        # The first read of freshly produced topics is slower (broker and page caches are cold): not counted.
        warm = CONTENDERS["limit"](data, target, f"warm-up-{self.run_id}")
        say(f"warm-up (not counted): limit {warm.eps:,.0f}/s")
        for r in range(args.rounds):
            # Alternate: each round starts one contender later, so drift on the machine hits all alike.
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                run_id = f"{name}-r{r + 1}-{self.run_id}"
                try:
                    result = CONTENDERS[name](data, target, run_id)
                except (ChildFailed, RuntimeError) as exc:
                    say(f"round {r + 1}/{args.rounds}: {name} FAILED: {str(exc)[:2000]}")
                    runs[name].append({"error": str(exc)[:500]})
                    self.results["failures"][name] = str(exc).splitlines()[0]
                    continue
                runs[name].append(result.as_dict())
                check = result.check
                exact = "" if check is None else f", exact {'yes' if check['exact'] else 'NO'}"
                say(
                    f"round {r + 1}/{args.rounds}: {name:<22} {result.messages:,} msgs in {result.wall_s:6.2f} s = "
                    f"{result.eps:>9,.0f}/s, peak RSS {result.peak_rss_bytes / 1e6:,.0f} MB{exact}"
                )
            self._summarise_throughput()
            self.write()

    def _startup_cost(self, target: c.Target) -> None:
        """`streampulse run --exit-at-end` on empty topics: the fixed cost inside every streampulse wall time.

        Also on 2 and 4 processes, for the CPU seconds each process spends starting and stopping whatever it
        reads (bench/scaleout.py takes them out for the steady-state efficiency).
        """
        prefix = f"bench-empty-{self.run_id}"
        playback, signup = f"{prefix}-playback", f"{prefix}-signup"
        create_topics(target.bootstrap, {playback: self.args.partitions, signup: self.args.partitions})
        empty = Preloaded(playback, signup, 0, 0, 0.0, 0.0, {}, 0, 0, 0, 0, 0)
        walls = []
        busiest: dict[int, list[float]] = {1: [], 2: [], 4: []}
        for i in range(max(1, min(3, self.args.rounds))):
            argv = c.streampulse_argv(target, empty, f"bench-empty-{i}", "--exit-at-end", "--metrics-port", "0")
            for n in busiest:
                timed = run_timed(c.cluster_commands(f"startup-{n}p-{i}", n, argv), self.work_dir, timeout_s=120)
                busiest[n].append(max(timed.process_cpu_s, default=timed.cpu_s))
                if n == 1:
                    walls.append(timed.wall_s)
        delete_topics(target.bootstrap, [playback, signup])
        self.results["streampulse_startup_s"] = round(statistics.median(walls), 3)
        for n, cpu in busiest.items():
            self.results[f"startup_busiest_cpu_s_{n}p"] = round(statistics.median(cpu), 3)
        say(
            f"streampulse start-up + shutdown on empty topics: {self.results['streampulse_startup_s']:.2f} s; "
            "busiest process's CPU s at 1, 2, 4 processes: "
            + ", ".join(f"{self.results[f'startup_busiest_cpu_s_{n}p']:.2f}" for n in busiest)
        )

    def _summarise_throughput(self) -> None:
        results, ratios = self.results, self.results["ratios"]
        for name, runs in results["runs"].items():
            results[f"{name}_eps"] = median_or_none([r["eps"] for r in runs if "eps" in r])
        limit = results.get("limit_eps")
        for name in results["runs"]:
            eps = results.get(f"{name}_eps")
            if eps is None:
                continue
            if limit and name != "limit":
                ratios[f"{name}_vs_limit"] = round(eps / limit, 3)
            # `_vs_baseline`: against our msgspec decoder's; `_vs_baseline_orjson`: against the issue's.
            for baseline in c.BASELINES:
                baseline_eps = results.get(f"{baseline}_eps")
                if baseline_eps and name not in ("limit", baseline):
                    ratios[f"{name}_vs_{baseline}"] = round(eps / baseline_eps, 3)
        one = results.get("streampulse_all_1p_eps")
        for name in ("streampulse_all_2p", "streampulse_all_4p", "streampulse_all_w2"):
            eps = results.get(f"{name}_eps")
            if one and eps:
                ratios[f"{name}_vs_all_1p"] = round(eps / one, 3)
        messages = (results.get("input") or {}).get("messages") or 0
        startup = {n: results.get(f"startup_busiest_cpu_s_{n}p") for n in (1, 2, 4)}
        results.update(scaleout.summarise(results["runs"], messages, results["machine"]["cores"], startup))

    def _profile(self, data: Preloaded, target: c.Target) -> None:
        run_profiles(self.results, data, target, self.work_dir, self.run_id, self.args.profile_rate)

    def _freshness(self, target: c.Target) -> None:
        args = self.args
        result = measure_freshness(
            target,
            rate=args.freshness_rate,
            partitions=args.partitions,
            warmup_s=5.0,
            markers_s=args.freshness_seconds,
            drain_s=args.freshness_drain,
        )
        say(summary_line(result))
        self.results["freshness"] = result.as_dict()
        self.results["freshness_p50_ms"] = result.as_dict()["redis_partial_p50_ms"]
        self.results["freshness_p99_ms"] = result.as_dict()["redis_partial_p99_ms"]
        self.results["freshness_prometheus_p50_ms"] = result.as_dict()["metrics_counter_p50_ms"]
        self.results["freshness_prometheus_p99_ms"] = result.as_dict()["metrics_counter_p99_ms"]

    def _memory(self, target: c.Target) -> None:
        args = self.args
        steps = [int(s) for s in str(args.memory_steps).split(",") if s.strip()]
        memory = measure_memory(target, args.partitions, steps, split=not args.no_memory_split and not args.quick)
        self.results["memory"] = memory
        self.results["bytes_per_open_session"] = memory.get("bytes_per_open_session")
        for step in memory["steps"]:
            if step["sessions"] == 1_000_000:
                self.results["peak_rss_mb_1m_sessions"] = step["peak_rss_mb"]
                self.results["rss_mb_1m_sessions"] = step["rss_mb"]


def _compile_bytecode() -> None:
    """Compile the product's modules once, as installing it does, so no timed start-up compiles them.

    An editable install run where PYTHONDONTWRITEBYTECODE is set (this machine sets it) would otherwise compile
    the 75 modules `streampulse run` imports (and the reference consumers theirs) at every start: about 0.08 CPU s per process, paid by every
    process of a cluster.
    """
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    for package in [*packages["packages"], "bench"]:  # bench: the reference consumers are timed too
        compileall.compile_dir(REPO / package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown report."""
    args = parse_args(argv)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="streampulse-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, work_dir)
    code = 1
    try:
        code = bench.run()
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    finally:
        bench.write()
        print(render(bench.results))
        say(f"results: {args.results_dir / 'latest.md'}, {args.results_dir / 'latest.json'}")
        if code == 0 and not args.keep_work_dir and args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            say(f"logs kept in {work_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
