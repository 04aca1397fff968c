"""The event classes: one frozen msgspec Struct per event type of the contract, built at import.

Each family's event types form a tagged union on `event_type`, so one
`msgspec.json.Decoder.decode` call parses, picks the event type and checks
every constraint (types, ranges, enums, lengths, patterns) without building a
dict. Contract constraints become `msgspec.Meta`, enums and consts `Literal`s,
and a pattern with a small finite language (`country`: `^[A-Z]{2}$`) the
`Literal` of its strings (schemas/patterns.py).

Each class is an attribute of this module (e.g. `schemas.event_structs.PlayStart`)
so events pickle; schemas/decoder.py is where callers import them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, Union

import msgspec

from schemas.contract import FieldSpec, families
from schemas.patterns import ecma_pattern, finite_language

__all__ = [
    "EVENT_CLASSES",
    "INT_FIELDS",
    "JSON_DECODERS",
    "UNIONS",
    "Event",
    "EventStruct",
    "field_type",
    "struct_for",
]


class EventStruct(msgspec.Struct, frozen=True, gc=False, tag_field="event_type"):
    """Base of every decoded event class; the fields come from the contract.

    `event_type` is a class attribute (the tagged union's tag), not a field.
    """

    event_type: ClassVar[str]
    # Keys of an event of this class without unknown fields: its fields and `event_type`.
    key_count: ClassVar[int]

    if TYPE_CHECKING:
        # The fields are built at import from the contract, so static checkers cannot know them.
        def __getattr__(self, name: str) -> Any: ...


Event = EventStruct
"""Static type of a decoded event (every event class derives from it)."""


def field_type(spec: FieldSpec) -> Any:
    """The msgspec type of one contract field: constraints become `Meta`, enums and consts `Literal`."""
    if spec.const is not None:
        return Literal[spec.const]
    if spec.enum is not None:
        return Literal[spec.enum]
    if spec.pattern is not None and spec.min_length is None and spec.max_length is None:
        language = finite_language(spec.pattern)
        if language is not None:
            return Literal[language]
    base: type = int if spec.type == "integer" else str
    meta: dict[str, Any] = {}
    if spec.minimum is not None:
        meta["ge"] = spec.minimum
    if spec.maximum is not None:
        meta["le"] = spec.maximum
    if spec.min_length is not None:
        meta["min_length"] = spec.min_length
    if spec.max_length is not None:
        meta["max_length"] = spec.max_length
    if spec.pattern is not None:
        meta["pattern"] = ecma_pattern(spec.pattern)
    return Annotated[base, msgspec.Meta(**meta)] if meta else base


def _class_name(event_type: str) -> str:
    return "".join(part.capitalize() for part in event_type.split("_"))


def _build_classes() -> dict[str, dict[str, type[EventStruct]]]:
    classes: dict[str, dict[str, type[EventStruct]]] = {}
    for family in families().values():
        by_type: dict[str, type[EventStruct]] = {}
        for event_type, spec in family.event_types.items():
            fields = [(f.name, field_type(f)) for f in spec.fields if f.name != "event_type"]
            cls = msgspec.defstruct(
                _class_name(event_type),
                fields,
                bases=(EventStruct,),
                tag=event_type,
                namespace={"event_type": event_type, "key_count": len(fields) + 1, "__doc__": spec.description or None},
                module=__name__,
            )
            by_type[event_type] = cls  # type: ignore[assignment]  # defstruct is typed as returning type[Struct]
        classes[family.name] = by_type
    return classes


_CLASSES = _build_classes()
for _by_type in _CLASSES.values():
    for _cls in _by_type.values():
        # pickle (bytewax snapshots, exchanges between workers) finds a class by module and name.
        if _cls.__name__ in globals():
            raise RuntimeError(f"event class name {_cls.__name__} collides with a name in {__name__}")
        globals()[_cls.__name__] = _cls

EVENT_CLASSES: Final[Mapping[str, Mapping[str, type[EventStruct]]]] = MappingProxyType(
    {family: MappingProxyType(by_type) for family, by_type in _CLASSES.items()}
)
"""family -> event_type -> the Struct class events of that type decode to."""

_BY_EVENT_TYPE: Final[dict[str, type[EventStruct]]] = {
    event_type: cls for by_type in _CLASSES.values() for event_type, cls in by_type.items()
}

# Names of the integer fields of each class: where an integral float may be converted (error path only).
INT_FIELDS: Final[dict[type[EventStruct], frozenset[str]]] = {
    _BY_EVENT_TYPE[spec.event_type]: frozenset(f.name for f in spec.fields if f.type == "integer")
    for family in families().values()
    for spec in family.event_types.values()
}


def struct_for(event_type: str) -> type[EventStruct]:
    """The Struct class of an event type (any family); KeyError if it is not in the contract."""
    return _BY_EVENT_TYPE[event_type]


def _union(family: str) -> Any:
    return Union[tuple(_CLASSES[family].values())]  # noqa: UP007 - built at runtime, `|` needs two operands


# Each family's tagged union, and one Decoder of it shared by every EventDecoder: building one compiles the union.
UNIONS: Final[dict[str, Any]] = {family: _union(family) for family in _CLASSES}
JSON_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    family: msgspec.json.Decoder(union) for family, union in UNIONS.items()
}
