"""The step-by-step CPU accounting of `make bench` (bench/cpu_split.py), on stand-ins for the flow's steps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.cpu_split import DEAD_LETTERS, REST, START_UP, Accounts, out_path, table


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class _Step:
    def on_batch(self, seconds: float) -> str:
        _spin(seconds)
        return "done"


class RedisWindowWriter:
    """Named as the real writer: a sink's write is accounted under what its writer writes to."""


class DeadLetterWriter:
    """Named as the real writer, whose batches wait for the broker."""


class _LetterPartition:
    def __init__(self) -> None:
        self._writer = DeadLetterWriter()

    def write_batch(self, seconds: float) -> None:
        time.sleep(seconds)  # waiting for the broker: wall time, no CPU


class _Partition:
    def __init__(self) -> None:
        self._writer = RedisWindowWriter()

    def write_batch(self, seconds: float) -> None:
        _spin(seconds)


def test_each_step_s_cpu_seconds_and_calls_are_counted_under_its_name() -> None:
    accounts = Accounts()
    accounts.wrap(_Step, "on_batch", "window store: merge")
    accounts.wrap(_Partition, "write_batch", "sink")
    step, sink = _Step(), _Partition()
    assert step.on_batch(0.05) == "done"  # the wrapped call still returns what it returns
    step.on_batch(0.05)
    sink.write_batch(0.03)
    figures = accounts.as_dict()
    assert figures["calls"] == {"window store: merge": 2, "Redis: windows": 1}
    assert figures["cpu_s"]["window store: merge"] == pytest.approx(0.10, abs=0.02)
    assert figures["cpu_s"]["Redis: windows"] == pytest.approx(0.03, abs=0.02)
    # Start-up is the process's CPU before the first accounted call, so it holds none of the steps' 0.13 s. The
    # process's CPU comes in clock ticks (os.times: 10 ms here), so the two readings may lose a tick between them.
    assert figures["cpu_s"][START_UP] <= figures["total_cpu_s"] - 0.10


def test_a_step_s_wall_seconds_hold_its_waiting_and_the_table_shows_it() -> None:
    accounts = Accounts()
    accounts.wrap(_Step, "on_batch", "window store: merge")
    accounts.wrap(_LetterPartition, "write_batch", "sink")
    _Step().on_batch(0.05)
    _LetterPartition().write_batch(0.2)
    figures = accounts.as_dict()
    assert figures["wall_s"][DEAD_LETTERS] == pytest.approx(0.2, abs=0.05)
    assert figures["cpu_s"][DEAD_LETTERS] < 0.05
    assert figures["wall_s"]["window store: merge"] >= figures["cpu_s"]["window store: merge"]
    rows = {line.split(" | ")[0]: line for line in table([figures], ["p0"])}
    waited = float(rows["| wall s waiting in dead letters (for the broker)"].split(" | ")[1].rstrip(" |"))
    assert waited == pytest.approx(0.2, abs=0.05)


def test_a_cluster_s_processes_write_their_own_files() -> None:
    out = Path("/tmp/x/cpu-split-4p.json")
    assert out_path(out, ["run", "--exit-at-end"]) == out
    assert out_path(out, ["run", "--process-id", "3", "--addresses", "a;b"]) == Path("/tmp/x/cpu-split-4p-p3.json")


def test_the_table_has_a_row_per_step_and_the_rest_last() -> None:
    figures = [
        {"cpu_s": {START_UP: 0.5, "read": 1.0, REST: 0.2}, "total_cpu_s": 1.7},
        {"cpu_s": {START_UP: 0.6, "detector": 0.3, REST: 0.1}, "total_cpu_s": 1.0},
    ]
    lines = table(figures, ["p0", "p1"])
    assert lines[0] == "| step | p0 | p1 |"
    assert lines[2:] == [
        f"| {START_UP} | 0.50 | 0.60 |",
        "| read | 1.00 | 0.00 |",
        "| detector | 0.00 | 0.30 |",
        f"| {REST} | 0.20 | 0.10 |",
        "| **all** | **1.70** | **1.00** |",
        "| wall s waiting in dead letters (for the broker) | 0.00 | 0.00 |",
        "| wall s waiting in the other steps | 0.00 | 0.00 |",
    ]
