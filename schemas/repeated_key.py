"""The repeated-key check: a JSON object that gives one key twice is bad input (`duplicate_key`).

JSON leaves a repeated key's meaning open and msgspec keeps the last one
silently, so the decoder asks this module whenever a message has more colons
than its event has keys: a cheap generic parse settles most such messages
(unknown extra fields), a full parse that sees every key decides the rest.
"""

from __future__ import annotations

import json
from typing import Any, Final

import msgspec

from schemas.rejection import Rejection, short_repr

__all__ = ["repeated_key"]

# Parses any JSON into builtins: to count an object's distinct keys.
_GENERIC_JSON: Final = msgspec.json.Decoder()


class _RepeatedKeyError(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for key, _value in pairs:
        if key in seen:
            raise _RepeatedKeyError(key)
        seen.add(key)


def _ignore(_text: str) -> None:
    return None


def repeated_key(raw: bytes, colons: int | None = None) -> Rejection | None:
    """A `duplicate_key` rejection if some object of valid JSON `raw` has a key twice, else None.

    JSON leaves a repeated key's meaning open and parsers differ (first wins,
    last wins, error), so an event that says `"country":"ZY", ...,
    "country":"ZZ"` is rejected rather than counted under whichever value
    this parser keeps. Cheap test first: a colon follows every key, so no
    more colons than distinct top-level keys means no key repeats anywhere
    (an event with unknown fields usually ends there); else a full parse that
    sees every key of every object decides. `colons` is `raw.count(b":")`,
    if the caller has counted already.
    """
    try:
        distinct = _GENERIC_JSON.decode(raw)
        if isinstance(distinct, dict) and len(distinct) == (raw.count(b":") if colons is None else colons):
            return None
    except (msgspec.DecodeError, RecursionError):
        pass  # decided by the full parse below
    try:
        # Numbers are not built: only keys matter, and huge integers would hit Python's digit limit.
        json.loads(raw, object_pairs_hook=_unique_pairs, parse_int=_ignore, parse_float=_ignore, parse_constant=_ignore)
    except _RepeatedKeyError as exc:
        return Rejection("duplicate_key", f"key {short_repr(exc.args[0])} appears more than once in one object")
    except RecursionError:
        return Rejection("malformed_json", "JSON nested too deep to decode")
    except ValueError:  # msgspec read it as valid JSON: nothing to reject it for here
        return None
    return None
