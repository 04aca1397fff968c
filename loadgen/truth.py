"""Ground truth: exact aggregates of what the load generator produced, for comparing the flows against.

The file format is documented in `loadgen/TRUTH.md` and is stable: tests in
other parts of the project read it. Version 1.

Aggregates count every distinct valid event once (a re-delivered copy is not
counted again; malformed messages are left out), whether it was delivered on
time or late; the late ones are listed separately and also aggregated on
their own, so "what an on-time-only consumer should see" is the difference.

Accumulation happens at the greatest common divisor of the window lengths and
is rolled up to each length at the end, because per-event work is what limits
the generator's speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import compress
from typing import Any

from loadgen.truth_concurrency import SessionConcurrency
from schemas.contract import families

FORMAT = "streampulse-loadgen-truth"
VERSION = 1

Event = dict[str, Any]

_EVENT_TYPES: tuple[str, ...] = tuple(et for f in families().values() for et in f.event_types)
_ET_INDEX = {et: i for i, et in enumerate(_EVENT_TYPES)}
_N = len(_EVENT_TYPES)
# Scalar slots after the per-event-type counts.
_STARTUP_SUM = _N
_REBUFFER_MS = _N + 1
_PLAYED_MS = _N + 2
_HB_PLAYED_MS = _N + 3
_BITRATE_WEIGHTED = _N + 4
_DOWNSHIFTS = _N + 5
_DIMS = _N + 6
_CELL_LEN = _N + 7

_PLAY_ATTEMPT = _ET_INDEX["play_attempt"]
_PLAY_START = _ET_INDEX["play_start"]
_START_FAILURE = _ET_INDEX["start_failure"]
_HEARTBEAT = _ET_INDEX["heartbeat"]
_REBUFFER = _ET_INDEX["rebuffer"]
_BITRATE_CHANGE = _ET_INDEX["bitrate_change"]
_PLAY_ERROR = _ET_INDEX["play_error"]
_PLAY_STOP = _ET_INDEX["play_stop"]
_SIGNUP_STARTED = _ET_INDEX["signup_started"]
_PLAN_SELECTED = _ET_INDEX["plan_selected"]
_PAYMENT_SUBMITTED = _ET_INDEX["payment_submitted"]
_SIGNUP_COMPLETED = _ET_INDEX["signup_completed"]
_SIGNUP_FAILED = _ET_INDEX["signup_failed"]
_DECLINED = "payment_declined"
_FAMILY_OF = {et: f.name for f in families().values() for et in f.event_types}

# Scalar metrics: (name in the file, slot).
_SCALARS: tuple[tuple[str, int], ...] = (
    ("startup_ms_sum", _STARTUP_SUM),
    ("rebuffer_ms_sum", _REBUFFER_MS),
    ("played_ms_sum", _PLAYED_MS),
    ("heartbeat_played_ms_sum", _HB_PLAYED_MS),
    ("heartbeat_bitrate_weighted_sum", _BITRATE_WEIGHTED),
    ("bitrate_downshifts", _DOWNSHIFTS),
)
# Counts of one event type published under a metric name of their own.
_TYPE_METRICS: tuple[tuple[str, int], ...] = (
    ("play_attempts", _PLAY_ATTEMPT),
    ("startup_ms_count", _PLAY_START),
    ("rebuffers", _REBUFFER),
)


def window_label(window_ms: int) -> str:
    """`10000` -> "10s", `60000` -> "1m", `3600000` -> "1h" (milliseconds when nothing rounder fits)."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if window_ms % size == 0:
            return f"{window_ms // size}{unit}"
    return f"{window_ms}ms"


def _new_cell() -> list[Any]:
    cell: list[Any] = [0] * _CELL_LEN
    cell[_DIMS] = {}
    return cell


