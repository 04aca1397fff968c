"""The hot-path decoder against contract v1.

Events are generated from `schemas.contract` (no restated field lists) and
the verdicts are cross-checked against the `jsonschema` library validating
the same objects against the JSON Schema files.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, assume, find, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry, Resource

from schemas.classify import classify_validation
from schemas.contract import FAMILIES, FieldSpec, families, family_of
from schemas.decoder import (
    EVENT_CLASSES,
    REJECT_REASONS,
    EventDecoder,
    EventStruct,
    Rejection,
    finite_language,
    struct_for,
)
from schemas.docs import contract_markdown
from tests.unit.contract_strategies import ecma_matches, value_strategy

NOW_MS = 1_700_000_000_000
# For property tests: a clock so late that no valid event_time_ms is "in the future".
LATE_NOW_MS = 2**62
ALL_EVENT_TYPES = [(f.name, et) for f in families().values() for et in f.event_types]
REPO = Path(__file__).resolve().parents[3]


def other_family(family: str) -> str:
    return next(f for f in FAMILIES if f != family)


def fields_of(event_type: str) -> tuple[FieldSpec, ...]:
    family = family_of(event_type)
    assert family is not None
    return families()[family].event_types[event_type].fields


def field_spec(event_type: str, name: str) -> FieldSpec:
    return next(f for f in fields_of(event_type) if f.name == name)


# ---------------------------------------------------------------- strategies derived from the contract


@cache
def event_strategy(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.name: value_strategy(f) for f in fields_of(event_type)})


def family_event_strategy(family: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(list(families()[family].event_types)).flatmap(event_strategy)


any_event = st.sampled_from(list(FAMILIES)).flatmap(lambda fam: st.tuples(st.just(fam), family_event_strategy(fam)))

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@cache
def minimal_event(event_type: str) -> dict[str, Any]:
    """The simplest valid event of a type (Hypothesis' shrunk example: deterministic)."""
    return dict(find(event_strategy(event_type), lambda _: True))


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def decoder_for(event_type: str, **kwargs: int) -> EventDecoder:
    family = family_of(event_type)
    assert family is not None
    return EventDecoder(family, **kwargs)


def reject(event_type: str, obj: Any, now_ms: int = NOW_MS) -> Rejection:
    result = decoder_for(event_type).decode(encode(obj), now_ms)
    assert isinstance(result, Rejection), f"accepted {obj!r}"
    return result


def with_field(event_type: str, name: str, value: Any) -> dict[str, Any]:
    return {**minimal_event(event_type), name: value}


def without_field(event_type: str, name: str) -> dict[str, Any]:
    return {k: v for k, v in minimal_event(event_type).items() if k != name}


def contract_fields(predicate: Callable[[FieldSpec], bool]) -> list[tuple[str, str]]:
    """(event_type, field) pairs of every event type whose field satisfies predicate."""
    return [(et, f.name) for _, et in ALL_EVENT_TYPES for f in fields_of(et) if predicate(f)]


def is_bounded_int(f: FieldSpec) -> bool:
    return f.type == "integer" and f.const is None and (f.minimum is not None or f.maximum is not None)


def is_plain_string(f: FieldSpec) -> bool:
    return f.type == "string" and f.const is None and f.enum is None


# ---------------------------------------------------------------- jsonschema as an independent oracle


def _ecma_pattern_keyword(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not ecma_matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# The library's `pattern` uses Python's `$`, which lets "US\n" through; JSON Schema means ECMA-262.
EcmaValidator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern_keyword})


@cache
def schema_validator(family: str) -> Any:
    docs = {}
    for path in resources.files("schemas").iterdir():
        if path.name.endswith(".schema.json"):
            doc = json.loads(path.read_text(encoding="utf-8"))
            docs[doc["$id"]] = doc
    registry: Registry[Any] = Registry().with_resources((uri, Resource.from_contents(doc)) for uri, doc in docs.items())
    return EcmaValidator(docs[f"{family}.v1.schema.json"], registry=registry)


def schema_accepts(family: str, obj: Any) -> bool:
    return bool(schema_validator(family).is_valid(obj))


# ---------------------------------------------------------------- valid events


