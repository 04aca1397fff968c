"""Scripted incidents: where, when and what goes wrong in the generated traffic.

An incident file (YAML or JSON) is a list of incidents, or an object with an
`incidents` list (and an optional `description`)::

    - name: br-cdn2-failures
      start: "+5m"            # after the run start; or epoch ms; or ISO 8601 "2024-05-01T20:00:00Z"
      duration: "3m"          # or `end:` in the same forms as `start`
      where: {country: BR, cdn: c2}          # a value or a list of values per dimension
      effect: {start_failure_multiplier: 10}

Dimensions of `where`: country, device_type, cdn, title_id (playback), and
channel, plan, payment_method (sign-up); `title_rank: N` names the run's N-th
most popular title (1 = the most watched; title ids are shuffled per seed). A dimension an event family does
not have never matches, so an incident scoped by `cdn` leaves sign-ups alone.
An effect changes only events whose event time falls in [start, end): an
extra rebuffer or playback error happens inside it (the rate is multiplied
over the part of a heartbeat interval it covers); a start fails, comes later
or is dropped only when every event that changes (the attempt, the start, the
failure) lies inside it; a payment is declined when its outcome is. Events just
before the start and just after the end are those of a run without the
incident (tests/unit/loadgen/test_loadgen_incident_edges.py).

Effects (all optional; several incidents overlapping multiply):

- `start_failure_multiplier` (x the start-failure probability of an attempt),
  `start_failure_error_code` (the error code of the extra failures);
- `starts_drop` (fraction 0..1 of attempts that never happen at all);
- `startup_ms_multiplier` (x startup time);
- `rebuffer_multiplier` (x rebuffer probability during playback);
- `play_error_multiplier` (x fatal playback-error probability),
  `play_error_code` (the error code of the extra errors);
- `payment_decline_multiplier` (x the payment-decline probability);
- `starts_multiplier` (x the rate at which sessions in scope arrive: a
  premiere is a title's attempts, hence starts, x5 in one country). Unlike
  the others it moves arrivals, so from its start on the run's bytes differ
  from a run without it even outside its scope (the rates there do not).

Two flags say what kind of event it is, for whoever judges a detector with
the ground truth: `benign: true` marks an *expected* event (a premiere, a
promotion) that is not an incident; `persistent: true` (instead of `duration`
or `end`) makes it last to the end of the run (a CDN permanently degraded).

Ready scenarios live in `loadgen/scenarios/NAME.yaml` (`--scenario NAME`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from loadgen.world import CDNS
from schemas.contract import enum_values, families
from settings.durations import parse_duration_ms

PLAYBACK_DIMS: tuple[str, ...] = ("country", "device_type", "cdn", "title_id")
SIGNUP_DIMS: tuple[str, ...] = ("country", "device_type", "channel", "plan", "payment_method")
SCOPE_DIMS: tuple[str, ...] = ("country", "device_type", "cdn", "title_id", "channel", "plan", "payment_method")

_MULTIPLIERS = (
    "start_failure_multiplier",
    "startup_ms_multiplier",
    "rebuffer_multiplier",
    "play_error_multiplier",
    "payment_decline_multiplier",
    "starts_multiplier",
)
_CODES = ("start_failure_error_code", "play_error_code")
EFFECTS: tuple[str, ...] = (*_MULTIPLIERS, "starts_drop", *_CODES)


class IncidentError(ValueError):
    """An incident file or scenario that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Effect:
    """What an incident does; neutral values mean "no change"."""

    start_failure_multiplier: float = 1.0
    start_failure_error_code: str | None = None
    starts_drop: float = 0.0
    startup_ms_multiplier: float = 1.0
    rebuffer_multiplier: float = 1.0
    play_error_multiplier: float = 1.0
    play_error_code: str | None = None
    payment_decline_multiplier: float = 1.0
    starts_multiplier: float = 1.0


FOREVER_MS = 1 << 62
"""End of a persistent incident in a run without an end (realtime until stopped)."""


