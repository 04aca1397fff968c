"""`streampulse demo`: the embedded default, everything on this machine, one command.

Starts the tansu broker and valkey from the `local` extra's wheels (unless a
Kafka and a Redis are given), creates the topics, runs the load generator and
the flows as child processes and serves /metrics. In a terminal it opens
`streampulse top` on the demo's namespace; otherwise (or with --plain) it
prints one line per final fine window, each window once and in order. On `q`,
Ctrl-C, after --duration, or if any child dies, it stops everything it
started; the children also die with it if it is killed outright.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import redis

from connect.kafka_admin import ensure_topics, wait_for_kafka
from settings.kafka import KafkaSettings
from settings.redis import RedisSettings
from sinks.redis_query import Row, query
from sinks.redis_sink import connect
from streampulse.configure import add_kafka_options, add_redis_options, kafka_settings
from streampulse.configure import redis_settings as parse_redis_settings
from streampulse.options import add_flag, add_option, non_negative_int, positive_float, positive_int
from streampulse.processes import ManagedProcess
from streampulse.run import add_metrics_options

STATUS_INTERVAL_S = 1.0
FINE_RESOLUTION = "10s"  # the flows' default fine window, which the demo runs with


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="run everything locally: broker, Redis, load generator, flows, /metrics, live view",
        description="The embedded default: a local Kafka-compatible broker (tansu) and Redis-compatible server "
        "(valkey) from pip-installed binaries, the load generator and the flows. Ctrl-C stops everything.",
    )
    add_option(
        parser,
        "--duration",
        type=non_negative_int,
        default="0",
        help="stop after this many seconds (0 = run until Ctrl-C)",
    )
    add_option(
        parser, "--rate", type=positive_float, default="300", help="events per second the load generator produces"
    )
    add_option(parser, "--partitions", type=positive_int, default="4", help="partitions of each input topic")
    add_option(parser, "--seed", type=int, default="42", help="load generator seed")
    add_option(parser, "--work-dir", help="where logs of the started processes go (default: a temporary folder)")
    add_flag(parser, "--plain", help="print a line per final window instead of opening streampulse top")
    add_metrics_options(parser)
    add_kafka_options(parser)
    add_redis_options(parser)
    parser.set_defaults(func=run)
    # Only an explicit flag or environment variable means "use my own Kafka/Redis".
    parser.set_defaults(kafka_bootstrap=os.environ.get("STREAMPULSE_KAFKA_BOOTSTRAP"))
    parser.set_defaults(redis_url=os.environ.get("STREAMPULSE_REDIS_URL"))


@contextlib.contextmanager
def _services(args: argparse.Namespace, work_dir: Path) -> Iterator[tuple[str, str]]:
    if args.kafka_bootstrap and args.redis_url:
        yield args.kafka_bootstrap, args.redis_url
        return
    from streampulse.local_stack import start_embedded_stack

    print("starting the embedded broker (tansu) and Redis-compatible server (valkey)…", flush=True)
    stack = start_embedded_stack(work_dir)
    try:
        yield args.kafka_bootstrap or stack.bootstrap, args.redis_url or stack.redis_url
    finally:
        stack.stop()


def _connection_argv(kafka: KafkaSettings, redis_url: str, namespace: str) -> list[str]:
    return [
        "--kafka-bootstrap",
        kafka.bootstrap,
        "--playback-topic",
        kafka.playback_topic,
        "--signup-topic",
        kafka.signup_topic,
        "--redis-url",
        redis_url,
        "--namespace",
        namespace,
    ]


def _kafka_security_env(kafka: KafkaSettings) -> dict[str, str]:
    """The children's environment: ours, with Kafka's security settings as the demo was given them.

    As environment variables, not flags: a password on a command line shows in `ps`.
    """
    env = {**os.environ, "STREAMPULSE_KAFKA_SECURITY_PROTOCOL": kafka.security_protocol}
    for name, value in (
        ("STREAMPULSE_KAFKA_SASL_MECHANISM", kafka.sasl_mechanism),
        ("STREAMPULSE_KAFKA_SASL_USERNAME", kafka.sasl_username),
        ("STREAMPULSE_KAFKA_SSL_CA_LOCATION", kafka.ssl_ca_location),
    ):
        if value:
            env[name] = value
    if kafka.sasl_password is not None:
        env.pop("STREAMPULSE_KAFKA_SASL_PASSWORD_FILE", None)  # the password itself replaces its file
        env["STREAMPULSE_KAFKA_SASL_PASSWORD"] = kafka.sasl_password.reveal()
    return env


class _Stop(Exception):
    pass


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def run(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C, --duration, or a child's failure."""
    signal.signal(signal.SIGTERM, _raise_stop)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="streampulse-demo-"))
    children: list[ManagedProcess] = []
    code = 0
    try:
        with _services(args, work_dir) as (bootstrap, redis_url):
            try:
                code = _run_children(args, work_dir, bootstrap, redis_url, children)
            finally:
                # Children first: they are clients of the broker and Redis stopped after them.
                for child in reversed(children):
                    # SIGINT is the flows' (bytewax's) and the load generator's quick, clean stop.
                    child.stop(grace_s=10, first_signal=signal.SIGINT)
    except (KeyboardInterrupt, _Stop):
        code = 0
    finally:
        print("\nstreampulse demo: stopped everything it started.", flush=True)
    return code


