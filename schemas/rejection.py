"""A rejection: why a message is bad input, as a bounded reason and a detail in words.

`REJECT_REASONS` is the fixed set of reasons (a safe Prometheus label, and
the table in docs/event-contract.md); `Rejection` is what the decoder
returns instead of an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import msgspec

__all__ = ["REJECT_REASONS", "Rejection", "short_repr"]

REJECT_REASONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "too_large": "the message is longer than the size limit (default 64 KiB)",
        "empty": "the message has no value (a null/tombstone, zero bytes or only whitespace)",
        "malformed_json": "not valid JSON: syntax error, invalid UTF-8, trailing data or nesting too deep",
        "not_an_object": "valid JSON but not an object (array, string, number, null...)",
        "missing_field": "a field required by the event type (or `event_type` itself) is absent",
        "wrong_type": "a field has the wrong JSON type (e.g. a string where an integer is required)",
        "unknown_event_type": "`event_type` is not an event type of contract v1",
        "wrong_family": "`event_type` belongs to the other family (e.g. a sign-up event on the playback topic)",
        "out_of_range": "an integer is below its minimum or above its maximum (e.g. a negative duration)",
        "bad_enum": "a string is not one of the allowed values of its field",
        "bad_format": "a string breaks its pattern or length (e.g. a country that is not two upper-case letters)",
        "unsupported_schema_version": "`schema_version` is present but not the integer 1",
        "duplicate_key": "a key appears twice in one JSON object (parsers disagree on which one counts)",
        "future_event_time": "`event_time_ms` is more than the allowed skew (default 1 h) ahead of the wall clock",
        "invalid": "fails the contract in a way the decoder could not classify (a decoder bug: report it)",
    }
)
"""Every `Rejection.reason`, with what it means. A fixed set: safe as a Prometheus label."""


class Rejection(msgspec.Struct, frozen=True, gc=False):
    """Why a message is bad input.

    `reason` is one of `REJECT_REASONS` (machine-readable, bounded);
    `detail` says in words what is wrong with which field, for people
    reading the dead-letter topic. Test with `type(x) is Rejection`.
    """

    reason: str
    detail: str


_MAX_DETAIL_VALUE = 60  # characters of an offending value quoted in a rejection's detail


def short_repr(value: Any) -> str:
    """`repr(value)`, cut to a length that keeps a rejection's detail (a dead-letter header) small."""
    text = repr(value)
    return text if len(text) <= _MAX_DETAIL_VALUE else text[: _MAX_DETAIL_VALUE - 3] + "..."