@pytest.mark.parametrize(("family", "event_type"), ALL_EVENT_TYPES)
@settings(max_examples=25)
@given(data=st.data())
def test_valid_events_decode_with_their_attributes(family: str, event_type: str, data: st.DataObject) -> None:
    obj = data.draw(event_strategy(event_type))
    event = EventDecoder(family).decode(orjson.dumps(obj), LATE_NOW_MS)
    assert not isinstance(event, Rejection), event
    assert type(event) is struct_for(event_type) is EVENT_CLASSES[family][event_type]
    assert isinstance(event, EventStruct)
    assert event.event_type == event_type
    for name, value in obj.items():
        assert getattr(event, name) == value, name
    assert schema_accepts(family, obj)


def test_event_classes_cover_the_contract() -> None:
    assert set(EVENT_CLASSES) == set(families())
    for family, spec in families().items():
        assert set(EVENT_CLASSES[family]) == set(spec.event_types)
        for event_type, cls in EVENT_CLASSES[family].items():
            assert cls.event_type == event_type
            # event_type is the tag, not a field; every other contract field is one.
            assert set(cls.__struct_fields__) == set(spec.event_types[event_type].field_names) - {"event_type"}
    with pytest.raises(KeyError):
        struct_for("not_an_event_type")


def test_encoding_an_event_gives_back_the_contract_object() -> None:
    for _family, event_type in ALL_EVENT_TYPES:
        obj = minimal_event(event_type)
        event = decoder_for(event_type).decode(encode(obj), NOW_MS)
        assert msgspec.to_builtins(event) == obj
        assert orjson.loads(msgspec.json.encode(event)) == obj


def test_events_pickle_and_hash_by_value() -> None:
    decoder = decoder_for("signup_completed")
    event = decoder.decode(encode(minimal_event("signup_completed")), NOW_MS)
    again = pickle.loads(pickle.dumps(event))
    assert again == event
    assert type(again) is type(event)
    assert hash(again) == hash(decoder.decode(encode(minimal_event("signup_completed")), NOW_MS))


FINITE_PATTERNS = sorted(
    {f.pattern for _, et in ALL_EVENT_TYPES for f in fields_of(et) if f.pattern and finite_language(f.pattern)}
)


@pytest.mark.parametrize("pattern", FINITE_PATTERNS)
@given(data=st.data())
def test_finite_language_is_the_pattern_language(pattern: str, data: st.DataObject) -> None:
    language = finite_language(pattern)
    assert language is not None
    assert len(set(language)) == len(language)
    assert all(ecma_matches(pattern, s) for s in language)
    matching = data.draw(st.from_regex(pattern, fullmatch=True).filter(lambda s: ecma_matches(pattern, s)))
    assert matching in language
    other = data.draw(st.text(st.characters(max_codepoint=0x7F) | st.sampled_from("ÄÉ\n"), max_size=3))
    assert (other in language) == ecma_matches(pattern, other)


def test_finite_language_refuses_what_it_cannot_enumerate() -> None:
    assert finite_language("^[A-Z]{2}$") is not None
    for pattern in ("[A-Z]{2}", "^[A-Z]+$", "^\\d{2}$", "^[^a]$", "^.{2}$", "^[A-Z]{4}$"):
        assert finite_language(pattern) is None, pattern


def test_events_are_frozen() -> None:
    event = decoder_for("play_start").decode(encode(minimal_event("play_start")), NOW_MS)
    with pytest.raises(AttributeError):
        event.startup_ms = 5  # type: ignore[union-attr]


@given(extra=st.dictionaries(st.text(), json_values, max_size=5), pair=any_event)
def test_unknown_extra_fields_are_ignored(extra: dict[str, Any], pair: tuple[str, dict[str, Any]]) -> None:
    family, obj = pair
    extra = {k: v for k, v in extra.items() if k not in obj}
    plain = EventDecoder(family).decode(encode(obj), LATE_NOW_MS)
    padded = EventDecoder(family).decode(encode({**extra, **obj, **extra}), LATE_NOW_MS)
    assert not isinstance(plain, Rejection)
    assert padded == plain