def _run_children(
    args: argparse.Namespace, work_dir: Path, bootstrap: str, redis_url: str, children: list[ManagedProcess]
) -> int:
    args.kafka_bootstrap, args.redis_url = bootstrap, redis_url
    kafka = kafka_settings(args)
    redis_settings = parse_redis_settings(args)
    wait_for_kafka(kafka)
    partitions = args.partitions
    ensure_topics(
        kafka,
        {
            kafka.playback_topic: partitions,
            kafka.signup_topic: partitions,
            kafka.dead_letter_topic: partitions,
            kafka.anomalies_topic: 1,
        },
    )
    common = _connection_argv(kafka, redis_url, redis_settings.namespace)
    python = [sys.executable, "-m", "streampulse.cli"]
    metrics = ["--metrics-host", args.metrics_host, "--metrics-port", str(args.metrics_port)]
    anomalies = ["--anomalies-topic", kafka.anomalies_topic]
    env = _kafka_security_env(kafka)
    flows = [*python, "run", *common, *metrics, *anomalies]
    children.append(ManagedProcess("flows", flows, work_dir / "flows.log", env=env))
    loadgen = [
        *python,
        "loadgen",
        "--mode",
        "realtime",
        "--rate",
        str(args.rate),
        "--seed",
        str(args.seed),
        *common[:6],
    ]
    children.append(ManagedProcess("loadgen", loadgen, work_dir / "loadgen.log", env=env))
    print(
        f"streampulse demo: Kafka {bootstrap}, Redis {redis_settings.display_url}, "
        f"/metrics on http://{args.metrics_host}:{args.metrics_port}/metrics, logs in {work_dir}\n"
        "Ctrl-C stops everything.",
        flush=True,
    )
    return _watch(args, children, redis_settings)


def _dead_child(children: list[ManagedProcess]) -> ManagedProcess | None:
    return next((child for child in children if not child.alive()), None)


def _watch(args: argparse.Namespace, children: list[ManagedProcess], redis_settings: RedisSettings) -> int:
    client = connect(redis_settings)
    deadline = time.monotonic() + args.duration if args.duration else None

    def should_stop() -> bool:
        return _dead_child(children) is not None or (deadline is not None and time.monotonic() >= deadline)

    if not args.plain and sys.stdout.isatty() and sys.stdin.isatty():
        from streampulse.top_live import run_live
        from streampulse.top_view import ViewState

        run_live(client, redis_settings.namespace, ViewState(resolution=FINE_RESOLUTION), should_stop)
    else:
        _print_windows(client, redis_settings.namespace, should_stop)
    dead = _dead_child(children)
    if dead is not None:
        print(f"\n{dead.name} exited with code {dead.popen.returncode}; its log ends with:\n{dead.log_tail()}")
        return 1
    return 0


def _print_windows(client: redis.Redis, namespace: str, should_stop: Callable[[], bool]) -> None:
    """Print each final fine window once, in order, until `should_stop()`."""
    printed: int | None = None
    waiting_said = False
    while not should_stop():
        try:
            after = None if printed is None else printed + 1
            totals = query(client, namespace, "stream_starts", FINE_RESOLUTION, from_ms=after)
            by_country = query(client, namespace, "stream_starts", FINE_RESOLUTION, from_ms=after, by=["country"])
        except redis.RedisError as exc:
            print(f"waiting for Redis… ({type(exc).__name__})", flush=True)
            time.sleep(STATUS_INTERVAL_S)
            continue
        lines, newest = window_lines(totals, by_country, first=printed is None)
        if lines:
            print("\n".join(lines), flush=True)
            printed = newest
        elif printed is None and not waiting_said:
            print("waiting for the first final 10 s window (window + 30 s allowed lateness)…", flush=True)
            waiting_said = True
        time.sleep(STATUS_INTERVAL_S)


def window_lines(totals: list[Row], by_country: list[Row], first: bool) -> tuple[list[str], int | None]:
    """A line per final window of `totals`, oldest first, up to the first one not final; and the newest printed.

    With `first`, only the newest final window: the lines start where the demo's watching starts.
    """
    final: list[Row] = []
    for row in sorted(totals, key=lambda r: r.window_start_ms):
        if not row.final:
            break  # windows close in order: a later one cannot be final before this one
        final.append(row)
    if first:
        final = final[-1:]
    countries: dict[int, list[tuple[int, str]]] = {}
    for row in by_country:
        countries.setdefault(row.window_start_ms, []).append((int(row.value or 0), row.dims["country"]))
    lines = []
    for row in final:
        total = int(row.value or 0)
        seconds = (row.window_end_ms - row.window_start_ms) / 1000
        ranked = sorted(countries.get(row.window_start_ms, []), key=lambda vc: (-vc[0], vc[1]))
        top = "  ".join(f"{c} {v}" for v, c in ranked[:8])
        stamp = time.strftime("%H:%M:%S", time.gmtime(row.window_start_ms / 1000))
        lines.append(f"[{stamp}Z {seconds:g} s] stream starts {total} (SPS {total / seconds:.1f})  by country: {top}")
    return lines, (final[-1].window_start_ms if final else None)