@dataclass(frozen=True)
class Incident:
    """One incident as scripted; `start`/`end` may still be relative to the run start."""

    name: str
    start: int | str
    end: int | str | None
    duration_ms: int | None
    where: tuple[tuple[str, tuple[str, ...]], ...]
    effect: Effect
    raw_effect: tuple[tuple[str, Any], ...] = field(default=())
    benign: bool = False
    """An expected event (a premiere), not an incident: a detector may see it but should not page for it."""
    persistent: bool = False
    """No end of its own: it lasts to the end of the run."""
    title_rank: int | None = None
    """Scope: the run's `title_rank`-th most popular title (resolved to its id with the run's catalogue)."""

    def resolve(
        self, run_start_ms: int, run_end_ms: int | None = None, title_at_rank: Callable[[int], str] | None = None
    ) -> ResolvedIncident:
        """Fix the incident's event-time range (and title) for a run over [run_start_ms, run_end_ms)."""
        start_ms = _resolve_time(self.start, run_start_ms, self.name, "start")
        if self.end is not None:
            end_ms = _resolve_time(self.end, run_start_ms, self.name, "end")
        elif self.duration_ms is not None:
            end_ms = start_ms + self.duration_ms
        else:  # persistent
            end_ms = max(run_end_ms if run_end_ms is not None else FOREVER_MS, start_ms + 1)
        if end_ms <= start_ms:
            raise IncidentError(f"incident {self.name!r}: it ends before it starts")
        where = dict(self.where)
        if self.title_rank is not None:
            if title_at_rank is None:
                raise IncidentError(f"incident {self.name!r}: where.title_rank needs the run's catalogue")
            where["title_id"] = (title_at_rank(self.title_rank),)
        return ResolvedIncident(
            self.name, start_ms, end_ms, where, self.effect, dict(self.raw_effect), self.benign, self.persistent
        )


