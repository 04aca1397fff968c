"""`streampulse run`: the flows against the configured Kafka and Redis."""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

import redis
from bytewax._bytewax import cli_main
from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from confluent_kafka.admin import AdminClient

from connect.kafka_admin import ensure_topics, topic_partitions, wait_for_kafka
from settings.errors import ConfigError
from settings.kafka import KafkaSettings
from sinks.prometheus import serve_metrics
from sinks.redis_sink import connect, unreachable
from streampulse.clean_stop import interrupted, stop_between_steps
from streampulse.cluster_join import wait_for_earlier_peers
from streampulse.configure import (
    add_flow_options,
    add_kafka_options,
    add_redis_options,
    kafka_settings,
    reader_config,
    redis_settings,
)
from streampulse.dataflow import FlowSettings, SourceFactory, build_dataflow
from streampulse.options import add_flag, add_option, duration_ms, port, positive_duration_ms, positive_int

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
    add_cluster_options(parser)
    add_recovery_options(parser)
    add_detector_state_options(parser)
    add_kafka_options(parser)
    add_redis_options(parser)
    add_flow_options(parser)
    parser.set_defaults(func=run)


def add_detector_state_options(parser: argparse.ArgumentParser) -> None:
    """How often the live anomaly detectors leave their state for replays to start from, and how many are kept."""
    group = parser.add_argument_group("anomaly detector state (for replays)")
    add_option(
        group,
        "--detector-state-interval",
        type=duration_ms,
        default="1h",
        help="save the anomaly detectors' state to Redis every this much event time, for a replay to start from "
        "(a whole multiple of --coarse-window; 0 = never)",
    )
    add_option(
        group,
        "--detector-states-kept",
        type=positive_int,
        default="24",
        help="how many saved detector states Redis keeps (the newest, at least 2; each about 0.5 MB per 735 series)",
    )


def add_metrics_options(parser: argparse.ArgumentParser, default_port: str = "9464") -> None:
    """Where /metrics is served."""
    group = parser.add_argument_group("metrics endpoint")
    add_option(group, "--metrics-host", default="127.0.0.1", help="address /metrics binds to")
    add_option(group, "--metrics-port", type=port, default=default_port, help="port of /metrics (0 = any free port)")


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Bytewax scale-out: workers in this process, and the other processes of a cluster."""
    cluster = parser.add_argument_group("scale-out (bytewax cluster)")
    add_option(
        cluster,
        "--workers",
        type=positive_int,
        default="1",
        help="worker threads in this process; they share one Python interpreter (its GIL), so more cores need "
        "more processes (--process-id/--addresses), not more workers",
    )
    add_option(cluster, "--process-id", type=int, help="this process's index in the cluster (with --addresses)")
    add_option(cluster, "--addresses", help="host:port of every process of the cluster, separated by ';'")


def add_recovery_options(parser: argparse.ArgumentParser) -> None:
    """Crash recovery: where bytewax keeps its snapshots, and how often it takes them."""
    group = parser.add_argument_group("crash recovery (bytewax snapshots)")
    add_option(
        group,
        "--recovery-dir",
        help="directory of the state snapshots; a restart with the same directory resumes where the last snapshot "
        "left off (offsets, duplicate ids, open sessions and windows). One per flow, on persistent storage; shared by "
        "the processes of a cluster. Without it a restart starts afresh.",
    )
    add_option(
        group,
        "--snapshot-interval",
        type=positive_duration_ms,
        default="10s",
        help="how often state is snapshotted: a restart re-reads at most this much",
    )


@dataclass(frozen=True)
class ProcessSettings:
    """This process's part in running a dataflow: where /metrics is served, its place in a cluster, snapshots."""

    metrics_host: str
    metrics_port: int
    workers: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] | None = None
    snapshot_interval_ms: int = 10_000
    recovery: RecoveryConfig | None = None


