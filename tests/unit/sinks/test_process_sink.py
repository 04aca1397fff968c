"""`ProcessSink` (sinks/base.py): one writer per process, items kept in the process that keyed them, settled per epoch.

The cluster test runs a real bytewax cluster of two processes on loopback, each with two workers: every worker
emits items keyed to its own process, and each process's writer records what it was handed and when it settled.
"""

from __future__ import annotations

import multiprocessing
import os
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.testing import cluster_main

from sinks.base import ProcessSink, Writer, process_part
from streampulse.cluster_join import wait_for_earlier_peers
from streampulse.processes import free_port

WORKERS = 2
ITEMS_PER_WORKER = 50


class Recording(Writer[str]):
    """Writes a line per item, and a line per settle and close, to a file of its process."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _log(self, lines: list[str]) -> None:
        with self._path.open("a", encoding="utf-8") as out:
            out.writelines(f"{line}\n" for line in lines)

    def write(self, items: list[str]) -> None:
        self._log(items)

    def settle(self) -> None:
        self._log(["settled"])

    def close(self) -> None:
        self._log(["closed"])


class _Numbered(StatelessSourcePartition[tuple[str, list[str]]]):
    """A worker's items, one per batch, each named by the process and worker that made it."""

    def __init__(self, process: int, worker: int) -> None:
        self._process, self._worker, self._next = process, worker, 0

    def next_batch(self) -> list[tuple[str, list[str]]]:
        if self._next == ITEMS_PER_WORKER:
            raise StopIteration
        self._next += 1
        return [(process_part(self._process), [f"item {self._process} {self._worker} {self._next}"])]


class _EveryWorker(DynamicSource[tuple[str, list[str]]]):
    def __init__(self, process: int) -> None:
        self._process = process

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Numbered:
        return _Numbered(self._process, worker_index)


def _run_process(process: int, addresses: list[str], out: Path) -> None:
    flow = Dataflow("process_sink")
    items = op.input("in", flow, _EveryWorker(process))
    sink = ProcessSink(lambda: Recording(out / f"process-{process}-pid-{os.getpid()}.log"), process)
    op.output("out", items, sink)
    if process:
        wait_for_earlier_peers(addresses, process)
    cluster_main(  # type: ignore[no-untyped-call]
        flow, addresses, process, epoch_interval=timedelta(milliseconds=1), worker_count_per_proc=WORKERS
    )


def test_each_process_writes_only_its_own_items_once_and_settles_before_it_closes(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_run_process, args=(i, addresses, tmp_path)) for i in range(2)]
    for child in processes:
        child.start()
    for child in processes:
        child.join(60)
        assert child.exitcode == 0
    logs = sorted(tmp_path.iterdir())
    # One writer per process, each in that process (its file is named by the pid that wrote it).
    assert [path.name.split("-pid-")[0] for path in logs] == ["process-0", "process-1"]
    assert {int(path.name.split("-pid-")[1].removesuffix(".log")) for path in logs} == {p.pid for p in processes}
    for process, path in enumerate(logs):
        lines = path.read_text(encoding="utf-8").splitlines()
        items = [line for line in lines if line.startswith("item")]
        # Every item its workers made, once, and none another process made.
        workers = range(process * WORKERS, (process + 1) * WORKERS)  # bytewax numbers workers across the cluster
        expected = {f"item {process} {w} {n}" for w in workers for n in range(1, ITEMS_PER_WORKER + 1)}
        assert sorted(items) == sorted(expected)
        # Written items are settled (at an epoch's end or at close) before the writer closes.
        assert lines[-2:] == ["settled", "closed"]
        assert lines.count("settled") > 1  # once per epoch it wrote in, not only at close


def test_keys_name_their_process_and_bytewax_s_order_of_names_is_the_order_of_processes() -> None:
    sink = ProcessSink(lambda: Recording(Path("unused")), 3)
    assert sink.list_parts() == [process_part(3)]
    names = [process_part(i) for i in range(120)]
    # Bytewax indexes part_fn's number into the partitions sorted by name.
    assert [sink.part_fn(name) for name in sorted(names)] == list(range(120))


class _Calls(Writer[int]):
    def __init__(self) -> None:
        self.calls: list[object] = []

    def write(self, items: list[int]) -> None:
        self.calls.append(list(items))

    def settle(self) -> None:
        self.calls.append("settle")

    def close(self) -> None:
        self.calls.append("close")


@pytest.mark.parametrize("batches", [[[1, 2], [], [3]], [[]]])
def test_a_partition_writes_its_lists_as_one_batch_and_settles_at_each_snapshot(batches: list[list[int]]) -> None:
    writer = _Calls()
    partition = ProcessSink(lambda: writer, 0).build_part("flow.out", process_part(0), None)
    partition.write_batch(batches)
    partition.snapshot()  # no resume state: what was written is safe once it returns
    partition.close()
    flat = [item for batch in batches for item in batch]
    assert writer.calls == ([flat] if flat else []) + ["settle", "settle", "close"]
