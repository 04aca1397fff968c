"""`streampulse top`: the live terminal view, from Redis alone (MISSION 4.5).

In a terminal it is full screen and redrawn about every second
(streampulse/top_live.py); when stdout is not a terminal, or with `--once`,
it prints one frame and exits: the same tables without colour, or with
`--format json` the frame as one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
import redis

from settings.errors import ConfigError
from sinks.redis_sink import connect
from streampulse.configure import add_redis_options, redis_settings
from streampulse.options import add_flag, add_option
from streampulse.top_frame import FILTER_DIMS, read_frame
from streampulse.top_view import ViewState


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `top` subcommand."""
    parser = subparsers.add_parser(
        "top",
        help="live terminal view of the metrics, anomalies and pipeline health, from Redis",
        description="Full-screen view redrawn every second from Redis alone: pipeline health, figures by country, "
        "open anomalies, the sign-up funnel. Keys: q quit, s sort, / filter, r resolution, ? help. "
        "Not in a terminal (or with --once) it prints one frame and exits.",
    )
    add_option(parser, "--resolution", default="10s", help="window resolution to show first (e.g. 10s, 1m)")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="DIM=VALUE",
        help=f"show only this {' or '.join(FILTER_DIMS)} (repeatable)",
    )
    add_flag(parser, "--once", help="print one frame and exit, even in a terminal")
    add_option(parser, "--format", default="table", choices=("table", "json"), help="one-frame output format")
    add_redis_options(parser)
    parser.set_defaults(func=run)


def parse_where(items: list[str]) -> dict[str, str]:
    """`--where` values as a filter; ConfigError saying what to write if one cannot be read."""
    where: dict[str, str] = {}
    for item in items:
        dim, sep, value = item.partition("=")
        dim, value = dim.strip(), value.strip()
        if not sep or dim not in FILTER_DIMS or not value:
            raise ConfigError(
                f"--where {item!r}: write DIM=VALUE with DIM one of {', '.join(FILTER_DIMS)}, e.g. country=BR"
            )
        where[dim] = value
    return where


def print_once(client: redis.Redis, namespace: str, state: ViewState, as_json: bool) -> int:
    """Print one frame; 1 if Redis could not be read."""
    frame = read_frame(client, namespace, state.resolution, state.where, time.time_ns() // 1_000_000)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(frame.to_dict()) + b"\n")
        sys.stdout.flush()
    else:
        from rich.console import Console

        from streampulse.top_view import screen

        Console(no_color=True, highlight=False, width=120, force_terminal=False).print(screen(frame, state))
    if frame.redis_error:
        print(f"streampulse top: Redis is not reachable ({frame.redis_error})", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """One frame, or the live view until `q`."""
    settings = redis_settings(args)
    state = ViewState(where=parse_where(args.where), resolution=args.resolution)
    client = connect(settings)
    if args.once or args.format == "json" or not (sys.stdout.isatty() and sys.stdin.isatty()):
        return print_once(client, settings.namespace, state, args.format == "json")
    from streampulse.top_live import run_live

    return run_live(client, settings.namespace, state)