def process_settings(args: argparse.Namespace) -> ProcessSettings:
    """Validated process settings from parsed options (the recovery store created on first use)."""
    if (args.process_id is None) != (args.addresses is None):
        raise ConfigError("--process-id and --addresses go together: give both to run as part of a cluster")
    addresses = tuple(args.addresses.split(";")) if args.addresses else None
    if addresses is not None and not 0 <= args.process_id < len(addresses):
        raise ConfigError(f"--process-id {args.process_id} is not an index into --addresses")
    return ProcessSettings(
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        workers=args.workers,
        process_id=args.process_id,
        addresses=addresses,
        snapshot_interval_ms=getattr(args, "snapshot_interval", 10_000),
        recovery=recovery_config(
            getattr(args, "recovery_dir", None), args.process_id, len(addresses or ("",)), shard_count(args)
        ),
    )


def shard_count(args: argparse.Namespace) -> int:
    """The cluster's window-state shards: one per worker of every process (flows/sharding.py)."""
    addresses = getattr(args, "addresses", None)
    return int(getattr(args, "workers", 1)) * (len(addresses.split(";")) if addresses else 1)


def recovery_config(
    recovery_dir: str | None, process_id: int | None, processes: int, shards: int = 1
) -> RecoveryConfig | None:
    """Bytewax's recovery settings, creating the snapshot store on first use; None without --recovery-dir.

    The store remembers how many window-state shards wrote it: a restart with another count is refused, since a
    cell's shard depends on the count (flows/sharding.py) and bytewax would resume each shard's state as it was.
    """
    if recovery_dir is None:
        return None
    directory = Path(recovery_dir)
    marker = directory / CLUSTER_MARKER
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not any(directory.glob("part-*.sqlite3")):
            if process_id in (None, 0):
                # The marker first: a process that sees the store sees what wrote it.
                marker.write_text(json.dumps({"shards": shards}) + "\n", encoding="utf-8")
                init_db_dir(directory, processes)  # type: ignore[no-untyped-call]
            else:
                # Process 0 creates the store; the others wait for it rather than race it.
                deadline = time.monotonic() + 60
                while not any(directory.glob("part-*.sqlite3")):
                    if time.monotonic() > deadline:
                        raise ConfigError(f"--recovery-dir {directory}: process 0 did not create the snapshot store")
                    time.sleep(0.2)
        _check_shards(directory, marker, shards)
    except OSError as exc:
        raise ConfigError(f"--recovery-dir {directory} is not usable ({exc}): give a writable directory") from None
    return RecoveryConfig(directory)  # type: ignore[no-untyped-call]


CLUSTER_MARKER = "streampulse-cluster.json"


def _check_shards(directory: Path, marker: Path, shards: int) -> None:
    fresh_start = (
        f"or move {directory} away to start afresh (the flow then re-reads its topics from the earliest offset "
        "and rewrites every window in Redis with the same absolute values)"
    )
    if not marker.exists():
        raise ConfigError(
            f"--recovery-dir {directory} holds snapshots of a streampulse from before the window state was sharded "
            f"(one window store); this version cannot resume them: {fresh_start}."
        )
    written_by = int(json.loads(marker.read_text(encoding="utf-8"))["shards"])
    if written_by != shards:
        raise ConfigError(
            f"--recovery-dir {directory} holds the snapshots of a cluster of {written_by} workers in all "
            f"(processes x --workers); this run has {shards}. Each worker owns a shard of the window state, so "
            f"restart with {written_by} workers in all, {fresh_start}."
        )


