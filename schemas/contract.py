"""Event contract v1, read from the JSON Schema files beside this module.

The JSON Schema files are the single source of the contract: the decoder,
the Arrow schema of the archive, the load generator and the docs all derive
from the `FieldSpec`s built here. Only the subset of JSON Schema that the
contract uses is understood (type, const, enum, pattern, min/max length,
minimum/maximum, $ref to `$defs`); anything else is an error at import so
the schema and its readers cannot silently drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

SCHEMA_VERSION = 1
FAMILIES: tuple[str, ...] = ("playback", "signup")
Family = Literal["playback", "signup"]

_UNDERSTOOD_KEYS = {
    "type",
    "const",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "description",
}


@dataclass(frozen=True)
class FieldSpec:
    """The constraints on one field of one event type."""

    name: str
    type: Literal["string", "integer"]
    const: int | str | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class EventTypeSpec:
    """One `event_type` of a family: its fields, all required."""

    family: str
    event_type: str
    description: str
    fields: tuple[FieldSpec, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of the fields, `event_type` included."""
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True)
class FamilySpec:
    """A family of events sharing a topic and a message key."""

    name: str
    default_topic: str
    key_field: str
    event_types: dict[str, EventTypeSpec]


def _load_json(filename: str) -> dict[str, Any]:
    text = resources.files(__package__ or "schemas").joinpath(filename).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def _resolve(ref: str, current_file: str) -> dict[str, Any]:
    filename, _, pointer = ref.partition("#")
    doc = _load_json(filename or current_file)
    node: Any = doc
    for part in pointer.strip("/").split("/"):
        node = node[part]
    if not isinstance(node, dict):
        raise ValueError(f"$ref {ref!r} in {current_file} does not point at an object")
    return node


def _field_spec(name: str, node: dict[str, Any], current_file: str) -> FieldSpec:
    if "$ref" in node:
        node = _resolve(node["$ref"], current_file)
    unknown = set(node) - _UNDERSTOOD_KEYS
    if unknown:
        raise ValueError(f"field {name!r} in {current_file} uses unsupported JSON Schema keys {sorted(unknown)}")
    const = node.get("const")
    if const is not None:
        type_ = "integer" if isinstance(const, int) else "string"
    else:
        type_ = node["type"]
    field_type: Literal["string", "integer"]
    if type_ == "string":
        field_type = "string"
    elif type_ == "integer":
        field_type = "integer"
    else:
        raise ValueError(f"field {name!r} in {current_file} has unsupported type {type_!r}")
    enum = node.get("enum")
    return FieldSpec(
        name=name,
        type=field_type,
        const=const,
        enum=tuple(enum) if enum is not None else None,
        pattern=node.get("pattern"),
        min_length=node.get("minLength"),
        max_length=node.get("maxLength"),
        minimum=node.get("minimum"),
        maximum=node.get("maximum"),
    )


def _family(name: str) -> FamilySpec:
    filename = f"{name}.v{SCHEMA_VERSION}.schema.json"
    doc = _load_json(filename)
    event_types: dict[str, EventTypeSpec] = {}
    for option in doc["oneOf"]:
        node = _resolve(option["$ref"], filename)
        props: dict[str, Any] = node["properties"]
        event_type = props["event_type"]["const"]
        missing = set(props) - set(node["required"])
        if missing:
            raise ValueError(f"{filename}: {event_type} has optional fields {sorted(missing)}; v1 has none")
        fields = tuple(_field_spec(field, spec, filename) for field, spec in props.items())
        event_types[event_type] = EventTypeSpec(name, event_type, node.get("description", ""), fields)
    return FamilySpec(
        name=name,
        default_topic=doc["x-kafka-topic-default"],
        key_field=doc["x-kafka-key"],
        event_types=event_types,
    )


@cache
def families() -> dict[str, FamilySpec]:
    """Every family of contract v1, by name."""
    return {name: _family(name) for name in FAMILIES}


def family_of(event_type: str) -> str | None:
    """The family an `event_type` belongs to, or None if it is not in the contract."""
    for spec in families().values():
        if event_type in spec.event_types:
            return spec.name
    return None


def enum_values(field: str) -> tuple[str, ...]:
    """The allowed values of an enum field (e.g. `device_type`, `plan`)."""
    for spec in families().values():
        for event in spec.event_types.values():
            for f in event.fields:
                if f.name == field and f.enum is not None:
                    return f.enum
    raise KeyError(f"no enum field named {field!r} in contract v{SCHEMA_VERSION}")
