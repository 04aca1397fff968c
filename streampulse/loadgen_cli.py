"""`streampulse loadgen`: realistic playback and sign-up traffic, to Kafka or to files, with a ground truth.

    streampulse loadgen --seed 7 --events 100000 --out events.jsonl --truth truth.json
    streampulse loadgen --mode realtime --rate 2000 --scenario cdn-outage-br      # to Kafka
    streampulse loadgen --span 1d --rate 200 --out day.parquet                     # day.playback.parquet, ...

Every option also reads `STREAMPULSE_<OPTION>` (e.g. STREAMPULSE_SEED, STREAMPULSE_RATE).
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from loadgen.config import DEFAULT_SPAN_MS, FaultConfig, LoadgenConfig, ModelParams
from loadgen.diurnal import DAY_MS
from loadgen.incidents import Incident, IncidentError, load_incidents, load_scenario, scenario_names
from loadgen.realism import RealismError, RealismParams, scenario_realism
from loadgen.runner import Progress, now_ms
from loadgen.runner import run as run_generator
from loadgen.sinks import JsonlSink, KafkaSink, ParquetSink, Sink, SinkError
from settings.errors import ConfigError
from streampulse.configure import add_kafka_options, kafka_settings
from streampulse.options import (
    add_flag,
    add_option,
    non_negative_int,
    positive_duration_ms,
    positive_float,
    positive_int,
)

PROG = "streampulse loadgen"


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction from 0 to 1")
    return value


def epoch_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO 8601 time with a zone (`2024-05-01T00:00:00Z`)."""
    stripped = text.strip()
    if stripped.isdigit():
        return int(stripped)
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch ms nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a time zone, e.g. a trailing Z")
    return int(parsed.timestamp() * 1000)