def test_fields_of_another_event_type_are_extra_fields() -> None:
    # `startup_ms` belongs to play_start; on a pause it is an unknown field, whatever its value.
    event = decoder_for("pause").decode(encode(with_field("pause", "startup_ms", "not a number")), NOW_MS)
    assert type(event) is struct_for("pause")
    assert not hasattr(event, "startup_ms")


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: f.type == "integer"))
def test_integral_floats_are_integers(event_type: str, name: str) -> None:
    # JSON Schema counts 1.0 as an integer; the decoder agrees and hands out an int.
    value = minimal_event(event_type)[name]
    obj = with_field(event_type, name, float(value))
    event = decoder_for(event_type).decode(encode(obj), NOW_MS)
    assert not isinstance(event, Rejection), event
    assert type(getattr(event, name)) is int
    assert getattr(event, name) == value
    assert schema_accepts(family_of(event_type) or "", obj)


def test_accepts_bytearray() -> None:
    raw = encode(minimal_event("heartbeat"))
    decoder = decoder_for("heartbeat")
    expected = decoder.decode(raw, NOW_MS)
    assert decoder.decode(bytearray(raw), NOW_MS) == expected  # type: ignore[arg-type]


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        EventDecoder("billing")


# ---------------------------------------------------------------- one test per rejection reason


def test_reason_too_large() -> None:
    obj = {**minimal_event("play_start"), "padding": "x" * 70_000}
    assert reject("play_start", obj).reason == "too_large"


def test_max_message_bytes_boundary() -> None:
    limit = 1000
    decoder = decoder_for("play_start", max_message_bytes=limit)
    base = encode({**minimal_event("play_start"), "padding": ""})
    at_limit = encode({**minimal_event("play_start"), "padding": "x" * (limit - len(base))})
    assert len(at_limit) == limit
    assert not isinstance(decoder.decode(at_limit, NOW_MS), Rejection)
    over = encode({**minimal_event("play_start"), "padding": "x" * (limit - len(base) + 1)})
    rejection = decoder.decode(over, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "too_large"
    assert str(limit) in rejection.detail


@pytest.mark.parametrize("raw", [None, b"", b" \n\t "])
def test_reason_empty(raw: bytes | None) -> None:
    rejection = EventDecoder("playback").decode(raw, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "empty"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": ',
        b"{'event_id': 'single quotes'}",
        encode(minimal_event("play_start")) + b" trailing",
        encode(minimal_event("play_start")).replace(b'"event_id"', b'"event_id\xff\xfe"'),  # invalid UTF-8
        b'{"a": NaN}',
        b"\xef\xbb\xbf" + encode(minimal_event("play_start")),  # a BOM is not JSON
        encode({**minimal_event("play_start"), "extra": "x"}).replace(b'"x"', b'"\xc3\x28"'),  # in a skipped field
    ],
)
def test_reason_malformed_json(raw: bytes) -> None:
    rejection = EventDecoder("playback").decode(raw, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "malformed_json"


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    obj = encode(minimal_event("play_start"))[:-1] + b', "deep": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    rejection = EventDecoder("playback").decode(obj, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "malformed_json"


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b"42", b'"play_start"', b"null", b"true"])
def test_reason_not_an_object(raw: bytes) -> None:
    rejection = EventDecoder("signup").decode(raw, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "not_an_object"


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: True))
def test_reason_missing_field(event_type: str, name: str) -> None:
    rejection = reject(event_type, without_field(event_type, name))
    assert rejection.reason == "missing_field"
    assert name in rejection.detail


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: f.name != "schema_version"))
def test_reason_wrong_type(event_type: str, name: str) -> None:
    wrong: Any = ["a list"] if field_spec(event_type, name).type == "string" else "7"
    rejection = reject(event_type, with_field(event_type, name, wrong))
    assert rejection.reason == "wrong_type"
    assert name in rejection.detail


@pytest.mark.parametrize("value", ["", "PLAY_START", "play-start", "login"])
def test_reason_unknown_event_type(value: str) -> None:
    rejection = reject("play_start", with_field("play_start", "event_type", value))
    assert rejection.reason == "unknown_event_type"


