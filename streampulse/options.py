"""Command-line options that fall back to `STREAMPULSE_<OPTION>` environment variables.

Every option of every subcommand is declared through `add_option`/`add_flag`,
so the rule "flag, else environment variable, else default" holds everywhere
and `--help` names the variable. Values from either source go through the
same parser, so a bad environment variable stops the command at start with
the same message as a bad flag.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from settings.durations import parse_duration_ms

ENV_PREFIX = "STREAMPULSE_"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(flag: str) -> str:
    """`--kafka-bootstrap` -> `STREAMPULSE_KAFKA_BOOTSTRAP`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    help: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    secret: bool = False,
    **kwargs: Any,
) -> None:
    """Add `flag` whose default comes from its environment variable, if set.

    A `secret` option never shows its value in `--help`.
    """
    env = env_name(flag)
    from_env = os.environ.get(env)
    shown = "" if secret or default is None else f"; default: {default}"
    parser.add_argument(
        flag,
        # argparse runs `type` on string defaults, so environment values are validated like flags.
        default=from_env if from_env is not None else default,
        type=type,
        help=f"{help} [env: {env}{shown}]",
        **kwargs,
    )


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    help: str,
) -> None:
    """Add a boolean switch, also set by its environment variable (1/true/yes/on)."""
    env = env_name(flag)
    raw = os.environ.get(env)
    default = False
    if raw is not None:
        if raw.strip().lower() in _TRUE:
            default = True
        elif raw.strip().lower() not in _FALSE:
            raise SystemExit(f"streampulse: error: {env}={raw!r} is not a boolean; use 1/0, true/false, yes/no")
    parser.add_argument(flag, action="store_true", default=default, help=f"{help} [env: {env}]")


def _int_in(name: str, low: int, high: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {name} ({bound})")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


port = _int_in("a port number", 0, 65535)
positive_int = _int_in("a positive integer", 1, None)
non_negative_int = _int_in("a non-negative integer", 0, None)
# Within librdkafka's bounds on a producer's message.max.bytes (and room for a truncated dead letter's headers).
message_bytes = _int_in("a message size in bytes", 4096, 1_000_000_000)


def duration_ms(text: str) -> int:
    """Parse `250ms`, `10s`, `1m`, `2h`, `1d` (a bare number is seconds) into milliseconds."""
    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration_ms(text: str) -> int:
    """A duration that must be greater than zero, in milliseconds."""
    value = duration_ms(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    return value


def positive_float(text: str) -> float:
    """A number greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value
