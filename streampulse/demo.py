"""`streampulse demo`: the embedded default, everything on this machine, one command.

Starts the tansu broker and valkey from the `local` extra's wheels (unless a
Kafka and a Redis are given), creates the topics, runs the load generator and
the flows as child processes, serves /metrics and prints a live line. On
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
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from sinks.redis_query import query
from sinks.redis_sink import connect
from streampulse.kafka_admin import ensure_topics, wait_for_kafka
from streampulse.options import add_option, non_negative_int, positive_float, positive_int
from streampulse.processes import ManagedProcess
from streampulse.run import add_metrics_options
from streampulse.settings import KafkaSettings, RedisSettings, add_kafka_options, add_redis_options, kafka_settings
from streampulse.settings import redis_settings as parse_redis_settings

STATUS_INTERVAL_S = 1.0


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


def _watch(args: argparse.Namespace, children: list[ManagedProcess], redis_settings: RedisSettings) -> int:
    client = connect(redis_settings)
    deadline = time.monotonic() + args.duration if args.duration else None
    tty = sys.stdout.isatty()
    last_line = 0.0
    while deadline is None or time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                print(
                    f"\n{child.name} exited with code {child.popen.returncode}; its log ends with:\n{child.log_tail()}"
                )
                return 1
        now = time.monotonic()
        if tty or now - last_line >= 5:
            line = _status_line(client, redis_settings.namespace)
            print(("\r" + line.ljust(110)) if tty else line, end="" if tty else "\n", flush=True)
            last_line = now
        time.sleep(STATUS_INTERVAL_S)
    return 0


def _status_line(client: object, namespace: str) -> str:
    try:
        rows = query(client, namespace, "stream_starts", "10s", by=["country"])  # type: ignore[arg-type]
    except Exception as exc:
        return f"waiting for windows… ({type(exc).__name__})"
    final = [r for r in rows if r.final]
    if not final:
        return "waiting for the first final 10 s window (window + 30 s allowed lateness)…"
    newest = max(r.window_start_ms for r in final)
    by_country = sorted(((r.value or 0, r.dims["country"]) for r in final if r.window_start_ms == newest), reverse=True)
    total = sum(v for v, _ in by_country)
    top = "  ".join(f"{c} {v}" for v, c in by_country[:8])
    stamp = time.strftime("%H:%M:%S", time.gmtime(newest / 1000))
    return f"[{stamp}Z 10 s] stream starts {total} (SPS {total / 10:.1f})  by country: {top}"
