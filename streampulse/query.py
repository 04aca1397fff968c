"""`streampulse query`: aggregates read back from Redis, as a table or JSON lines."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

import redis

from flows.windows.catalog import METRICS
from settings.errors import ConfigError
from sinks.redis_query import QueryError, Row, query
from sinks.redis_sink import connect, unreachable
from streampulse.configure import add_redis_options, redis_settings
from streampulse.options import add_option, non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `query` subcommand."""
    parser = subparsers.add_parser(
        "query",
        help="read a metric back from Redis",
        description="Read a metric per window from Redis, rolled up over the dimensions not in --by.",
    )
    parser.add_argument("metric", help=f"metric id: {', '.join(METRICS)}")
    add_option(parser, "--resolution", default="10s", help="window resolution to read (e.g. 10s, 1m)")
    add_option(parser, "--from", dest="from_ms", type=non_negative_int, help="first window start, epoch ms")
    add_option(parser, "--to", dest="to_ms", type=non_negative_int, help="windows starting before this, epoch ms")
    add_option(parser, "--by", default="", help="dimensions to group by, comma-separated (e.g. country,device_type)")
    parser.add_argument(
        "--where", action="append", default=[], metavar="DIM=VALUE", help="keep only this dimension value (repeatable)"
    )
    add_option(parser, "--format", default="table", choices=("table", "json"), help="output format")
    add_option(parser, "--top", type=positive_int, default="10", help="how many titles top_titles lists per window")
    add_redis_options(parser)
    parser.set_defaults(func=run)


def _where(items: list[str]) -> dict[str, str]:
    where: dict[str, str] = {}
    for item in items:
        dim, sep, value = item.partition("=")
        if not sep or not dim:
            raise ConfigError(f"--where {item!r}: write DIM=VALUE, e.g. --where country=BR")
        where[dim.strip()] = value.strip()
    return where


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_table(rows: list[Row], by: list[str]) -> str:
    """Rows as an aligned text table."""
    extra = [d for d in (rows[0].dims if rows else {}) if d not in by]
    header = ["window_start (UTC)", "window_end", *by, *extra, "value", "final"]
    lines = [header]
    for row in rows:
        value = "-" if row.value is None else (f"{row.value:.4g}" if isinstance(row.value, float) else str(row.value))
        lines.append(
            [
                _iso(row.window_start_ms),
                _iso(row.window_end_ms)[11:],
                *(row.dims[d] for d in by),
                *(row.dims[d] for d in extra),
                value,
                "yes" if row.final else "partial",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def run(args: argparse.Namespace) -> int:
    """Print the metric's windows."""
    settings = redis_settings(args)
    by = [d.strip() for d in args.by.split(",") if d.strip()]
    try:
        rows = query(
            connect(settings),
            settings.namespace,
            args.metric,
            args.resolution,
            args.from_ms,
            args.to_ms,
            by,
            _where(args.where),
            top_n=args.top,
        )
    except QueryError as exc:
        raise ConfigError(str(exc)) from None
    except redis.RedisError as exc:
        raise ConfigError(unreachable(settings, exc)) from None
    if args.format == "json":
        out = sys.stdout.buffer
        for row in rows:
            out.write(row.as_json() + b"\n")
        out.flush()
    else:
        print(format_table(rows, by) if rows else "no windows stored for this metric and range")
    return 0
