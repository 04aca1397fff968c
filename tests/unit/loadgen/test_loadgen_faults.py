"""Delivery faults appear in the stated amounts: duplicates, malformed messages of every kind, late and jittered events.

The produced file is read back with plain `json` and classified here, independently of the generator.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas import decoder
from schemas.contract import families
from streampulse.loadgen_cli import add_arguments, run

START_MS = 1_714_521_600_000
N = 30_000
JITTER_MS = 2_000
LATE_BY_MS = 120_000
FRACTIONS = {"duplicate": 0.02, "late": 0.01, "malformed": 0.0111}
SIZE_LIMIT = 64 * 1024
# Any event time this far past the run is "in the future" for a consumer reading the file.
FUTURE_MS = START_MS + 30 * 86_400_000
SPECS = {et: spec for f in families().values() for et, spec in f.event_types.items()}


def classify(raw: bytes) -> str:
    """'valid', or which contract rule the message breaks (named like loadgen's malformed kinds)."""
    if len(raw) > SIZE_LIMIT:
        return "oversized"
    try:
        ev = json.loads(raw)
    except ValueError:
        return "bad_json"
    if not isinstance(ev, dict):
        return "not_an_object"
    if ev.get("schema_version") != 1:
        return "bad_schema_version"
    spec = SPECS.get(ev.get("event_type"))  # type: ignore[arg-type]
    if spec is None:
        return "unknown_event_type"
    for f in spec.fields:
        if f.name not in ev:
            return "missing_field"
        value = ev[f.name]
        if (f.type == "integer") != (isinstance(value, int) and not isinstance(value, bool)):
            return "wrong_type"
        if f.enum is not None and value not in f.enum:
            return "bad_enum"
        if f.pattern is not None and not re.fullmatch(f.pattern.strip("^$"), value):
            return "bad_country"
        if f.minimum is not None and value < f.minimum:
            return "negative_duration"
    if ev["event_time_ms"] > FUTURE_MS:
        return "future_event_time"
    return "valid"


@dataclass
class Produced:
    lines: list[bytes]
    truth: dict[str, Any]
    kinds: list[str] = field(default_factory=list)


def produce(tmp_path: Path, extra: list[str]) -> Produced:
    out, truth = tmp_path / "events.jsonl", tmp_path / "truth.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--seed", "8", "--events", str(N), "--start", str(START_MS), "--span", "1h"]
    argv += ["--out", str(out), "--truth", str(truth), *extra]
    assert run(parser.parse_args(argv)) == 0
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    produced = Produced(lines[:-1], json.loads(truth.read_bytes()))
    produced.kinds = [classify(line) for line in produced.lines]
    return produced


