"""Every generated event fits contract v1: JSON Schema, the decoder, the archive schema; and --events N is N."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from loadgen.api import Generated, generate
from loadgen.config import ModelParams
from schemas import arrow
from schemas.contract import families, family_of
from schemas.decoder import EventDecoder, Rejection
from streampulse.loadgen_cli import add_arguments, run

START_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z
HOUR_MS = 3_600_000


@cache
def schema_docs() -> tuple[dict[str, Any], Registry]:
    docs = {
        name: json.loads(resources.files("schemas").joinpath(name).read_text(encoding="utf-8"))
        for name in ("common.v1.schema.json", "playback.v1.schema.json", "signup.v1.schema.json")
    }
    registry: Registry = Registry().with_resources((name, Resource.from_contents(doc)) for name, doc in docs.items())
    return docs, registry


@cache
def validators() -> dict[str, Draft202012Validator]:
    """The family schemas as they are (oneOf over every event type)."""
    docs, registry = schema_docs()
    return {family: Draft202012Validator(docs[f"{family}.v1.schema.json"], registry=registry) for family in families()}


@cache
def type_validator(event_type: str) -> Draft202012Validator:
    """One event type's definition from the same files: ten times faster than the oneOf, for bulk checks."""
    _, registry = schema_docs()
    family = family_of(event_type)
    return Draft202012Validator({"$ref": f"{family}.v1.schema.json#/$defs/{event_type}"}, registry=registry)


@pytest.fixture(scope="module")
def generated() -> Generated:
    return generate(seed=5, events=40_000, start_ms=START_MS, span_ms=2 * HOUR_MS, rate=8.0)


def run_cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_every_event_type_of_the_contract_is_generated(generated: Generated) -> None:
    seen = Counter(m.event["event_type"] for m in generated.messages if m.event is not None)
    contract = {et for f in families().values() for et in f.event_types}
    assert set(seen) == contract


@pytest.fixture(scope="module")
def small() -> Generated:
    """Every event type, in few events: many sign-ups, short sessions."""
    params = ModelParams(signup_share=0.5, watch_median_ms=120_000)
    return generate(seed=6, events=6_000, start_ms=START_MS, span_ms=HOUR_MS, params=params, with_truth=False)


def test_every_event_validates_against_the_json_schema(small: Generated) -> None:
    # The family schema (oneOf over every type) for some of each type; for the rest the type's own definition
    # from the same files, which validates the same constraints ten times faster.
    by_type: Counter[str] = Counter()
    for m in small.messages:
        ev = json.loads(m.value)
        et = ev["event_type"]
        by_type[et] += 1
        validator = validators()[m.family] if by_type[et] <= 10 else type_validator(et)
        errors = list(validator.iter_errors(ev))
        assert not errors, (ev, [e.message for e in errors])
    assert set(by_type) == {et for f in families().values() for et in f.event_types}


def test_the_schema_check_can_fail(generated: Generated) -> None:
    ev = json.loads(generated.messages[0].value)
    ev["country"] = "br"
    assert list(validators()[generated.messages[0].family].iter_errors(ev))
    assert list(type_validator(ev["event_type"]).iter_errors(ev))


def test_events_have_exactly_their_contract_fields(generated: Generated) -> None:
    for m in generated.messages:
        ev = json.loads(m.value)
        family = family_of(ev["event_type"])
        assert family == m.family
        spec = families()[family].event_types[ev["event_type"]]
        assert set(ev) == set(spec.field_names), ev["event_type"]
        assert m.key == ev[families()[family].key_field]


def test_events_are_accepted_by_the_decoder(generated: Generated) -> None:
    decoders = {f: EventDecoder(f) for f in families()}
    now = START_MS + 3 * HOUR_MS
    for m in generated.messages:
        result = decoders[m.family].decode(m.value, now)
        assert type(result) is not Rejection, (m.value, result)


def test_event_ids_are_unique_and_times_ordered(generated: Generated) -> None:
    ids = [m.event["event_id"] for m in generated.messages if m.event is not None]
    assert len(ids) == len(set(ids)) == 40_000
    times = [m.delivery_ms for m in generated.messages]
    assert times == sorted(times)
    assert times[0] >= START_MS


@pytest.mark.parametrize("n", [1, 17, 5_000])
def test_events_n_writes_exactly_n_lines(tmp_path: Path, n: int) -> None:
    out = tmp_path / "events.jsonl"
    assert run_cli(["--seed", "3", "--events", str(n), "--out", str(out), "--start", str(START_MS)]) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == n
    assert all(json.loads(line)["schema_version"] == 1 for line in lines)


def test_events_n_is_exact_even_with_the_default_one_day_span(tmp_path: Path) -> None:
    # Few events over a day: the rate comes from N / span, and chance must not cut the run short.
    for seed in range(4):
        out = tmp_path / f"e{seed}.jsonl"
        assert run_cli(["--seed", str(seed), "--events", "3000", "--out", str(out), "--start", str(START_MS)]) == 0
        assert len(out.read_bytes().splitlines()) == 3000


def test_parquet_output_uses_the_archive_schema(tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    argv = ["--seed", "4", "--events", "3000", "--signup-share", "0.5", "--out", str(out), "--start", str(START_MS)]
    assert run_cli(argv) == 0
    total = 0
    types: Counter[str] = Counter()
    for family in families():
        path = tmp_path / f"events.{family}.parquet"
        table = pq.read_table(path)
        assert table.schema.equals(arrow.archive_schema(family), check_metadata=False)
        total += table.num_rows
        types.update(table.column("event_type").to_pylist())
    assert total == 3000
    assert types["heartbeat"] > 0 and types["signup_started"] > 0


def test_jsonl_per_family_files(tmp_path: Path) -> None:
    pattern = str(tmp_path / "out-{family}.jsonl")
    assert run_cli(["--seed", "4", "--events", "3000", "--out", pattern, "--start", str(START_MS)]) == 0
    total = 0
    for family in families():
        lines = (tmp_path / f"out-{family}.jsonl").read_bytes().splitlines()
        assert all(family_of(json.loads(line)["event_type"]) == family for line in lines)
        total += len(lines)
    assert total == 3000


def _all_values(ev: dict[str, Any]) -> list[Any]:
    return list(ev.values())


def test_values_are_in_range(generated: Generated) -> None:
    for m in generated.messages:
        ev = json.loads(m.value)
        for value in _all_values(ev):
            if isinstance(value, int):
                assert value >= 0
        if ev["event_type"] == "play_start":
            assert 0 < ev["startup_ms"] < 120_001
        if ev["event_type"] == "heartbeat":
            assert 0 <= ev["played_ms"] <= 30_000
