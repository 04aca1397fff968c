"""Malformed messages: one of each kind the decoder must reject, made from a real event so they look plausible.

Kinds are used in a fixed cycle (the i-th malformed message is of kind
`KINDS[i % len(KINDS)]`), so a run's mix is deterministic and every kind
appears as soon as there are `len(KINDS)` malformed messages. Families
alternate too (the i-th is made from the latest event of family
`FAMILIES[i % 2]`, when one has been seen), so both topics get every kind
(`negative_duration` is always a playback event: sign-ups have no duration).
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.contract import FAMILIES, enum_values, families, family_of

KINDS: tuple[str, ...] = (
    "bad_json",
    "not_an_object",
    "wrong_type",
    "missing_field",
    "unknown_event_type",
    "bad_enum",
    "bad_country",
    "negative_duration",
    "bad_schema_version",
    "oversized",
    "future_event_time",
)
# The `Rejection.reason` that schemas.decoder gives each kind (the flows count dead letters by reason).
EXPECTED_REASON: dict[str, str] = {
    "bad_json": "malformed_json",
    "not_an_object": "not_an_object",
    "wrong_type": "wrong_type",
    "missing_field": "missing_field",
    "unknown_event_type": "unknown_event_type",
    "bad_enum": "bad_enum",
    "bad_country": "bad_format",
    "negative_duration": "out_of_range",
    "bad_schema_version": "unsupported_schema_version",
    "oversized": "too_large",
    "future_event_time": "future_event_time",
}
assert set(EXPECTED_REASON) == set(KINDS)
SIZE_LIMIT = 64 * 1024
# Far enough ahead that no wall clock a consumer could have makes it plausible (but still a valid int).
FUTURE_BY_MS = 50 * 365 * 86_400_000

_UNKNOWN_TYPES = {"playback": "play_rewind", "signup": "signup_paused"}
_BAD_DEVICE = "smart_fridge"
for _t in _UNKNOWN_TYPES.values():
    assert family_of(_t) is None, f"{_t} became a real event type; pick another unknown one"
assert _BAD_DEVICE not in enum_values("device_type")


def _duration_field(event_type: str) -> str | None:
    """A field of `event_type` that is a duration (integer milliseconds, minimum 0), per the contract."""
    family = family_of(event_type)
    if family is None:
        return None
    for spec in families()[family].event_types[event_type].fields:
        if spec.type == "integer" and spec.minimum == 0 and spec.name.endswith("_ms") and spec.name != "event_time_ms":
            return spec.name
    return None


class Malformer:
    """Builds the malformed messages of one run."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.count = 0
        self._duration_template: dict[str, Any] | None = None
        self._latest: dict[str, dict[str, Any]] = {}

    def observe(self, event: dict[str, Any]) -> None:
        """Remember recent events: the latest of each family, and one with a duration field."""
        event_type = event["event_type"]
        self._latest[family_of(event_type) or FAMILIES[0]] = event
        if _duration_field(event_type) is not None:
            self._duration_template = event

    def make(self, current: dict[str, Any]) -> tuple[str, str, str | None, bytes]:
        """The next malformed message, made from recent events: (kind, family, kafka key, bytes)."""
        kind = KINDS[self.count % len(KINDS)]
        n = self.count
        self.count += 1
        template = self._latest.get(FAMILIES[n % len(FAMILIES)], current)
        if kind == "negative_duration" and _duration_field(template["event_type"]) is None:
            template = self._duration_template or _synthetic_heartbeat(template)
        family = family_of(template["event_type"]) or "playback"
        key_field = families()[family].key_field
        key = template.get(key_field)
        ev = dict(template)
        ev["event_id"] = f"{self.tag}-bad{n:x}"
        if kind == "bad_json":
            raw = orjson.dumps(ev)
            return kind, family, key, raw[: len(raw) // 2]
        if kind == "not_an_object":
            return kind, family, key, orjson.dumps([ev])
        if kind == "wrong_type":
            ev["event_time_ms"] = str(ev["event_time_ms"])
        elif kind == "missing_field":
            del ev[key_field]
        elif kind == "unknown_event_type":
            ev["event_type"] = _UNKNOWN_TYPES[family]
        elif kind == "bad_enum":
            ev["device_type"] = _BAD_DEVICE
        elif kind == "bad_country":
            ev["country"] = ev["country"].lower()
        elif kind == "negative_duration":
            field = _duration_field(ev["event_type"])
            assert field is not None
            ev[field] = -1 - int(ev[field])
        elif kind == "bad_schema_version":
            ev["schema_version"] = 2
        elif kind == "oversized":
            ev["padding"] = "x" * (SIZE_LIMIT + 1024)  # an extra field is legal; only the size is not
        elif kind == "future_event_time":
            ev["event_time_ms"] = ev["event_time_ms"] + FUTURE_BY_MS
        return kind, family, key, orjson.dumps(ev)


def _synthetic_heartbeat(template: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat with the template's common fields, for when no event with a duration has gone by yet."""
    spec = families()["playback"].event_types["heartbeat"]
    ev: dict[str, Any] = {}
    for field in spec.fields:
        if field.name in template:
            ev[field.name] = template[field.name]
        elif field.const is not None:
            ev[field.name] = field.const
        elif field.type == "integer":
            ev[field.name] = 1000
        else:
            ev[field.name] = f"{template['event_id']}-x"
    ev["event_type"] = "heartbeat"
    return ev