class _Aggregates:
    """Per (base window, country, device_type) counters."""

    def __init__(self, base_ms: int) -> None:
        self.base_ms = base_ms
        self.cells: dict[tuple[int, str, str], list[Any]] = {}

    def add(self, events: list[Event], hidden: dict[str, dict[str, str]] | None) -> None:
        base = self.base_ms
        cells = self.cells
        index = _ET_INDEX
        for ev in events:
            t = ev["event_time_ms"]
            key = (t - t % base, ev["country"], ev["device_type"])
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = _new_cell()
            i = index[ev["event_type"]]
            cell[i] += 1
            if i == _HEARTBEAT:
                played = ev["played_ms"]
                cell[_PLAYED_MS] += played
                cell[_HB_PLAYED_MS] += played
                cell[_BITRATE_WEIGHTED] += played * ev["bitrate_kbps"]
            elif i == _PLAY_ATTEMPT:
                continue
            elif i == _PLAY_START:
                cell[_STARTUP_SUM] += ev["startup_ms"]
                _bump(cell[_DIMS], ("stream_starts", ev["cdn"]))
                _bump(cell[_DIMS], ("title_starts", ev["title_id"]))
            elif i == _REBUFFER:
                cell[_REBUFFER_MS] += ev["rebuffer_ms"]
            elif i == _BITRATE_CHANGE:
                if ev["bitrate_kbps"] < ev["previous_bitrate_kbps"]:
                    cell[_DOWNSHIFTS] += 1
            elif i == _PLAY_STOP:
                cell[_PLAYED_MS] += ev["played_ms"]
            elif i == _START_FAILURE:
                dims = cell[_DIMS]
                _bump(dims, ("start_failures", ev["error_code"]))
                side = hidden.get(ev["event_id"]) if hidden is not None else None
                if side is not None:
                    _bump(dims, ("start_failures_by_cdn", side["cdn"]))
            elif i == _PLAY_ERROR:
                _bump(cell[_DIMS], ("playback_errors", ev["error_code"]))
            elif i == _SIGNUP_STARTED:
                _bump(cell[_DIMS], ("signups_started", ev["channel"]))
            elif i == _PLAN_SELECTED:
                _bump(cell[_DIMS], ("plans_selected", ev["channel"], ev["plan"]))
            elif i == _PAYMENT_SUBMITTED:
                _bump(cell[_DIMS], ("payments_submitted", ev["payment_method"]))
            elif i == _SIGNUP_COMPLETED:
                dims = cell[_DIMS]
                _bump(dims, ("signups_completed", ev["channel"], ev["plan"]))
                _bump(dims, ("new_subscription_value_cents", ev["plan"], ev["currency"]), ev["price_cents"])
            elif i == _SIGNUP_FAILED:
                dims = cell[_DIMS]
                reason = ev["failure_reason"]
                _bump(dims, ("signups_failed", ev["channel"], reason))
                side = hidden.get(ev["event_id"]) if hidden is not None else None
                if side is not None:
                    if "plan" in side:
                        _bump(dims, ("signups_failed_by_plan", side["plan"]))
                    if reason == _DECLINED and "payment_method" in side:
                        _bump(dims, ("payment_declines", side["payment_method"]))

    def rolled_up(self, window_ms: int) -> dict[tuple[int, str, str], list[Any]]:
        """The cells merged into windows of `window_ms` (a multiple of the base)."""
        if window_ms == self.base_ms:
            return self.cells
        out: dict[tuple[int, str, str], list[Any]] = {}
        for (w, country, device), cell in self.cells.items():
            key = (w - w % window_ms, country, device)
            target = out.get(key)
            if target is None:
                target = out[key] = _new_cell()
            for i in range(_DIMS):
                target[i] += cell[i]
            dims = target[_DIMS]
            for k, v in cell[_DIMS].items():
                dims[k] = dims.get(k, 0) + v
        return out


def _bump(dims: dict[tuple[str, ...], int], key: tuple[str, ...], by: int = 1) -> None:
    dims[key] = dims.get(key, 0) + by