@pytest.mark.parametrize(("family", "event_type"), ALL_EVENT_TYPES)
def test_reason_wrong_family(family: str, event_type: str) -> None:
    raw = encode(minimal_event(event_type))
    rejection = EventDecoder(other_family(family)).decode(raw, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "wrong_family"
    assert event_type in rejection.detail


@pytest.mark.parametrize(("event_type", "name"), contract_fields(is_bounded_int))
def test_reason_out_of_range(event_type: str, name: str) -> None:
    spec = field_spec(event_type, name)
    outside = []
    if spec.minimum is not None:
        outside.append(spec.minimum - 1)
    if spec.maximum is not None:
        outside.append(spec.maximum + 1)
    for value in [*outside, 2**70, -(2**70)]:
        rejection = reject(event_type, with_field(event_type, name, value))
        assert rejection.reason == "out_of_range", (value, rejection)
        assert name in rejection.detail


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: f.enum is not None))
def test_reason_bad_enum(event_type: str, name: str) -> None:
    value = field_spec(event_type, name).enum[0]  # type: ignore[index]
    for bad in (value.upper(), value + " ", "unknown"):
        rejection = reject(event_type, with_field(event_type, name, bad))
        assert rejection.reason == "bad_enum"
        assert name in rejection.detail


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: f.pattern is not None))
def test_reason_bad_format_pattern(event_type: str, name: str) -> None:
    good = minimal_event(event_type)[name]
    for bad in (good.lower(), good + good[0], good[:-1], good + "\n", " " + good):
        assert not ecma_matches(field_spec(event_type, name).pattern or "", bad)
        rejection = reject(event_type, with_field(event_type, name, bad))
        assert rejection.reason == "bad_format", (bad, rejection)
        assert name in rejection.detail


def test_reason_bad_format_country_examples() -> None:
    for bad in ("us", "USA", "U", "U1", "ÜS", "US\n"):
        assert reject("heartbeat", with_field("heartbeat", "country", bad)).reason == "bad_format"


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: f.max_length is not None))
def test_reason_bad_format_length(event_type: str, name: str) -> None:
    spec = field_spec(event_type, name)
    assert spec.max_length is not None
    too_long = "é" * (spec.max_length + 1)  # lengths count characters, not bytes
    assert reject(event_type, with_field(event_type, name, too_long)).reason == "bad_format"
    at_max = with_field(event_type, name, "é" * spec.max_length)
    assert not isinstance(decoder_for(event_type).decode(encode(at_max), NOW_MS), Rejection)
    if spec.min_length:
        short = "é" * (spec.min_length - 1)
        assert reject(event_type, with_field(event_type, name, short)).reason == "bad_format"


@pytest.mark.parametrize("version", [0, 2, -1, 10**30, "1", "2", 1.5, None, True, [1]])
def test_reason_unsupported_schema_version(version: Any) -> None:
    rejection = reject("signup_started", with_field("signup_started", "schema_version", version))
    assert rejection.reason == "unsupported_schema_version"


def test_reason_future_event_time() -> None:
    skew = 60_000
    decoder = decoder_for("rebuffer", max_future_skew_ms=skew)
    at_bound = encode(with_field("rebuffer", "event_time_ms", NOW_MS + skew))
    assert not isinstance(decoder.decode(at_bound, NOW_MS), Rejection)
    past_bound = encode(with_field("rebuffer", "event_time_ms", NOW_MS + skew + 1))
    rejection = decoder.decode(past_bound, NOW_MS)
    assert isinstance(rejection, Rejection)
    assert rejection.reason == "future_event_time"
    assert "event_time_ms" in rejection.detail


def test_old_events_are_not_bad_input() -> None:
    old = encode(with_field("rebuffer", "event_time_ms", 0))
    assert not isinstance(decoder_for("rebuffer").decode(old, NOW_MS), Rejection)


def test_reason_invalid_is_only_the_fallback_for_unclassified_errors() -> None:
    # No input is known to produce it; this checks that an unforeseen msgspec message lands there.
    rejection = classify_validation("playback", "Some future msgspec wording - at `$.country`", {"country": "US"})
    assert rejection.reason == "invalid"
    assert "country" in rejection.detail


