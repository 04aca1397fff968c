"""What is wrong with a message the decoder could not read: the slow path, run only for bad input.

`classify_error` turns the exception of a failed decode into a `Rejection`
with a bounded reason (schemas/rejection.py) and a detail that names the
field and quotes the offending value; a second, generic parse shows what the
message holds. A value JSON spells as an integral float (`1.0`, `1e3`) is an
integer for JSON Schema: the message is converted and returned as the event
it is, so that rule costs nothing on the valid path.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, get_origin

import msgspec

from schemas.contract import families, family_of
from schemas.event_structs import EVENT_CLASSES, INT_FIELDS, UNIONS, EventStruct, field_type
from schemas.patterns import ecma_pattern
from schemas.rejection import Rejection, short_repr

__all__ = ["classify_error", "classify_validation"]

_MAX_DETAIL_WHAT = 160  # characters of msgspec's own message quoted in a rejection's detail

# msgspec's validation messages: "<what>" or "<what> - at `$.<field>`".
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?:\.(?P<field>[^`]*))?`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_GENERIC_JSON: Final = msgspec.json.Decoder()
# Fields whose pattern is checked as a Literal (see finite_language): their "enum" errors are format errors.
_LITERAL_PATTERNS: Final[dict[str, str]] = {
    f.name: f.pattern
    for family in families().values()
    for spec in family.event_types.values()
    for f in spec.fields
    if f.pattern is not None and f.enum is None and get_origin(field_type(f)) is Literal
}
# repr of a translated pattern, as msgspec quotes it -> the pattern as the contract spells it.
_CONTRACT_PATTERNS: Final[dict[str, str]] = {
    repr(ecma_pattern(f.pattern)): f.pattern
    for family in families().values()
    for spec in family.event_types.values()
    for f in spec.fields
    if f.pattern is not None
}


def classify_error(family: str, raw: Any, exc: Exception) -> EventStruct | Rejection:
    """The rejection of `raw` whose decode as a `family` event raised `exc`, or the event after all."""
    if not isinstance(raw, bytes | bytearray):
        return Rejection("malformed_json", f"message value is a {type(raw).__name__}, not bytes")
    if not bytes(raw).strip():
        return Rejection("empty", f"message value is {len(raw)} bytes of nothing but whitespace")
    if isinstance(exc, UnicodeDecodeError):
        return Rejection("malformed_json", f"invalid UTF-8: {exc.reason} at byte {exc.start}")
    if isinstance(exc, RecursionError):
        return Rejection("malformed_json", "JSON nested too deep to decode")
    if not isinstance(exc, msgspec.ValidationError):  # a subclass of DecodeError: test it first
        if isinstance(exc, msgspec.DecodeError):
            return Rejection("malformed_json", f"invalid JSON: {exc}")
        return Rejection("invalid", f"{type(exc).__name__}: {exc}"[:500])
    # Valid JSON that does not fit the contract: parse generically to see the offending value.
    try:
        obj = _GENERIC_JSON.decode(raw)
    except Exception:  # e.g. too deep for the generic decoder: classify from the message alone
        obj = None
    if isinstance(obj, dict) and _ints_from_integral_floats(family, obj):
        try:
            converted: EventStruct = msgspec.convert(obj, UNIONS[family])
        except msgspec.ValidationError as again:
            return classify_validation(family, str(again), obj)
        return converted
    return classify_validation(family, str(exc), obj)


def _ints_from_integral_floats(family: str, obj: dict[str, Any]) -> bool:
    """Turn integral floats in integer fields into ints (JSON Schema calls `1.0` an integer)."""
    event_type = obj.get("event_type")
    cls = EVENT_CLASSES[family].get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        return False
    changed = False
    for name in INT_FIELDS[cls]:
        value = obj.get(name)
        if isinstance(value, float) and value.is_integer():
            obj[name] = int(value)
            changed = True
    return changed


def classify_validation(family: str, message: str, obj: Any) -> Rejection:
    """The rejection for msgspec's validation `message` about `obj` (the message parsed generically, if it could be)."""
    match = _AT.match(message)
    what = match["what"] if match else message
    field = match["field"] if match else None
    if len(what) > _MAX_DETAIL_WHAT:  # msgspec quotes offending values in full: keep dead-letter headers small
        what = what[: _MAX_DETAIL_WHAT - 3] + "..."
    if field is None:
        missing = _MISSING.match(what)
        if missing:
            return Rejection("missing_field", f"required field `{missing['field']}` is missing")
        if what.startswith("Expected `object`"):
            return Rejection("not_an_object", f"message is valid JSON but not an object: {what}")
        return Rejection("invalid", message[:500])
    value = obj.get(field, msgspec.UNSET) if isinstance(obj, dict) else msgspec.UNSET
    shown = "" if value is msgspec.UNSET else f"; value {short_repr(value)}"
    if field == "event_type":
        if what.startswith("Invalid value"):
            other = family_of(value) if isinstance(value, str) else None
            if other is not None and other != family:
                return Rejection("wrong_family", f"event_type {short_repr(value)} is a {other} event, not {family}")
            # msgspec quotes the value it saw (with a duplicated key, maybe not the one the dict kept).
            return Rejection("unknown_event_type", f"field `event_type`: {what}, not an event type of v1")
        if what.startswith("Expected"):
            return Rejection("wrong_type", f"field `event_type`: {what}{shown}")
    if field == "schema_version":
        # Whatever its type, a version other than 1 is a producer speaking another contract.
        return Rejection("unsupported_schema_version", f"schema_version must be 1{shown}")
    if what.startswith("Invalid enum value"):
        pattern = _LITERAL_PATTERNS.get(field)
        if pattern is not None:  # a pattern checked as the Literal of its strings
            return Rejection("bad_format", f"field `{field}`: expected a string matching {pattern!r}{shown}")
        return Rejection("bad_enum", f"field `{field}`: {what}")
    if ", got `" in what or what == "Expected `str`":
        return Rejection("wrong_type", f"field `{field}`: {what}{shown}")
    if what.startswith(("Expected `int` >", "Expected `int` <")) or what == "Number out of range":
        return Rejection("out_of_range", f"field `{field}`: {what}{shown}")
    if what.startswith("Expected `str` matching regex "):
        # Quote the contract's pattern, not its Python translation.
        pattern = _CONTRACT_PATTERNS.get(what.removeprefix("Expected `str` matching regex "), what)
        return Rejection("bad_format", f"field `{field}`: expected a string matching {pattern!r}{shown}")
    if what.startswith("Expected `str` of length"):
        return Rejection("bad_format", f"field `{field}`: {what}{shown}")
    return Rejection("invalid", f"field `{field}`: {what}{shown}"[:500])