_SLOT_IDS = range(_DIMS)
# Where each slot goes in the file: ("events", event_type) or (metric name, None).
_SLOT_NAMES: list[tuple[str, str | None]] = [("events", et) for et in _EVENT_TYPES] + [("", None)] * (_DIMS - _N)
for _name, _slot in _SCALARS:
    _SLOT_NAMES[_slot] = (_name, None)
_ALIASES: dict[int, str] = dict((slot, name) for name, slot in _TYPE_METRICS)


def _fill_cell(out: dict[str, Any], cell: list[Any]) -> None:
    """Write a cell's non-zero metrics into `out` (absent means zero)."""
    events: dict[str, int] | None = None
    for slot in compress(_SLOT_IDS, cell):
        name, sub = _SLOT_NAMES[slot]
        value = cell[slot]
        if sub is None:
            out[name] = value
        else:
            if events is None:
                events = out["events"] = {}
            events[sub] = value
            alias = _ALIASES.get(slot)
            if alias is not None:
                out[alias] = value
    dims = cell[_DIMS]
    if dims:
        for key in sorted(dims):
            node = out
            for part in key[:-1]:
                sub_node = node.get(part)
                if sub_node is None:
                    sub_node = node[part] = {}
                node = sub_node
            node[key[-1]] = dims[key]


def _late_order(rec: LateRecord) -> int:
    return int(rec.event["event_time_ms"])


@dataclass
class LateRecord:
    """One event delivered late on purpose."""

    event: Event
    delay_ms: int
    behind_ms: int


