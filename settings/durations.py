"""Durations as people write them (`500ms`, `10s`, `1m`, `2h`, `1d`), in integer milliseconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """Parse `250ms`, `10s`, `1m`, `2h`, `1d` (a bare number is seconds) into milliseconds; ValueError says how."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 10s, 1m, 2h")
    number, unit = match.groups()
    return round(float(number) * _UNIT_MS[unit or "s"])