def window_list(text: str) -> tuple[int, ...]:
    """`10s,1m` -> (10000, 60000)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one window, e.g. 10s,1m")
    return tuple(sorted({positive_duration_ms(p) for p in parts}))


def _scenario(text: str) -> str:
    names = scenario_names()
    if text not in names:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scenario; available: {', '.join(names)}")
    return text


def register(subparsers: Any) -> None:
    """Add the `loadgen` subcommand to the `streampulse` command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "loadgen",
        help="generate realistic playback and sign-up events (to Kafka or files) with a ground truth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `streampulse loadgen` (also used by tests to build a parser)."""
    gen = parser.add_argument_group("what to generate")
    add_option(gen, "--seed", type=int, default=1, help="random seed; same seed and options -> same output")
    add_option(gen, "--events", type=positive_int, help="stop after this many distinct valid events")
    add_option(
        gen,
        "--mode",
        default="simulated",
        choices=("simulated", "realtime"),
        help="simulated: event times span --span from --start, as fast as possible; "
        "realtime: event times are the wall clock, paced at --rate",
    )
    add_option(
        gen,
        "--rate",
        type=positive_float,
        help="mean events per second over a day (the diurnal curve moves it up and down); default 1000 "
        "(simulated with --events: just enough to fit them in --span)",
    )
    add_option(
        gen,
        "--start",
        type=epoch_ms,
        help="simulated: first event time, epoch ms or ISO 8601; default: the UTC midnight that ends --span "
        "at or before now (so the same command gives the same bytes all day)",
    )
    add_option(gen, "--span", type=positive_duration_ms, help="event time to cover, e.g. 1h, 1d; simulated default 1d")
    add_flag(gen, "--flat", help="no diurnal curve: the same rate at every hour")
    add_flag(gen, "--cold-start", help="start with no session in progress (default: sessions already playing)")
    add_option(gen, "--heartbeat-interval", type=positive_duration_ms, default="30s", help="heartbeat period")
    add_option(
        gen,
        "--session-timeout",
        type=positive_duration_ms,
        help="silence after which a session no longer counts as concurrent (truth); default 2 x heartbeat",
    )
    add_option(gen, "--accounts", type=positive_int, default=100_000, help="size of the account population")
    add_option(gen, "--titles", type=positive_int, default=5_000, help="catalogue size")
    add_option(gen, "--zipf-s", type=positive_float, default=1.0, help="Zipf exponent of title popularity")
    add_option(gen, "--signup-share", type=fraction, default=0.03, help="sign-up funnels per playback session")

    faults = parser.add_argument_group("delivery faults (all off by default)")
    add_option(faults, "--jitter-ms", type=non_negative_int, default=0, help="deliver out of order within this bound")
    add_option(faults, "--late-fraction", type=fraction, default=0.0, help="fraction of events delivered late")
    add_option(faults, "--late-by-ms", type=non_negative_int, default=300_000, help="how late the late events are")
    add_option(faults, "--duplicate-fraction", type=fraction, default=0.0, help="fraction of events delivered twice")
    add_option(faults, "--duplicate-delay-ms", type=non_negative_int, default=2_000, help="a copy follows within this")
    add_option(
        faults,
        "--malformed-fraction",
        type=fraction,
        default=0.0,
        help="malformed messages per valid event, cycling through every kind the decoder rejects",
    )

    real = parser.add_argument_group(
        "realistic traffic (all off by default; a --scenario may set them, these flags win)"
    )
    add_option(
        real,
        "--dispersion",
        type=non_negative_float,
        help="overdispersion d: each country x device type's session rate x a gamma(1/d^2, mean 1) factor "
        "redrawn every --dispersion-every (variance of a window's count: mean + d^2 mean^2); e.g. 0.2",
    )
    add_option(real, "--dispersion-every", type=positive_duration_ms, help="how often the factor is redrawn; 10s")
    add_option(
        real, "--peak-trough", type=positive_float, help="each country's daily peak/trough ratio (real: 5-10); e.g. 8"
    )
    add_option(real, "--weekend-boost", type=positive_float, help="local Saturdays and Sundays x this against weekdays")
    add_option(
        real,
        "--top-of-hour-boost",
        type=non_negative_float,
        help="extra sessions in the first 2 minutes of every local hour (0.25: +25 %%)",
    )
    add_option(real, "--drift-per-day", type=float, help="session rate growth per day (0.03: +3 %% a day)")

    inc = parser.add_argument_group("incidents")
    add_option(inc, "--incidents", help="YAML or JSON file of scripted incidents (see loadgen/incidents.py)")
    add_option(inc, "--scenario", type=_scenario, help=f"a ready scenario: {', '.join(scenario_names())}")

    out = parser.add_argument_group("output")
    add_option(
        out,
        "--out",
        help="PATH.jsonl (one file; {family} in the path makes one per family) or PATH.parquet "
        "(PATH.playback.parquet and PATH.signup.parquet); default: produce to Kafka",
    )
    add_option(out, "--truth", help="write the ground truth (loadgen/TRUTH.md) to this JSON file")
    add_option(out, "--truth-windows", type=window_list, default="10s,1m", help="window lengths of the truth")

    add_kafka_options(parser)
    kafka = parser.add_argument_group("Kafka producer")
    add_option(kafka, "--linger-ms", type=non_negative_int, default=20, help="producer linger.ms")
    add_option(kafka, "--batch-size", type=positive_int, default=1_000_000, help="producer batch.size in bytes")
    add_option(
        kafka,
        "--compression",
        default="none",
        choices=("none", "gzip", "snappy", "lz4", "zstd"),
        help="producer compression.type",
    )
    add_option(
        kafka, "--kafka-timeout", type=positive_duration_ms, default="10s", help="how long to wait for the broker"
    )
    add_option(
        kafka, "--flush-timeout", type=positive_duration_ms, default="60s", help="how long to wait for the last acks"
    )
    add_option(
        kafka,
        "--kafka-timestamps",
        default="delivery",
        choices=("delivery", "now"),
        help="message timestamps: the (simulated) delivery time, or the producer's clock",
    )


REALISM_FLAGS: dict[str, str] = {
    "dispersion": "dispersion",
    "dispersion_every": "dispersion_every_ms",
    "peak_trough": "peak_trough",
    "weekend_boost": "weekend_boost",
    "top_of_hour_boost": "top_of_hour_boost",
    "drift_per_day": "drift_per_day",
}


def non_negative_float(text: str) -> float:
    """A number of 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def build_realism(args: argparse.Namespace) -> RealismParams:
    """The realistic-traffic options: the scenario's `traffic:` object, then every flag given; ConfigError."""
    try:
        values = scenario_realism(args.scenario) if args.scenario else {}
        values |= {field: getattr(args, arg) for arg, field in REALISM_FLAGS.items() if getattr(args, arg) is not None}
        return RealismParams(**values)
    except RealismError as exc:
        raise ConfigError(str(exc)) from None


def default_start_ms(span_ms: int, now: int) -> int:
    """The UTC midnight such that [start, start + span) ends at or before `now`."""
    return (now - span_ms) // DAY_MS * DAY_MS


