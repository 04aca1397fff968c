"""The hot-path decoder: Kafka message bytes -> a typed event or a `Rejection`.

Every event type of contract v1 becomes a frozen msgspec Struct built at
import from `schemas.contract`, and each family's event types form a tagged
union on `event_type`, so one `msgspec.json.Decoder.decode` call parses,
picks the event type and validates every constraint (types, ranges, enums,
lengths, patterns) without building a dict. A pattern with a small finite
language (`country`: `^[A-Z]{2}$`) is checked as a `Literal` of its strings,
a C hash lookup; other patterns run as regexes. The Python-level work on the
valid path is a size check, an ASCII check (non-ASCII bytes are checked for
UTF-8, which msgspec skips in unknown fields), a count of colons (a key
given twice is rejected, `repeated_key`, and msgspec would keep the last one
silently) and the future-skew check; classifying what is wrong with a bad
message happens only on the error path, where a second parse is affordable.

Reading a decoded event:

- fields are attributes: `ev.event_time_ms`, `ev.country`, `ev.startup_ms`...
- `ev.event_type` is a plain class attribute (the union's tag), as cheap as
  any attribute; `type(ev)` is the per-event-type class, also usable as a key;
- `type(result) is Rejection` tells a rejection from an event fastest;
- `msgspec.to_builtins(ev)` / `msgspec.json.encode(ev)` include `event_type`
  (`msgspec.structs.asdict(ev)` does not: the tag is not a field);
- events are immutable, hashable by value, cheap (`gc=False`) and picklable
  (each class is a module attribute, e.g. `schemas.event_structs.PlayStart`).

A valid value that JSON spells as an integral float (`1.0`, `1e3`) is an
integer for JSON Schema, so it is accepted and converted to `int`; that
conversion runs only on the error path, never for ordinary messages.

This module holds the hot path (`EventDecoder.decode`) and is where callers
import from; the parts are modules of their own: schemas/event_structs.py
(the Struct classes built from the contract), schemas/patterns.py (contract
patterns in Python), schemas/rejection.py (`Rejection` and its reasons),
schemas/classify.py (what is wrong with a bad message: the slow path) and
schemas/repeated_key.py (the repeated-key check).
"""

from __future__ import annotations

from typing import Any

from schemas.classify import classify_error
from schemas.event_structs import EVENT_CLASSES, JSON_DECODERS, Event, EventStruct, struct_for
from schemas.patterns import ecma_pattern, finite_language
from schemas.rejection import REJECT_REASONS, Rejection
from schemas.repeated_key import repeated_key

__all__ = [
    "EVENT_CLASSES",
    "REJECT_REASONS",
    "Event",
    "EventDecoder",
    "EventStruct",
    "Rejection",
    "ecma_pattern",
    "finite_language",
    "repeated_key",
    "struct_for",
]


class EventDecoder:
    """Decodes one family's Kafka messages; never raises, whatever the bytes.

    `decode(raw, now_ms)` returns the event's Struct (see `EVENT_CLASSES`) or
    a `Rejection`. `now_ms` is the wall clock in epoch ms, read once per
    batch by the caller; an event more than `max_future_skew_ms` ahead of it
    is rejected (exactly at the bound is accepted), so one bad clock cannot
    drag a watermark. Old events are never rejected: lateness is the flow's
    business. A message of exactly `max_message_bytes` is accepted.
    """

    __slots__ = ("_decode", "_skew_ms", "family", "max_future_skew_ms", "max_message_bytes")

    def __init__(self, family: str, max_message_bytes: int = 65536, max_future_skew_ms: int = 3_600_000) -> None:
        if family not in EVENT_CLASSES:
            raise ValueError(f"unknown event family {family!r}; expected one of {sorted(EVENT_CLASSES)}")
        if max_message_bytes < 1 or max_future_skew_ms < 0:
            raise ValueError("max_message_bytes must be >= 1 and max_future_skew_ms >= 0")
        self.family = family
        self.max_message_bytes = max_message_bytes
        self.max_future_skew_ms = max_future_skew_ms
        self._skew_ms = max_future_skew_ms
        self._decode = JSON_DECODERS[family].decode

    def decode(self, raw: bytes | None, now_ms: int) -> EventStruct | Rejection:
        """Decode and validate one message value against the contract; never raises."""
        if raw is None:
            return Rejection("empty", "message has no value (null)")
        if len(raw) > self.max_message_bytes:
            return Rejection("too_large", f"message is {len(raw)} bytes, over the {self.max_message_bytes}-byte limit")
        try:
            if not raw.isascii():
                # msgspec checks UTF-8 only in the strings it keeps, not in unknown fields it skips.
                raw.decode()
            event: EventStruct = self._decode(raw)
        except Exception as exc:  # the contract is "never raise"; classifying is the slow path
            result = self._on_error(raw, exc)
            if isinstance(result, Rejection):
                return result
            event = result  # integral floats converted to int: valid after all
        # A colon follows every key: no more colons than the event's keys leaves no room for a repeated one.
        # (Counting is the cheapest sound test found: ~0.3 of a decode; see repeated_key for the rest.)
        colons = raw.count(b":")
        if colons != event.key_count:
            repeated = repeated_key(raw, colons)
            if repeated is not None:
                return repeated
        if event.event_time_ms - now_ms > self._skew_ms:
            return Rejection(
                "future_event_time",
                f"event_time_ms {event.event_time_ms} is {event.event_time_ms - now_ms} ms ahead of now ({now_ms}); "
                f"the limit is {self._skew_ms} ms",
            )
        return event

    def _on_error(self, raw: Any, exc: Exception) -> EventStruct | Rejection:
        try:
            return classify_error(self.family, raw, exc)
        except Exception as inner:  # a classification bug must still not crash the flow
            return Rejection("invalid", f"{type(exc).__name__}: {exc} (classification failed: {inner!r})"[:500])