def flow_settings(args: argparse.Namespace, exit_at_end: bool) -> FlowSettings:
    """Validated settings of the flow; raises ConfigError saying what to fix."""
    reader = reader_config(args, exit_at_end=exit_at_end)
    return FlowSettings(
        kafka=kafka_settings(args),
        redis=redis_settings(args),
        reader=reader,
        redis_ttl_s=max(args.redis_ttl // 1000, 1),
        shards=shard_count(args),
        process=getattr(args, "process_id", None) or 0,
        # Only `run` has them: a replay saves no detector state.
        detector_state_interval_ms=detector_state_interval(
            getattr(args, "detector_state_interval", 0), reader.windows.coarse_ms
        ),
        detector_states_kept=detector_states_kept(getattr(args, "detector_states_kept", 24)),
    )


def detector_states_kept(kept: int) -> int:
    """The validated --detector-states-kept; raises ConfigError saying what to fix."""
    if kept < 2:
        # The shards write a new state's parts one by one: with one kept, the whole previous state would be gone
        # before the new one is whole, and a replay starting then would find none.
        raise ConfigError(f"--detector-states-kept ({kept}) must be at least 2, so a whole state is always kept")
    return kept


def detector_state_interval(interval_ms: int, coarse_ms: int) -> int | None:
    """The validated --detector-state-interval (None: 0, never); raises ConfigError saying what to fix."""
    if interval_ms == 0:
        return None
    if interval_ms % coarse_ms:
        raise ConfigError(
            f"--detector-state-interval ({interval_ms} ms) must be a whole multiple of --coarse-window "
            f"({coarse_ms} ms), so a replay aligned to coarse windows can start exactly at a saved state: e.g. 1h"
        )
    return interval_ms


def check_services(settings: FlowSettings) -> None:
    """Fail at start, with what to fix, if Kafka, the input topic or Redis is missing."""
    admin = wait_for_kafka(settings.kafka)
    partitions = check_input_topics(settings.kafka, admin)
    # One partition for anomalies: they are few, and one partition keeps them in order for a consumer.
    topics = {settings.kafka.dead_letter_topic: partitions, settings.kafka.anomalies_topic: 1}
    ensure_topics(settings.kafka, topics, admin)
    check_redis(settings)


def check_input_topics(kafka: KafkaSettings, admin: AdminClient) -> int:
    """Fail, with what to fix, if an input topic is missing; return the largest partition count."""
    partitions = 1
    for flag, topic in (("--playback-topic", kafka.playback_topic), ("--signup-topic", kafka.signup_topic)):
        count = topic_partitions(kafka, topic, admin)
        if count is None:
            raise ConfigError(
                f"the topic {topic!r} ({flag}) does not exist on {kafka.bootstrap}. Create it, or produce "
                "events with `streampulse loadgen`, which creates its topics."
            )
        partitions = max(partitions, count)
    return partitions


def check_redis(settings: FlowSettings) -> None:
    """Fail at start, with what to fix, if Redis is not reachable."""
    try:
        connect(settings.redis).ping()
    except redis.RedisError as exc:
        raise ConfigError(unreachable(settings.redis, exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run the dataflow until stopped, or to the end of the input with --exit-at-end."""
    settings = flow_settings(args, exit_at_end=args.exit_at_end)
    process = process_settings(args)
    check_services(settings)
    return execute(settings, process)


def _this_frame() -> FrameType:
    """The caller's frame: the one Ctrl-C may interrupt."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None  # CPython always has frames
    return frame.f_back


def execute(
    settings: FlowSettings, process: ProcessSettings, source_factory: SourceFactory | None = None, job: str = "run"
) -> int:
    """Serve /metrics and run the dataflow of `settings` (from Kafka, or `source_factory`'s source) to its end."""
    # Every event allocates a few short-lived key tuples; the default gen-0 threshold (700) would run the
    # collector every few hundred events. Long-lived state is frozen out of its scans.
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
    server = serve_metrics(process.metrics_host, process.metrics_port)
    log.info(
        "streampulse %s: Kafka %s, Redis %s (namespace %s), /metrics on %s:%d",
        job,
        settings.kafka.bootstrap,
        settings.redis.display_url,
        settings.redis.namespace,
        process.metrics_host,
        server.port,
    )
    try:
        # Ctrl-C lands between bytewax steps (see streampulse/clean_stop.py): no panic, no traceback.
        with stop_between_steps(_this_frame()):
            if process.addresses and process.process_id:
                wait_for_earlier_peers(process.addresses, process.process_id)
            cli_main(  # type: ignore[no-untyped-call]
                build_dataflow(settings, source_factory),
                workers_per_process=process.workers,
                process_id=process.process_id,
                addresses=list(process.addresses) if process.addresses else None,
                # Snapshots are taken at the end of each epoch.
                epoch_interval=timedelta(milliseconds=process.snapshot_interval_ms),
                recovery_config=process.recovery,
            )
    except (KeyboardInterrupt, BytewaxRuntimeError) as exc:
        # Bytewax reports Ctrl-C as "signal received" once every worker has finished its step.
        if not interrupted(exc):
            raise
        log.info(
            "streampulse %s: stopped by Ctrl-C; open windows stay partial%s",
            job,
            " until a restart with the same --recovery-dir resumes them" if process.recovery is not None else "",
        )
    finally:
        server.stop()
    return 0