def build_config(args: argparse.Namespace, now: int | None = None) -> LoadgenConfig:
    """The run's configuration from parsed options; raises ConfigError saying what to fix."""
    now = now if now is not None else now_ms()
    incidents: list[Incident] = []
    try:
        if args.scenario:
            incidents.extend(load_scenario(args.scenario))
        if args.incidents:
            incidents.extend(load_incidents(args.incidents))
    except IncidentError as exc:
        raise ConfigError(str(exc)) from None
    names = [i.name for i in incidents]
    if len(set(names)) != len(names):
        raise ConfigError("--scenario and --incidents define incidents with the same name")
    if args.mode == "realtime":
        if args.start is not None:
            raise ConfigError("--start is for --mode simulated; realtime event times are the wall clock")
        start = now
        span = args.span
    else:
        span = args.span if args.span is not None else DEFAULT_SPAN_MS
        start = args.start if args.start is not None else default_start_ms(span, now)
        if start + span > now + 3_600_000:
            print(
                f"{PROG}: warning: the span ends more than 1 h after now; consumers reject such events as future",
                file=sys.stderr,
            )
    try:
        params = ModelParams(
            heartbeat_interval_ms=args.heartbeat_interval,
            accounts=args.accounts,
            titles=args.titles,
            zipf_s=args.zipf_s,
            signup_share=args.signup_share,
            diurnal=not args.flat,
            warm_start=not args.cold_start,
        )
        faults = FaultConfig(
            jitter_ms=args.jitter_ms,
            late_fraction=args.late_fraction,
            late_by_ms=args.late_by_ms,
            duplicate_fraction=args.duplicate_fraction,
            duplicate_delay_ms=args.duplicate_delay_ms,
            malformed_fraction=args.malformed_fraction,
        )
        return LoadgenConfig(
            start_ms=start,
            seed=args.seed,
            mode=args.mode,
            events=args.events,
            span_ms=span,
            rate=args.rate,
            params=params,
            faults=faults,
            incidents=tuple(incidents),
            windows_ms=args.truth_windows,
            session_timeout_ms=args.session_timeout,
            realism=build_realism(args),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_sink(args: argparse.Namespace, config: LoadgenConfig) -> Sink:
    """The destination the options name; raises ConfigError or SinkError."""
    if args.out is None:
        return KafkaSink(
            kafka_settings(args),
            linger_ms=args.linger_ms,
            batch_size=args.batch_size,
            compression=args.compression,
            timeout_s=args.kafka_timeout / 1000,
            flush_timeout_s=args.flush_timeout / 1000,
            timestamps=args.kafka_timestamps,
        )
    suffix = Path(args.out.replace("{family}", "family")).suffix.lower()
    if suffix == ".jsonl":
        return JsonlSink(args.out)
    if suffix == ".parquet":
        if config.faults.malformed_fraction:
            raise ConfigError("malformed messages cannot be written to Parquet; drop --malformed-fraction")
        return ParquetSink(args.out)
    raise ConfigError(f"--out {args.out!r}: use a .jsonl or .parquet file, or no --out to produce to Kafka")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Run `streampulse loadgen`; returns the exit code (0 ok, 1 delivery failed, 2 bad options or no broker)."""
    try:
        config = build_config(args)
        sink = build_sink(args, config)
    except (ConfigError, SinkError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    progress = Progress(config)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        result = run_generator(config, sink, with_truth=args.truth is not None, progress=progress)
    except SinkError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.truth is not None and result.truth is not None:
        try:
            path = Path(args.truth)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(orjson.dumps(result.truth) + b"\n")
        except OSError as exc:
            print(f"{PROG}: error: cannot write --truth {args.truth}: {exc.strerror}", file=sys.stderr)
            return 2
    report = result.sink
    if "acked" in report and (report["failed"] or report["unconfirmed"]):
        print(
            f"{PROG}: error: {report['failed']} messages failed and {report['unconfirmed']} were not confirmed "
            f"by Kafka ({report['errors']})",
            file=sys.stderr,
        )
        return 1
    if progress.enabled:
        print(
            f"{PROG}: {result.valid_events:,} events ({result.messages:,} messages) in {result.elapsed_s:.1f} s",
            file=sys.stderr,
        )
    if result.interrupted and config.mode == "simulated":
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the load generator on its own (`python -m streampulse.loadgen_cli`), without the `streampulse` command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
