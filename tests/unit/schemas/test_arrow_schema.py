"""The archive's Arrow schema and partitioning, against contract v1."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from schemas.arrow import archive_partition, archive_schema, events_to_table
from schemas.contract import FAMILIES, families
from schemas.decoder import EventDecoder, Rejection
from tests.unit.contract_strategies import value_strategy

MAX_EVENT_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the largest time datetime can check


@cache
def event_strategy(family: str, event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = families()[family].event_types[event_type].fields
    return st.fixed_dictionaries({f.name: value_strategy(f) for f in fields})


def events_of(family: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    one = st.sampled_from(list(families()[family].event_types)).flatmap(lambda et: event_strategy(family, et))
    return st.lists(one, min_size=1, max_size=30)


@pytest.mark.parametrize("family", FAMILIES)
def test_columns_cover_every_contract_field(family: str) -> None:
    schema = archive_schema(family)
    event_types = families()[family].event_types.values()
    expected = {f.name for spec in event_types for f in spec.fields}
    assert set(schema.names) == expected
    assert len(schema.names) == len(expected)  # no duplicates
    assert schema.names[0] == "event_type"


@pytest.mark.parametrize("family", FAMILIES)
def test_nullable_exactly_when_some_event_type_lacks_the_field(family: str) -> None:
    schema = archive_schema(family)
    event_types = list(families()[family].event_types.values())
    for column in schema:
        carried = all(column.name in spec.field_names for spec in event_types)
        assert column.nullable is not carried, column.name


@pytest.mark.parametrize("family", FAMILIES)
def test_column_types_fit_the_contract(family: str) -> None:
    schema = archive_schema(family)
    for spec in families()[family].event_types.values():
        for field in spec.fields:
            arrow_type = schema.field(field.name).type
            if field.type == "integer":
                assert pa.types.is_signed_integer(arrow_type), field.name
                info_bits = arrow_type.bit_width
                for bound in (field.minimum, field.maximum, field.const):
                    if isinstance(bound, int):
                        assert -(2 ** (info_bits - 1)) <= bound < 2 ** (info_bits - 1), field.name
            else:
                value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
                assert pa.types.is_string(value_type), field.name


def test_event_time_is_int64_epoch_ms_utc() -> None:
    for family in FAMILIES:
        column = archive_schema(family).field("event_time_ms")
        assert column.type == pa.int64()
        assert column.metadata is not None
        assert column.metadata[b"unit"] == b"ms"
        assert column.metadata[b"timezone"] == b"UTC"


def test_unknown_family_is_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        archive_schema("billing")


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=40)
@given(data=st.data())
def test_events_to_table_round_trips_through_parquet(family: str, data: st.DataObject) -> None:
    events = data.draw(events_of(family))
    table = events_to_table(family, events)
    assert table.schema == archive_schema(family)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue()), schema=archive_schema(family)).to_pylist()
    assert len(back) == len(events)
    for row, event in zip(back, events, strict=True):
        # Every field of the event is kept; every other column is null.
        assert {k: v for k, v in row.items() if v is not None or k in event} == event


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=20)
@given(data=st.data())
def test_decoded_structs_give_the_same_table_as_dicts(family: str, data: st.DataObject) -> None:
    events = data.draw(events_of(family))
    decoder = EventDecoder(family)
    structs = [decoder.decode(json.dumps(e).encode(), MAX_EVENT_TIME_MS) for e in events]
    assert not any(isinstance(s, Rejection) for s in structs)
    assert events_to_table(family, structs).equals(events_to_table(family, events))


def test_extra_keys_are_not_archived_even_when_named_like_other_fields() -> None:
    [event] = [msgspec.to_builtins(e) for e in _sample("playback", "pause")]
    row = events_to_table("playback", [{**event, "startup_ms": "fast", "note": 1}]).to_pylist()[0]
    assert row["startup_ms"] is None
    assert "note" not in row


def test_a_missing_required_field_is_an_error() -> None:
    [event] = _sample("signup", "signup_completed")
    with pytest.raises(ValueError, match="price_cents"):
        events_to_table("signup", [{k: v for k, v in event.items() if k != "price_cents"}])


def test_an_event_type_of_another_family_is_an_error() -> None:
    [event] = _sample("signup", "signup_started")
    with pytest.raises(ValueError, match="event_type"):
        events_to_table("playback", [event])


def test_empty_table_has_the_schema() -> None:
    assert events_to_table("signup", []).schema == archive_schema("signup")


def _sample(family: str, event_type: str) -> list[dict[str, Any]]:
    return [find(event_strategy(family, event_type), lambda _: True)]


@given(ms=st.integers(min_value=0, max_value=MAX_EVENT_TIME_MS))
def test_archive_partition_matches_datetime(ms: int) -> None:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    assert archive_partition(ms) == (moment.strftime("%Y-%m-%d"), moment.strftime("%H"))


@pytest.mark.parametrize(
    "ms",
    # epoch, hour and day edges, 2000-02-29 (leap), 2100-02-28 23:59:59.999 (2100 is not leap), the maximum
    [0, 3_599_999, 3_600_000, 86_399_999, 86_400_000, 951_782_400_000, 4_107_542_399_999, MAX_EVENT_TIME_MS],
)
def test_archive_partition_at_boundaries(ms: int) -> None:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    assert archive_partition(ms) == (moment.strftime("%Y-%m-%d"), moment.strftime("%H"))