def test_every_reason_has_its_test_and_a_description() -> None:
    for reason, description in REJECT_REASONS.items():
        assert re.fullmatch(r"[a-z_]+", reason)
        assert description
        assert callable(globals().get(f"test_reason_{reason}")) or any(
            name.startswith(f"test_reason_{reason}_") for name in globals()
        ), f"no test produces {reason}"


def test_generated_docs_are_current() -> None:
    text = contract_markdown()
    assert (REPO / "docs" / "event-contract.md").read_text(encoding="utf-8") == text, (
        "run: python -m schemas.docs docs/event-contract.md"
    )
    for reason in REJECT_REASONS:
        assert f"`{reason}`" in text
    for _family, event_type in ALL_EVENT_TYPES:
        assert f"`{event_type}`" in text


# ---------------------------------------------------------------- never raise, whatever the input


def assert_result(result: object) -> None:
    assert type(result) is Rejection or isinstance(result, EventStruct), result
    if type(result) is Rejection:
        assert result.reason in REJECT_REASONS
        assert 0 < len(result.detail) <= 500


@pytest.mark.parametrize("name", ["event_type", "device_type", "country", "event_id", "startup_ms"])
def test_details_stay_short_whatever_the_value(name: str) -> None:
    result = decoder_for("play_start").decode(encode(with_field("play_start", name, "z" * 20_000)), NOW_MS)
    assert isinstance(result, Rejection)
    assert_result(result)


@given(raw=st.binary(max_size=512), family=st.sampled_from(FAMILIES), now=st.integers(-(2**63), 2**63))
def test_arbitrary_bytes_never_raise(raw: bytes, family: str, now: int) -> None:
    assert_result(EventDecoder(family).decode(raw, now))