@dataclass(frozen=True)
class ResolvedIncident:
    """An incident with absolute event times [start_ms, end_ms)."""

    name: str
    start_ms: int
    end_ms: int
    where: dict[str, tuple[str, ...]]
    effect: Effect
    raw_effect: dict[str, Any]
    benign: bool = False
    persistent: bool = False

    def matches(self, attrs: dict[str, str]) -> bool:
        """Whether an entity with these dimension values is in the incident's scope."""
        for dim, values in self.where.items():
            value = attrs.get(dim)
            if value is None or value not in values:
                return False
        return True

    def active(self, t_ms: int) -> bool:
        """Whether event time `t_ms` falls inside the incident."""
        return self.start_ms <= t_ms < self.end_ms

    def to_truth(self) -> dict[str, Any]:
        """The incident as the ground-truth file records it (`benign`, `persistent` only when true)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "where": {k: list(v) for k, v in self.where.items()},
            "effect": self.raw_effect,
        }
        if self.benign:
            doc["benign"] = True
        if self.persistent:
            doc["persistent"] = True
        return doc


_RELATIVE = re.compile(r"^\s*\+\s*(.+)$")


def _resolve_time(value: int | str, run_start_ms: int, name: str, what: str) -> int:
    if isinstance(value, int):
        return value
    match = _RELATIVE.match(value)
    if match:
        return run_start_ms + parse_duration_ms(match.group(1))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise IncidentError(
            f"incident {name!r}: {what} {value!r} is neither +DURATION (e.g. +5m), epoch ms nor ISO 8601"
        ) from None
    if parsed.tzinfo is None:
        raise IncidentError(f"incident {name!r}: {what} {value!r} needs a time zone, e.g. a trailing Z")
    return int(parsed.timestamp() * 1000)


def _time_field(raw: dict[str, Any], key: str, name: str) -> int | str | None:
    value = raw.get(key)
    if value is None or (isinstance(value, int | str) and not isinstance(value, bool)):
        if isinstance(value, str) and not _RELATIVE.match(value):
            _resolve_time(value, 0, name, key)  # validate absolute forms now, not mid-run
        return value
    raise IncidentError(f"incident {name!r}: {key} must be a string or epoch ms")


def _allowed_values(dim: str) -> tuple[str, ...] | None:
    if dim in ("device_type", "channel", "plan", "payment_method"):
        return enum_values(dim)
    if dim == "cdn":
        return CDNS
    return None


def _country_pattern() -> str:
    spec = families()["playback"].event_types["play_attempt"]
    return next(f.pattern for f in spec.fields if f.name == "country" and f.pattern)


def _title_rank(raw: Any, name: str) -> int | None:
    if not isinstance(raw, dict) or "title_rank" not in raw:
        return None
    rank = raw["title_rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise IncidentError(f"incident {name!r}: where.title_rank must be a popularity rank, 1 or more")
    if "title_id" in raw:
        raise IncidentError(f"incident {name!r}: give where.title_id or where.title_rank, not both")
    return rank


def _parse_where(raw: Any, name: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise IncidentError(f"incident {name!r}: where must be an object of dimension: value(s)")
    where = []
    for dim in sorted(raw):
        if dim == "title_rank":
            continue  # see _title_rank
        if dim not in SCOPE_DIMS:
            raise IncidentError(f"incident {name!r}: unknown dimension {dim!r}; use one of {', '.join(SCOPE_DIMS)}")
        value = raw[dim]
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values or not all(isinstance(v, str) for v in values):
            raise IncidentError(f"incident {name!r}: where.{dim} must be a string or a list of strings")
        allowed = _allowed_values(dim)
        for v in values:
            if allowed is not None and v not in allowed:
                raise IncidentError(f"incident {name!r}: where.{dim} = {v!r} is not one of {', '.join(allowed)}")
            if dim == "country" and not re.match(_country_pattern(), v):
                raise IncidentError(f"incident {name!r}: where.country = {v!r} is not an upper-case ISO code")
        where.append((dim, values))
    return tuple(where)


def _parse_effect(raw: Any, name: str) -> tuple[Effect, tuple[tuple[str, Any], ...]]:
    if not isinstance(raw, dict) or not raw:
        raise IncidentError(f"incident {name!r}: effect must be a non-empty object; effects: {', '.join(EFFECTS)}")
    values: dict[str, Any] = {}
    for key in sorted(raw):
        value = raw[key]
        if key in _MULTIPLIERS:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise IncidentError(f"incident {name!r}: effect.{key} must be a number >= 0")
            values[key] = float(value)
        elif key == "starts_drop":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise IncidentError(f"incident {name!r}: effect.starts_drop must be a fraction 0..1")
            values[key] = float(value)
        elif key in _CODES:
            if not isinstance(value, str) or not 1 <= len(value) <= 64:
                raise IncidentError(f"incident {name!r}: effect.{key} must be a code of 1..64 characters")
            values[key] = value
        else:
            raise IncidentError(f"incident {name!r}: unknown effect {key!r}; use one of {', '.join(EFFECTS)}")
    return Effect(**values), tuple((k, raw[k]) for k in sorted(raw))


def parse_incidents(doc: Any, source: str = "incidents") -> tuple[Incident, ...]:
    """Incidents from a parsed YAML/JSON document (a list, or an object with `incidents`)."""
    if isinstance(doc, dict):
        doc = doc.get("incidents")
    if not isinstance(doc, list):
        raise IncidentError(f"{source}: expected a list of incidents (or an object with an 'incidents' list)")
    incidents = []
    names: set[str] = set()
    for i, raw in enumerate(doc):
        if not isinstance(raw, dict):
            raise IncidentError(f"{source}: incident #{i + 1} is not an object")
        known = {"name", "start", "duration", "end", "where", "effect", "description", "benign", "persistent"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise IncidentError(f"{source}: incident #{i + 1} has unknown keys {unknown}")
        name = raw.get("name") or f"incident-{i + 1}"
        if not isinstance(name, str):
            raise IncidentError(f"{source}: incident #{i + 1}: name must be a string")
        if name in names:
            raise IncidentError(f"{source}: two incidents are named {name!r}")
        names.add(name)
        start = _time_field(raw, "start", name)
        end = _time_field(raw, "end", name)
        if start is None:
            raise IncidentError(f"incident {name!r}: start is required (e.g. +5m)")
        duration = raw.get("duration")
        flags = {key: raw.get(key, False) for key in ("benign", "persistent")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise IncidentError(f"incident {name!r}: {key} must be true or false")
        if sum((duration is not None, end is not None, flags["persistent"])) != 1:
            raise IncidentError(f"incident {name!r}: give exactly one of duration, end and persistent: true")
        dur_ms = None
        if duration is not None:
            try:
                dur_ms = parse_duration_ms(str(duration))
            except ValueError as exc:
                raise IncidentError(f"incident {name!r}: {exc}") from None
            if dur_ms <= 0:
                raise IncidentError(f"incident {name!r}: duration must be longer than zero")
        effect, raw_effect = _parse_effect(raw.get("effect"), name)
        where = _parse_where(raw.get("where"), name)
        rank = _title_rank(raw.get("where"), name)
        incidents.append(Incident(name, start, end, dur_ms, where, effect, raw_effect, **flags, title_rank=rank))
    return tuple(incidents)


def load_incidents(path: str | Path) -> tuple[Incident, ...]:
    """Incidents from a YAML or JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise IncidentError(f"cannot read incidents file {path}: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise IncidentError(f"incidents file {path} is not valid YAML/JSON: {exc}") from None
    return parse_incidents(doc, str(path))


def scenario_names() -> list[str]:
    """Names of the ready-made scenarios shipped in loadgen/scenarios."""
    folder = resources.files("loadgen").joinpath("scenarios")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name: str) -> tuple[Incident, ...]:
    """The incidents of the ready-made scenario `name`."""
    if name not in scenario_names():
        raise IncidentError(f"no scenario named {name!r}; available: {', '.join(scenario_names())}")
    text = resources.files("loadgen").joinpath("scenarios", f"{name}.yaml").read_text(encoding="utf-8")
    return parse_incidents(yaml.safe_load(text), f"scenario {name}")


def scenario_description(name: str) -> str:
    """The one-paragraph description at the top of a scenario file."""
    text = resources.files("loadgen").joinpath("scenarios", f"{name}.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    return str(doc.get("description", "")) if isinstance(doc, dict) else ""
