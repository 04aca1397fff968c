"""`streampulse run`: the flows against the configured Kafka and Redis."""

from __future__ import annotations

import argparse
import gc
import logging
from datetime import timedelta

import redis
from bytewax._bytewax import cli_main

from flows.dataflow import FlowSettings, build_dataflow
from sinks.prometheus import serve_metrics
from sinks.redis_sink import connect
from streampulse.kafka_admin import ensure_topics, topic_partitions, wait_for_kafka
from streampulse.options import add_flag, add_option, port, positive_int
from streampulse.settings import (
    ConfigError,
    add_flow_options,
    add_kafka_options,
    add_redis_options,
    kafka_settings,
    reader_config,
    redis_settings,
)

log = logging.getLogger(__name__)

GC_GEN0_THRESHOLD = 100_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run the flows against the configured Kafka and Redis",
        description="Consume the playback and sign-up topics, aggregate by event-time window, write to Redis and "
        "serve /metrics.",
    )
    add_flag(parser, "--exit-at-end", help="read up to the end offsets present at start, finalize every window, exit 0")
    add_metrics_options(parser)
    cluster = parser.add_argument_group("scale-out (bytewax cluster)")
    add_option(cluster, "--workers", type=positive_int, default="1", help="worker threads in this process")
    add_option(cluster, "--process-id", type=int, help="this process's index in the cluster (with --addresses)")
    add_option(cluster, "--addresses", help="host:port of every process of the cluster, separated by ';'")
    add_kafka_options(parser)
    add_redis_options(parser)
    add_flow_options(parser)
    parser.set_defaults(func=run)


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """Where /metrics is served."""
    group = parser.add_argument_group("metrics endpoint")
    add_option(group, "--metrics-host", default="127.0.0.1", help="address /metrics binds to")
    add_option(group, "--metrics-port", type=port, default="9464", help="port of /metrics (0 = any free port)")


def flow_settings(args: argparse.Namespace) -> FlowSettings:
    """Validated settings of the flow; raises ConfigError saying what to fix."""
    if (args.process_id is None) != (args.addresses is None):
        raise ConfigError("--process-id and --addresses go together: give both to run as part of a cluster")
    if args.addresses is not None and not 0 <= args.process_id < len(args.addresses.split(";")):
        raise ConfigError(f"--process-id {args.process_id} is not an index into --addresses")
    return FlowSettings(
        kafka=kafka_settings(args),
        redis=redis_settings(args),
        reader=reader_config(args, exit_at_end=args.exit_at_end),
        redis_ttl_s=max(args.redis_ttl // 1000, 1),
    )


def check_services(settings: FlowSettings) -> None:
    """Fail at start, with what to fix, if Kafka, the input topic or Redis is missing."""
    admin = wait_for_kafka(settings.kafka)
    partitions = 1
    for flag, topic in (
        ("--playback-topic", settings.kafka.playback_topic),
        ("--signup-topic", settings.kafka.signup_topic),
    ):
        count = topic_partitions(settings.kafka, topic, admin)
        if count is None:
            raise ConfigError(
                f"the topic {topic!r} ({flag}) does not exist on {settings.kafka.bootstrap}. Create it, or produce "
                "events with `streampulse loadgen`, which creates its topics."
            )
        partitions = max(partitions, count)
    ensure_topics(settings.kafka, {settings.kafka.dead_letter_topic: partitions}, admin)
    try:
        connect(settings.redis).ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"Redis at {settings.redis.display_url} is not reachable ({exc}). Check --redis-url / STREAMPULSE_REDIS_URL."
        ) from None


def run(args: argparse.Namespace) -> int:
    """Run the dataflow until stopped, or to the end of the input with --exit-at-end."""
    settings = flow_settings(args)
    check_services(settings)
    # Every event allocates a few short-lived key tuples; the default gen-0 threshold (700) would run the
    # collector every few hundred events. Long-lived state is frozen out of its scans.
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
    server = serve_metrics(args.metrics_host, args.metrics_port)
    log.info(
        "streampulse run: Kafka %s, Redis %s (namespace %s), /metrics on %s:%d",
        settings.kafka.bootstrap,
        settings.redis.display_url,
        settings.redis.namespace,
        args.metrics_host,
        server.port,
    )
    try:
        cli_main(  # type: ignore[no-untyped-call]
            build_dataflow(settings),
            workers_per_process=args.workers,
            process_id=args.process_id,
            addresses=args.addresses.split(";") if args.addresses else None,
            epoch_interval=timedelta(seconds=10),
        )
    finally:
        server.stop()
    return 0