@given(pair=any_event, data=st.data())
def test_corrupted_valid_events_never_raise(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    raw = bytearray(encode(obj))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    assert_result(EventDecoder(family).decode(bytes(raw), LATE_NOW_MS))


@given(value=json_values, family=st.sampled_from(FAMILIES))
def test_arbitrary_json_never_raises_and_is_classified(value: Any, family: str) -> None:
    result = EventDecoder(family).decode(encode(value), NOW_MS)
    assert_result(result)
    assert getattr(result, "reason", None) != "invalid"


# ---------------------------------------------------------------- mutated valid events -> the expected reason


@given(pair=any_event, data=st.data())
def test_dropping_a_field_is_missing_field(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    name = data.draw(st.sampled_from(sorted(obj)))
    result = EventDecoder(family).decode(encode({k: v for k, v in obj.items() if k != name}), LATE_NOW_MS)
    assert isinstance(result, Rejection)
    assert result.reason == "missing_field"


non_integer_json = (
    st.text()
    | st.booleans()
    | st.none()
    | st.lists(json_scalars, max_size=2)
    | st.dictionaries(st.text(), json_scalars, max_size=2)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
)
non_string_json = (
    st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.lists(json_scalars, max_size=2)
    | st.dictionaries(st.text(), json_scalars, max_size=2)
)


@given(pair=any_event, data=st.data())
def test_changing_a_type_is_wrong_type(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    spec = data.draw(st.sampled_from(fields_of(obj["event_type"])))
    value = data.draw(non_string_json if spec.type == "string" else non_integer_json)
    result = EventDecoder(family).decode(encode({**obj, spec.name: value}), LATE_NOW_MS)
    assert isinstance(result, Rejection)
    expected = "unsupported_schema_version" if spec.name == "schema_version" else "wrong_type"
    assert result.reason == expected, (spec.name, value, result)


@given(pair=any_event, data=st.data())
def test_a_bad_enum_value_is_bad_enum(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    enum_fields = [f for f in fields_of(obj["event_type"]) if f.enum is not None]
    assume(enum_fields)
    spec = data.draw(st.sampled_from(enum_fields))
    value = data.draw(st.text().filter(lambda s: s not in (spec.enum or ())))
    result = EventDecoder(family).decode(encode({**obj, spec.name: value}), LATE_NOW_MS)
    assert isinstance(result, Rejection)
    assert result.reason == "bad_enum"


@given(pair=any_event, data=st.data())
def test_a_bad_event_type_is_unknown_or_wrong_family(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    value = data.draw(st.text() | st.sampled_from(list(families()[other_family(family)].event_types)))
    assume(value not in families()[family].event_types)
    result = EventDecoder(family).decode(encode({**obj, "event_type": value}), LATE_NOW_MS)
    assert isinstance(result, Rejection)
    assert result.reason == ("wrong_family" if family_of(value) else "unknown_event_type")


@given(pair=any_event, data=st.data())
def test_an_integer_out_of_bounds_is_out_of_range(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    spec = data.draw(st.sampled_from([f for f in fields_of(obj["event_type"]) if f.type == "integer"]))
    if spec.const is not None:
        value = data.draw(st.integers().filter(lambda v: v != spec.const))
        expected = "unsupported_schema_version"
    else:
        below = st.integers(max_value=spec.minimum - 1) if spec.minimum is not None else st.nothing()
        above = st.integers(min_value=spec.maximum + 1) if spec.maximum is not None else st.nothing()
        value = data.draw(below | above)
        expected = "out_of_range"
    result = EventDecoder(family).decode(encode({**obj, spec.name: value}), LATE_NOW_MS)
    assert isinstance(result, Rejection)
    assert result.reason == expected


@given(pair=any_event, data=st.data())
def test_a_string_of_bad_shape_is_bad_format(pair: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    family, obj = pair
    spec = data.draw(st.sampled_from([f for f in fields_of(obj["event_type"]) if is_plain_string(f)]))

    def breaks(s: str) -> bool:
        too_short = spec.min_length is not None and len(s) < spec.min_length
        too_long = spec.max_length is not None and len(s) > spec.max_length
        return too_short or too_long or (spec.pattern is not None and not ecma_matches(spec.pattern, s))

    value = data.draw(st.text(max_size=80).filter(breaks))
    result = EventDecoder(family).decode(encode({**obj, spec.name: value}), LATE_NOW_MS)
    assert isinstance(result, Rejection)
    assert result.reason == "bad_format", (spec.name, value, result)


# ---------------------------------------------------------------- cross-check with jsonschema


def near_boundary(spec: FieldSpec, value: Any) -> st.SearchStrategy[Any]:
    """Values next to what the field allows: where two validators most easily disagree."""
    if spec.type == "integer":
        value = value if type(value) is int else 0
        edges = [v for v in (spec.minimum, spec.maximum, spec.const) if v is not None]
        ints = [int(e) + d for e in edges for d in (-1, 0, 1)]
        return st.sampled_from(ints + [float(i) for i in ints] + [float(value), value + 0.5, str(value), True])
    text = str(value)
    if spec.pattern is not None:
        return st.sampled_from([text + "\n", "\n" + text, text.lower(), text[:-1] + "É", text + "0"])
    if spec.enum is not None:
        return st.sampled_from([text.upper(), text + "\n", "", None])
    return st.sampled_from(["", "é" * (spec.max_length or 1), "é" * ((spec.max_length or 1) + 1), text + "\n"])


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[str, Any]:
    family = draw(st.sampled_from(FAMILIES))
    obj = dict(draw(family_event_strategy(family)))
    specs = fields_of(obj["event_type"])
    constrained = [f for f in specs if (f.type == "integer" and f.name != "event_type") or f.pattern or f.enum]
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "event_type", "boundary", "boundary"]))
        spec = draw(st.sampled_from(specs))
        if action == "drop":
            obj.pop(spec.name, None)
        elif action == "replace":
            obj[spec.name] = draw(json_values)
        elif action == "add":
            obj[draw(st.text(max_size=20))] = draw(json_values)
        elif action == "event_type":
            obj["event_type"] = draw(st.sampled_from([et for _, et in ALL_EVENT_TYPES]))
        else:
            spec = draw(st.sampled_from(constrained))
            obj[spec.name] = draw(near_boundary(spec, obj.get(spec.name)))
    return family, obj


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated_events() | st.tuples(st.sampled_from(FAMILIES), json_values))
def test_decoder_agrees_with_jsonschema(case: tuple[str, Any]) -> None:
    family, obj = case
    decoder = EventDecoder(family, max_message_bytes=2**30)
    result = decoder.decode(encode(obj), LATE_NOW_MS)
    assert_result(result)
    accepted = not isinstance(result, Rejection)
    assert accepted == schema_accepts(family, obj), (obj, result)
    if accepted:
        for name in fields_of(result.event_type):  # type: ignore[union-attr]
            if name.name != "event_type":
                assert getattr(result, name.name) == obj[name.name]


# ---------------------------------------------------------------- repeated keys


def with_pairs(obj: dict[str, Any], *pairs: tuple[str, Any]) -> bytes:
    """`obj` as JSON with `pairs` appended verbatim: the only way to spell an object with a key twice."""
    tail = b"".join(b"," + encode(key) + b":" + encode(value) for key, value in pairs)
    return encode(obj)[:-1] + tail + b"}"


@pytest.mark.parametrize(("event_type", "name"), contract_fields(lambda f: True))
def test_reason_duplicate_key(event_type: str, name: str) -> None:
    # Same value or another one: either way two parsers could read two different events.
    obj = minimal_event(event_type)
    for value in (obj[name], "ZZ" if name == "country" else obj[name]):
        result = decoder_for(event_type).decode(with_pairs(obj, (name, value)), NOW_MS)
        assert isinstance(result, Rejection), (name, value)
        assert result.reason == "duplicate_key"
        assert repr(name) in result.detail


def test_the_issue_example_is_not_counted_under_either_country() -> None:
    obj = with_field("play_start", "country", "ZY")
    assert getattr(decoder_for("play_start").decode(encode(obj), NOW_MS), "country", None) == "ZY"
    result = decoder_for("play_start").decode(with_pairs(obj, ("country", "ZZ")), NOW_MS)
    assert isinstance(result, Rejection) and result.reason == "duplicate_key"


@pytest.mark.parametrize(
    "spelled",
    [
        b',"\\u0063ountry":"ZZ"}',  # an escaped spelling of the same key
        b' , "country" : "ZZ" }',  # whitespace around the colon
        b',"os":"a","os":"b"}',  # a repeated unknown field
        b',"client":{"a":1,"a":2}}',  # a repeated key in a nested object
        b',"event_type":"play_start"}',  # the tag itself
    ],
)
def test_repeated_keys_are_found_however_spelled(spelled: bytes) -> None:
    raw = encode(minimal_event("play_start"))[:-1] + spelled
    result = decoder_for("play_start").decode(raw, NOW_MS)
    assert isinstance(result, Rejection) and result.reason == "duplicate_key", result


@pytest.mark.parametrize(
    "extra",
    [
        b',"note":"a:b:c"}',  # colons inside a string value
        b',"client":{"os":"tv","v":{"os":"tv"}}}',  # the same key in different objects
        b',"a":[{"k":1},{"k":2}]}',  # the same key in sibling objects
        b',"huge":' + b"9" * 5000 + b',"z":"x:y"}',  # a number Python would refuse to build, on the full path
    ],
)
def test_same_key_in_different_objects_is_not_a_repeat(extra: bytes) -> None:
    raw = encode(minimal_event("play_start"))[:-1] + extra
    result = decoder_for("play_start").decode(raw, NOW_MS)
    assert not isinstance(result, Rejection), result


def reference_repeats(raw: bytes) -> bool:
    """Whether any object in `raw` repeats a key, by the standard library (the reference, not fast)."""
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=hook)
    return found


@settings(max_examples=300)
@given(
    pair=any_event,
    extra=st.lists(st.tuples(st.text(max_size=8), json_values), max_size=4),
    repeat=st.booleans(),
    data=st.data(),
)
def test_repeated_keys_are_rejected_exactly(
    pair: tuple[str, dict[str, Any]], extra: list[tuple[str, Any]], repeat: bool, data: st.DataObject
) -> None:
    family, obj = pair
    pairs = [(k, v) for k, v in extra if k not in obj]
    if repeat:
        pairs.append((data.draw(st.sampled_from(sorted(obj) + [k for k, _ in pairs])), data.draw(json_values)))
    raw = with_pairs(obj, *pairs)
    result = EventDecoder(family, max_message_bytes=2**30).decode(raw, LATE_NOW_MS)
    # A repeated key is rejected; as `duplicate_key` unless the value msgspec kept is itself bad (then that reason).
    assert isinstance(result, Rejection) == reference_repeats(raw), (raw, result)
