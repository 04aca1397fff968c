"""`streampulse replay`: the live analytics again over a past event-time range, into a namespace of its own.

The replay runs the live dataflow (streampulse/dataflow.py) with the same folding
code, reading either Kafka from a timestamp or the Parquet archive, and
writes only the windows that lie wholly inside `[--from, --to)`. What it
reads around the range, and why the result equals the live run's, is in
flows/sources/replay_range.py; docs/replay-and-archive.md says it for users.

The namespace is checked before anything is written: never the live one
(`--live-namespace`), and never one holding windows that no replay wrote (a
Redis hash `sp:{ns}:replay` marks a replay's namespace).

The anomaly detectors start from the live run's saved state valid through the
newest time at or before `--from` (flows/anomaly/warm_start.py), or cold when
there is none; the replay says which in its log and in its marker hash.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from connect.kafka_admin import wait_for_kafka
from flows.fold.partition_aggregator import Folder
from flows.sources.archive import ArchiveEventSource
from flows.sources.reader_config import ReaderConfig
from flows.sources.replay_range import ReplayRange, replay_range, shared_progress
from schemas.archive_layout import committed_chunks
from settings.errors import ConfigError
from sinks.redis_layout import index_key, replay_marker_key
from sinks.redis_sink import connect
from streampulse.archive import add_archive_dir_option
from streampulse.configure import add_flow_options, add_kafka_options, add_redis_options
from streampulse.dataflow import FlowSettings, SourceFactory
from streampulse.options import add_option, duration_ms
from streampulse.replay_detector import detector_start
from streampulse.run import (
    add_cluster_options,
    add_metrics_options,
    check_input_topics,
    check_redis,
    execute,
    flow_settings,
    process_settings,
)

log = logging.getLogger(__name__)

# Epoch milliseconds below this (1973-03-03) are almost surely epoch seconds typed by mistake.
_SMALLEST_PLAUSIBLE_MS = 100_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PACE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)


def time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time with a zone (`2026-11-23T10:00:00Z`)."""
    stripped = text.strip()
    if stripped.isdigit():
        value = int(stripped)
        if value < _SMALLEST_PLAUSIBLE_MS:
            raise argparse.ArgumentTypeError(
                f"{text!r} looks like epoch seconds; give epoch milliseconds ({value}000) or an ISO 8601 time"
            )
        return value
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time (e.g. 2026-11-23T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add one, e.g. a trailing Z for UTC")
    # Integer arithmetic: a float timestamp times 1000 can land a millisecond short.
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def pace(text: str) -> float | None:
    """`max` (None: as fast as possible), `original` (1.0: event time at wall-clock speed) or `<N>x` (N)."""
    word = text.strip().lower()
    if word == "max":
        return None
    if word == "original":
        return 1.0
    match = _PACE.match(word)
    if match is None or not float(match[1]) > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pace; use max, original or a speed-up such as 10x")
    return float(match[1])


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `replay` subcommand."""
    parser = subparsers.add_parser(
        "replay",
        help="re-run the analytics over a past time range into a separate namespace",
        description="Re-run the flows over the events whose event time is in [--from, --to), read from Kafka (by "
        "timestamp) or from the Parquet archive, and write the windows inside the range to --namespace; exits at "
        "the end like `run --exit-at-end`.",
    )
    group = parser.add_argument_group("replay")
    add_option(
        group,
        "--from",
        dest="from_ms",
        type=time_ms,
        metavar="TIME",
        help="start of the range: epoch ms or ISO 8601 (UTC)",
    )
    add_option(
        group,
        "--to",
        dest="to_ms",
        type=time_ms,
        metavar="TIME",
        help="end of the range (excluded): epoch ms or ISO 8601",
    )
    add_option(group, "--source", default="kafka", choices=("kafka", "archive"), help="where to read the events")
    add_archive_dir_option(group)
    add_option(
        group,
        "--pace",
        type=pace,
        default="max",
        help="max (as fast as possible), original (event time at wall-clock speed) or Nx (N times faster)",
    )
    add_option(
        group,
        "--timestamp-skew",
        type=duration_ms,
        default="1h",
        help="how far an event's time may be ahead of its Kafka record timestamp; the seek goes this much earlier",
    )
    add_option(group, "--live-namespace", default="live", help="the live run's namespace, which a replay never writes")
    add_option(
        group,
        "--detector-start",
        default="live",
        choices=("live", "cold"),
        help="start the anomaly detectors from the live run's newest saved state at or before --from (live; cold "
        "when there is none), or cold (learning from the range alone)",
    )
    add_metrics_options(parser, default_port="0")
    add_cluster_options(parser)
    add_kafka_options(parser)
    add_redis_options(parser)
    add_flow_options(parser)
    parser.set_defaults(func=run)


def replay_of(args: argparse.Namespace, reader: ReaderConfig, namespace: str, now_ms: int) -> ReplayRange:
    """The validated range of the replay; raises ConfigError saying what to fix."""
    if args.from_ms is None or args.to_ms is None:
        raise ConfigError("give the range to replay: --from TIME --to TIME (or STREAMPULSE_FROM / STREAMPULSE_TO)")
    if args.to_ms <= args.from_ms:
        raise ConfigError(f"--to ({_iso(args.to_ms)}) must be after --from ({_iso(args.from_ms)})")
    if args.from_ms >= now_ms:
        raise ConfigError(f"--from ({_iso(args.from_ms)}) is in the future: there is nothing to replay yet")
    if namespace == args.live_namespace:
        raise ConfigError(
            f"--namespace {namespace!r} is the live namespace: a replay writes to a namespace of its own, "
            "e.g. --namespace replay-incident-42 (the live one is set by --live-namespace)"
        )
    return replay_range(
        args.from_ms,
        args.to_ms,
        reader.windows,
        reader.session_timeout_ms,
        reader.signup_timeout_ms,
        args.timestamp_skew,
        args.pace,
    )


def claim_namespace(client: redis.Redis, settings: FlowSettings, replay: ReplayRange, source: str) -> None:
    """Mark the namespace as this replay's, or raise ConfigError if it holds windows no replay wrote."""
    namespace = settings.redis.namespace
    marker = replay_marker_key(namespace)
    written = [res for res in settings.reader.windows.resolutions if client.exists(index_key(namespace, res))]
    if written and not client.exists(marker):
        raise ConfigError(
            f"--namespace {namespace!r} holds windows that no replay wrote (a live run's?): refusing to write "
            "into it. Pick a fresh namespace for the replay."
        )
    client.hset(
        marker,
        mapping={
            "from_ms": replay.from_ms,
            "to_ms": replay.to_ms,
            "source": source,
            "started_ms": int(time.time() * 1000),
            "state": "running",
        },
    )
    client.expire(marker, settings.redis_ttl_s)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _archive_factory(root: Path) -> SourceFactory:
    def make(
        topics: Mapping[str, str], folders: Mapping[str, Callable[[], Folder]], reader: ReaderConfig
    ) -> ArchiveEventSource:
        return ArchiveEventSource(root, topics, folders, reader)

    return make


def _describe(replay: ReplayRange, settings: FlowSettings, source: str) -> None:
    windows = settings.reader.windows
    log.info(
        "replaying event time [%s, %s) from %s into namespace %s at pace %s; reading from %s (playback) and %s "
        "(sign-ups) of event time for state%s, each partition stopping at its first event past %s",
        _iso(replay.from_ms),
        _iso(replay.to_ms),
        source,
        settings.redis.namespace,
        "max" if replay.pace is None else f"{replay.pace:g}x",
        _iso(replay.low_ms("playback")),
        _iso(replay.low_ms("signup")),
        f" (Kafka records from {replay.timestamp_skew_ms} ms earlier)" if source == "kafka" else "",
        _iso(replay.stop_ms),
    )
    for name, size in windows.resolutions.items():
        if replay.from_ms % size or replay.to_ms % size:
            log.warning(
                "--from/--to are not on %s boundaries: the %s windows straddling them hold only part of their "
                "events and are not written",
                name,
                name,
            )


def run(args: argparse.Namespace) -> int:
    """Validate, claim the namespace, run the replay's dataflow to its end, report."""
    # The margins depend on the window settings, so those are validated first.
    # A replay ends like --exit-at-end: at the end of what it reads, every window finalized.
    settings = flow_settings(args, exit_at_end=True)
    replay = replay_of(args, settings.reader, settings.redis.namespace, int(time.time() * 1000))
    settings = replace(settings, reader=replace(settings.reader, replay=replay))
    source_factory: SourceFactory | None = None
    if args.source == "archive":
        root = Path(args.archive_dir)
        topics = (settings.kafka.playback_topic, settings.kafka.signup_topic)
        if not root.is_dir() or not any(committed_chunks(root, topic) for topic in topics):
            raise ConfigError(
                f"--archive-dir {root} holds no archive of {' or '.join(topics)}: write one with "
                "`streampulse archive`, or check --archive-dir and the topic names"
            )
        source_factory = _archive_factory(root)
    else:
        check_input_topics(settings.kafka, wait_for_kafka(settings.kafka))
    check_redis(settings)
    client = connect(settings.redis)
    claim_namespace(client, settings, replay, args.source)
    _describe(replay, settings, args.source)
    warm, started = detector_start(client, args.live_namespace, args.detector_start, replay.from_ms, settings.shards)
    log.info("%s", started)
    # Where a user looks after the run: `HGETALL sp:{namespace}:replay`.
    client.hset(
        replay_marker_key(settings.redis.namespace),
        mapping={"detector_start": started, "detector_state_through_ms": -1 if warm is None else warm.through_ms},
    )
    settings = replace(settings, warm_start=warm)
    code = execute(settings, process_settings(args), source_factory, job="replay")
    client.hset(
        replay_marker_key(settings.redis.namespace), mapping={"state": "done", "finished_ms": int(time.time() * 1000)}
    )
    print(shared_progress(replay).summary(), file=sys.stderr, flush=True)
    # Said again at the end, beside the summary, for whoever reads the replay's anomalies from its output.
    print(f"replay: {started}", file=sys.stderr, flush=True)
    return code
