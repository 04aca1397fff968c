"""`streampulse`: one command, a subcommand per job (demo, run, loadgen, query, archive, replay)."""

from __future__ import annotations

import argparse
import logging
import sys

from streampulse.options import add_option
from streampulse.settings import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; options fall back to STREAMPULSE_* environment variables."""
    # Imported here so `streampulse --help` stays fast and one broken subcommand cannot hide the others' help.
    from loadgen import cli as loadgen_cli
    from streampulse import archive, demo, query, replay, run

    parser = argparse.ArgumentParser(
        prog="streampulse",
        description="Real-time analytics for a video-streaming service: Kafka -> bytewax -> Redis and Prometheus.",
    )
    add_option(
        parser,
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="how much to log on stderr",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(subparsers)
    run.register(subparsers)
    loadgen_cli.register(subparsers)
    query.register(subparsers)
    archive.register(subparsers)
    replay.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `streampulse` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        parser.exit(2, f"streampulse {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