class TruthBuilder:
    """Collects what a run produced; `document()` returns the ground-truth file's content."""

    def __init__(self, windows_ms: tuple[int, ...], timeout_ms: int) -> None:
        self.windows_ms = tuple(sorted(set(windows_ms)))
        base = 0
        for w in self.windows_ms:
            base = math.gcd(base, w)
        self.base_ms = base
        self.aggregates = _Aggregates(base)
        self.concurrency = SessionConcurrency(timeout_ms)
        self.hidden: dict[str, dict[str, str]] | None = None
        self.valid = 0
        self.by_event_type: dict[str, int] = dict.fromkeys(_EVENT_TYPES, 0)
        self.first_event_ms: int | None = None
        self.last_event_ms: int | None = None
        self.late: list[LateRecord] = []
        self.duplicates: list[tuple[Event, int]] = []
        self.malformed: dict[str, dict[str, int]] = {}
        self.out_of_order = 0
        self.messages = 0

    def add(self, events: list[Event]) -> None:
        """Count a batch of distinct valid events, in event-time order."""
        if not events:
            return
        self.aggregates.add(events, self.hidden)
        self.concurrency.add(events)
        self.valid += len(events)
        counts = self.by_event_type
        for ev in events:
            counts[ev["event_type"]] += 1
        if self.first_event_ms is None:
            self.first_event_ms = events[0]["event_time_ms"]
        self.last_event_ms = events[-1]["event_time_ms"]

    def add_late(self, event: Event, delay_ms: int, behind_ms: int) -> None:
        """Record a valid event delivered late on purpose (it is already counted by `add`)."""
        self.late.append(LateRecord(event, delay_ms, behind_ms))

    def add_duplicate(self, event: Event, delay_ms: int) -> None:
        """Record a re-delivered copy of a valid event."""
        self.duplicates.append((event, delay_ms))

    def add_malformed(self, kind: str, family: str) -> None:
        """Record one malformed message of `kind`, sent to `family`'s topic."""
        by_family = self.malformed.setdefault(kind, {})
        by_family[family] = by_family.get(family, 0) + 1

    def _windows_json(self, aggregates: _Aggregates, with_concurrency: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for window_ms in self.windows_ms:
            cells = aggregates.rolled_up(window_ms)
            concurrent = self.concurrency.windows(window_ms) if with_concurrency else {}
            # Group by window first: sorting a few cells per window beats sorting every (window, cell) key.
            by_window: dict[int, list[tuple[str, str]]] = {}
            for w, country, device in cells.keys() | concurrent.keys() if concurrent else cells.keys():
                group = by_window.get(w)
                if group is None:
                    group = by_window[w] = []
                group.append((country, device))
            windows: list[dict[str, Any]] = []
            for w in sorted(by_window):
                group = by_window[w]
                group.sort()
                current: list[dict[str, Any]] = []
                for country, device in group:
                    key = (w, country, device)
                    body: dict[str, Any] = {"country": country, "device_type": device}
                    cell = cells.get(key)
                    if cell is not None:
                        _fill_cell(body, cell)
                    n = concurrent.get(key)
                    if n is not None:
                        body["concurrent_streams"] = n
                    current.append(body)
                windows.append({"start_ms": w, "end_ms": w + window_ms, "cells": current})
            out[window_label(window_ms)] = {"window_ms": window_ms, "windows": windows}
        return out

    def windows_document(self, with_concurrency: bool = True) -> dict[str, Any]:
        """The `windows` part of the document alone: what a long run checks an hour at a time, without the rest."""
        return self._windows_json(self.aggregates, with_concurrency)

    def document(
        self,
        run: dict[str, Any],
        incidents: list[dict[str, Any]],
        malformed_reasons: dict[str, str],
        delivery: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ground-truth document (see loadgen/TRUTH.md)."""
        labels = [(window_label(w), w) for w in self.windows_ms]
        late_aggregates = _Aggregates(self.base_ms)
        late_aggregates.add([rec.event for rec in sorted(self.late, key=_late_order)], self.hidden)
        by_family: dict[str, int] = {}
        for et, n in self.by_event_type.items():
            by_family[_FAMILY_OF[et]] = by_family.get(_FAMILY_OF[et], 0) + n
        malformed_by_kind = {k: sum(self.malformed.get(k, {}).values()) for k in malformed_reasons}
        malformed_by_reason: dict[str, int] = {}
        for k, n in malformed_by_kind.items():
            reason = malformed_reasons[k]
            malformed_by_reason[reason] = malformed_by_reason.get(reason, 0) + n
        malformed_by_family: dict[str, int] = {}
        for per_family in self.malformed.values():
            for fam, n in per_family.items():
                malformed_by_family[fam] = malformed_by_family.get(fam, 0) + n
        dup_by_family: dict[str, int] = {}
        for ev, _ in self.duplicates:
            fam = _FAMILY_OF[ev["event_type"]]
            dup_by_family[fam] = dup_by_family.get(fam, 0) + 1
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "run": run,
            "totals": {
                "valid_events": self.valid,
                "messages": self.messages,
                "by_family": by_family,
                "by_event_type": self.by_event_type,
                "first_event_time_ms": self.first_event_ms,
                "last_event_time_ms": self.last_event_ms,
                "out_of_order": self.out_of_order,
            },
            "windows": self._windows_json(self.aggregates, with_concurrency=True),
            "late": {
                "count": len(self.late),
                "events": [
                    {
                        "event_id": r.event["event_id"],
                        "family": _FAMILY_OF[r.event["event_type"]],
                        "event_type": r.event["event_type"],
                        "event_time_ms": r.event["event_time_ms"],
                        "delay_ms": r.delay_ms,
                        "behind_ms": r.behind_ms,
                        "windows": {
                            label: r.event["event_time_ms"] - r.event["event_time_ms"] % w for label, w in labels
                        },
                    }
                    for r in self.late
                ],
                "windows": self._windows_json(late_aggregates, with_concurrency=False),
            },
            "duplicates": {
                "count": len(self.duplicates),
                "by_family": dup_by_family,
                "events": [
                    {"event_id": ev["event_id"], "event_time_ms": ev["event_time_ms"], "delay_ms": delay}
                    for ev, delay in self.duplicates
                ],
            },
            "malformed": {
                "count": sum(malformed_by_kind.values()),
                "by_kind": malformed_by_kind,
                "by_reason": malformed_by_reason,
                "by_family": malformed_by_family,
            },
            "incidents": incidents,
        }
        if delivery is not None:
            doc["delivery"] = delivery
        return doc
