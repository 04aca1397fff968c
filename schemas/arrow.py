"""The Arrow schema of the Parquet archive, derived from the contract.

One table per family: `event_type` plus one column per field of any of the
family's event types, in contract order (common fields first). A field that
not every event type carries is nullable. Strings with a closed or tiny value
set (enums, patterned codes such as `country`) are dictionary-encoded;
integers get the narrowest signed width their contract bounds allow, except
that times (`*_time_ms`) are always int64 epoch milliseconds UTC, as the
field metadata says.

The archive is partitioned `date=YYYY-MM-DD/hour=HH` (UTC) per family;
`archive_partition` computes both with integer arithmetic and a cached day
lookup, never a per-event datetime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache, lru_cache
from typing import Any

import msgspec
import pyarrow as pa

from schemas.contract import SCHEMA_VERSION, FieldSpec, families

__all__ = ["archive_partition", "archive_schema", "events_to_table"]

_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 86_400_000

_EPOCH_MS_METADATA = {b"unit": b"ms", b"epoch": b"unix", b"timezone": b"UTC"}
_DURATION_MS_METADATA = {b"unit": b"ms"}


def _is_time(name: str) -> bool:
    return name.endswith("_time_ms")


def _int_type(spec: FieldSpec) -> pa.DataType:
    if _is_time(spec.name):
        return pa.int64()
    low = spec.const if isinstance(spec.const, int) else spec.minimum
    high = spec.const if isinstance(spec.const, int) else spec.maximum
    if low is None or high is None:
        return pa.int64()
    for bits, arrow_type in ((8, pa.int8()), (16, pa.int16()), (32, pa.int32())):
        if -(2 ** (bits - 1)) <= low and high < 2 ** (bits - 1):
            return arrow_type
    return pa.int64()


def _arrow_type(spec: FieldSpec) -> pa.DataType:
    if spec.type == "integer":
        return _int_type(spec)
    # Enums, consts and patterned codes take few distinct values: a dictionary saves memory and Parquet space.
    if spec.enum is not None or spec.const is not None or spec.pattern is not None or spec.name == "event_type":
        return pa.dictionary(pa.int32(), pa.string())
    return pa.string()


def _metadata(spec: FieldSpec) -> dict[bytes, bytes] | None:
    if spec.type != "integer":
        return None
    if _is_time(spec.name):
        return _EPOCH_MS_METADATA
    if spec.name.endswith("_ms"):
        return _DURATION_MS_METADATA
    return None


@cache
def archive_schema(family: str) -> pa.Schema:
    """The Arrow schema of one family's archive (`playback` or `signup`); ValueError for another name.

    Columns: `event_type` first, then every field of the family's event
    types in contract order; non-nullable exactly when every event type has
    the field. Schema metadata records the family and the contract version.
    """
    spec = families().get(family)
    if spec is None:
        raise ValueError(f"unknown event family {family!r}; expected one of {sorted(families())}")
    event_types = list(spec.event_types.values())
    first: dict[str, FieldSpec] = {}
    carried_by: dict[str, int] = {}
    for event_type in event_types:
        for field in event_type.fields:
            first.setdefault(field.name, field)
            carried_by[field.name] = carried_by.get(field.name, 0) + 1
    names = ["event_type", *(name for name in first if name != "event_type")]
    columns = [
        pa.field(
            name,
            _arrow_type(first[name]),
            nullable=carried_by[name] < len(event_types),
            metadata=_metadata(first[name]),
        )
        for name in names
    ]
    return pa.schema(
        columns,
        metadata={b"streampulse.family": family.encode(), b"streampulse.schema_version": str(SCHEMA_VERSION).encode()},
    )


def events_to_table(family: str, events: Sequence[Mapping[str, Any] | msgspec.Struct]) -> pa.Table:
    """Build an archive table of `family` from valid events, in order.

    `events` are dicts as JSON-decoded or decoded event Structs from
    `schemas.decoder`. A row gets only the fields of its own event type: an
    unknown extra key, even one named like another event type's field, is
    dropped (the contract ignores it). Raises ValueError for an event type
    not in the family, a missing field, or a value that does not fit its
    column (pyarrow's ArrowInvalid/ArrowTypeError subclass ValueError/TypeError).
    """
    schema = archive_schema(family)
    fields_of = _fields_by_event_type(family)
    rows: list[Mapping[str, Any]] = [
        event if isinstance(event, Mapping) else msgspec.to_builtins(event) for event in events
    ]
    try:
        row_fields = [fields_of[row["event_type"]] for row in rows]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"an event has no event_type of the {family} family ({exc!r})") from exc
    arrays = []
    for field in schema:
        name = field.name
        values = [row.get(name) if name in allowed else None for row, allowed in zip(rows, row_fields, strict=True)]
        array = pa.array(values, type=field.type)
        if array.null_count and any(
            value is None and name in allowed for value, allowed in zip(values, row_fields, strict=True)
        ):
            raise ValueError(f"a {family} event lacks its required field {name!r}")
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


@cache
def _fields_by_event_type(family: str) -> dict[str, frozenset[str]]:
    return {name: frozenset(spec.field_names) for name, spec in families()[family].event_types.items()}


@lru_cache(maxsize=4096)
def _day_string(day: int) -> str:
    """'YYYY-MM-DD' of a day number since 1970-01-01 (proleptic Gregorian; Hinnant's civil_from_days)."""
    z = day + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return f"{y:04d}-{m:02d}-{d:02d}"


_HOURS = tuple(f"{h:02d}" for h in range(24))


def archive_partition(event_time_ms: int) -> tuple[str, str]:
    """The archive partition of an event time: (UTC date 'YYYY-MM-DD', UTC hour 'HH')."""
    day, ms_of_day = divmod(event_time_ms, _MS_PER_DAY)
    return _day_string(day), _HOURS[ms_of_day // _MS_PER_HOUR]
