"""Per-thread CPU seconds (bench/thread_cpu.py) and how `bench.cpu_split` counts librdkafka's threads apart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from bench.cpu_split import LIBRDKAFKA, REST, START_UP, Accounts, table
from bench.thread_cpu import ThreadSampler, thread_cpu_s


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_a_thread_s_cpu_seconds_are_its_own() -> None:
    seen: dict[str, int] = {}

    def work() -> None:
        seen["tid"] = threading.get_native_id()
        _spin(0.3)
        seen["done"] = 1
        time.sleep(0.5)  # alive while it is read

    worker = threading.Thread(target=work)
    worker.start()
    while "done" not in seen:
        time.sleep(0.01)
    threads = thread_cpu_s()
    worker.join()
    assert threads[seen["tid"]][1] == pytest.approx(0.3, abs=0.05)
    assert threading.get_native_id() in threads  # the caller is listed too


def test_a_name_with_spaces_and_parentheses_is_read_whole(tmp_path: Path) -> None:
    task = tmp_path / "4242"
    task.mkdir()
    # pid (comm) state ppid ... utime (14th field) stime (15th), in clock ticks.
    fields = ["S", *["0"] * 10, "250", "50", *["0"] * 30]
    (task / "stat").write_text(f"4242 (rdk:broker (1) x) {' '.join(fields)}\n")
    name, cpu_s = thread_cpu_s(tmp_path)[4242]
    assert name == "rdk:broker (1) x"
    assert cpu_s == pytest.approx(3.0)


def test_librdkafka_names_its_threads_as_the_sampler_expects() -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:1"})
    try:
        names = {name for name, _cpu in thread_cpu_s().values()}
        assert any(name.startswith("rdk:") for name in names)
    finally:
        producer.flush(0)


def test_a_sampled_thread_keeps_its_figure_after_it_ends_and_the_sampler_leaves_itself_out() -> None:
    sampler = ThreadSampler(interval_s=0.02)
    sampler.start()
    worker = threading.Thread(target=_spin, args=(0.2,))
    worker.start()
    worker.join()
    time.sleep(0.1)
    sampler.sample()
    # No librdkafka thread here: nothing counted as theirs; the sampler's own time is known (and small).
    assert sampler.librdkafka_cpu_s() == 0.0
    assert 0.0 <= sampler.own_cpu_s() < 0.2


class _FakeThreads(ThreadSampler):
    """librdkafka's threads at 0.3 CPU s by the first batch and 1.0 by the end; the sampler itself 0.1."""

    def __init__(self) -> None:
        super().__init__()
        self.samples = 0

    def sample(self) -> None:
        self.samples += 1

    def librdkafka_cpu_s(self) -> float:
        return 0.3 if self.samples == 1 else 1.0

    def own_cpu_s(self) -> float:
        return 0.1


class _Step:
    def on_batch(self) -> None:
        _spin(0.05)


def test_librdkafka_s_threads_are_a_row_of_their_own_after_start_up_and_out_of_the_rest() -> None:
    plain = Accounts()
    plain.wrap(_Step, "on_batch", "window store: merge")
    _Step().on_batch()
    without = plain.as_dict()
    accounts = Accounts(_FakeThreads())
    accounts.wrap(_Step, "on_batch", "window store: merge")
    _Step().on_batch()
    figures = accounts.as_dict()
    assert LIBRDKAFKA not in without["cpu_s"]
    assert figures["cpu_s"][LIBRDKAFKA] == pytest.approx(0.7)  # 1.0 by the end, less 0.3 before the first batch
    cpu = figures["cpu_s"]
    # The total leaves the sampler out; the rest is what no step, start-up nor librdkafka's threads hold.
    expected_rest = max(figures["total_cpu_s"] - cpu[START_UP] - cpu["window store: merge"] - 0.7, 0.0)
    assert cpu[REST] == pytest.approx(expected_rest, abs=0.002)
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table([figures, without], ["p0", "p1"])[2:]]
    assert rows[-5:-3] == [LIBRDKAFKA, REST]