FAULT_ARGS = [
    "--jitter-ms", str(JITTER_MS),
    "--late-fraction", str(FRACTIONS["late"]), "--late-by-ms", str(LATE_BY_MS),
    "--duplicate-fraction", str(FRACTIONS["duplicate"]),
    "--malformed-fraction", str(FRACTIONS["malformed"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Produced:
    return produce(tmp_path_factory.mktemp("faults"), FAULT_ARGS)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Produced:
    return produce(tmp_path_factory.mktemp("clean"), [])


def test_no_faults_unless_asked(clean: Produced) -> None:
    assert len(clean.lines) == N
    assert set(clean.kinds) == {"valid"}
    ids = [json.loads(line)["event_id"] for line in clean.lines]
    assert len(set(ids)) == N
    times = [json.loads(line)["event_time_ms"] for line in clean.lines]
    assert times == sorted(times)
    t = clean.truth
    assert t["duplicates"]["count"] == t["late"]["count"] == t["malformed"]["count"] == 0


def test_faults_leave_the_valid_events_themselves_unchanged(clean: Produced, faulty: Produced) -> None:
    valid = {line for line, kind in zip(faulty.lines, faulty.kinds, strict=True) if kind == "valid"}
    assert valid == set(clean.lines)


def test_duplicates_are_the_same_bytes_again(faulty: Produced) -> None:
    first: dict[str, bytes] = {}
    dups: list[str] = []
    for line, kind in zip(faulty.lines, faulty.kinds, strict=True):
        if kind != "valid":
            continue
        event_id = json.loads(line)["event_id"]
        if event_id in first:
            assert first[event_id] == line
            dups.append(event_id)
        else:
            first[event_id] = line
    assert len(first) == N
    assert abs(len(dups) - FRACTIONS["duplicate"] * N) <= 1
    assert faulty.truth["duplicates"]["count"] == len(dups)
    assert [d["event_id"] for d in faulty.truth["duplicates"]["events"]] == dups


def test_malformed_messages_of_every_kind(faulty: Produced) -> None:
    found = Counter(kind for kind in faulty.kinds if kind != "valid")
    stated = faulty.truth["malformed"]
    assert abs(sum(found.values()) - FRACTIONS["malformed"] * N) <= 1
    assert stated["count"] == sum(found.values())
    assert {k: v for k, v in stated["by_kind"].items() if v} == dict(found)
    assert len(found) == 11 and min(found.values()) >= 30 - 1  # cycled evenly through every kind
    assert set(stated["by_family"]) == {"playback", "signup"}


def test_every_malformed_message_is_rejected_by_the_decoder_for_the_stated_reason(tmp_path: Path) -> None:
    from loadgen.api import generate
    from loadgen.config import FaultConfig
    from loadgen.malformed import EXPECTED_REASON

    g = generate(
        seed=9, events=5_000, start_ms=START_MS, span_ms=3_600_000, faults=FaultConfig(malformed_fraction=0.05)
    )
    decoders = {f: decoder.EventDecoder(f) for f in families()}
    now = START_MS + 2 * 3_600_000
    reasons: Counter[str] = Counter()
    for m in g.messages:
        result = decoders[m.family].decode(m.value, now)
        if m.kind == "malformed":
            assert type(result) is decoder.Rejection, m.value[:200]
            reasons[result.reason] += 1
        else:
            assert type(result) is not decoder.Rejection
    assert dict(reasons) == {r: n for r, n in g.truth["malformed"]["by_reason"].items() if n}
    assert set(reasons) == set(EXPECTED_REASON.values())


def behind_ms(lines: list[bytes], kinds: list[str]) -> list[tuple[str, int, int]]:
    """For each first delivery of a valid event: (event_id, event time, how far that is behind the newest
    event time delivered before it). Re-delivered copies are left out."""
    newest = -1
    seen: set[str] = set()
    out = []
    for line, kind in zip(lines, kinds, strict=True):
        if kind != "valid":
            continue
        ev = json.loads(line)
        if ev["event_id"] in seen:
            continue
        seen.add(ev["event_id"])
        out.append((ev["event_id"], ev["event_time_ms"], max(0, newest - ev["event_time_ms"])))
        newest = max(newest, ev["event_time_ms"])
    return out


def test_late_events_arrive_much_later_others_within_the_jitter_bound(faulty: Produced) -> None:
    deliveries = behind_ms(faulty.lines, faulty.kinds)
    last = max(t for _, t, _ in deliveries)
    late: list[str] = []
    for event_id, t, behind in deliveries:
        if behind > JITTER_MS:
            # Late by LATE_BY_MS, or held back until the end of the run when that comes first.
            assert behind > min(LATE_BY_MS, last - t) - JITTER_MS - 10_000, (event_id, behind)
            late.append(event_id)
    assert abs(len(late) - FRACTIONS["late"] * N) <= 1
    stated = faulty.truth["late"]
    assert stated["count"] == len(late)
    assert [e["event_id"] for e in stated["events"]] == late
    for e in stated["events"]:
        assert LATE_BY_MS <= e["delay_ms"] <= LATE_BY_MS + JITTER_MS
        assert e["windows"]["10s"] == e["event_time_ms"] // 10_000 * 10_000
        assert e["windows"]["1m"] == e["event_time_ms"] // 60_000 * 60_000


def test_jitter_delivers_out_of_order_within_the_bound(faulty: Produced) -> None:
    behind = [b for _, _, b in behind_ms(faulty.lines, faulty.kinds)]
    reordered = sum(1 for b in behind if 0 < b <= JITTER_MS)
    assert reordered > N / 10
    assert faulty.truth["totals"]["out_of_order"] == sum(1 for b in behind if b > 0)


def test_messages_total(faulty: Produced) -> None:
    t = faulty.truth
    assert t["totals"]["valid_events"] == N
    assert t["totals"]["messages"] == len(faulty.lines)
    assert len(faulty.lines) == N + t["duplicates"]["count"] + t["malformed"]["count"]
