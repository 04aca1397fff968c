"""The sink base every sink is built on (sinks/base.py): one writer per worker, one retry loop, one produce-or-raise.

No services: writers are fakes that record what they are handed, writes are functions that fail on cue.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from confluent_kafka import Producer

from sinks.base import RetryUntilAccepted, WorkerSink, Writer, produce_all_or_raise

log = logging.getLogger("tests.sink_base")


class Recording(Writer[int]):
    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.batches: list[list[int]] = []
        self.closed = False

    def write(self, items: list[int]) -> None:
        self.batches.append(list(items))

    def close(self) -> None:
        self.closed = True


def test_each_worker_builds_a_writer_of_its_own_and_gets_its_batches() -> None:
    built: list[Recording] = []

    def make(worker: int) -> Recording:
        built.append(Recording(worker))
        return built[-1]

    sink = WorkerSink(make)
    first = sink.build("flow.out", 0, 2)
    second = sink.build("flow.out", 1, 2)
    first.write_batch([1, 2])
    second.write_batch([3])
    first.write_batch([])  # nothing to write: the writer is not called
    first.write_batch([4])
    assert [w.worker for w in built] == [0, 1]
    assert built[0].batches == [[1, 2], [4]]
    assert built[1].batches == [[3]]
    first.close()
    assert built[0].closed and not built[1].closed


def test_a_writer_that_holds_nothing_closes_by_default() -> None:
    class Plain(Writer[str]):
        def write(self, items: list[str]) -> None:
            pass

    partition = WorkerSink(lambda _worker: Plain()).build("flow.out", 0, 1)
    partition.write_batch(["x"])
    partition.close()


class Flaky:
    """A write that raises `error` the first `failures` times it is called."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


def retry(sleeps: list[float], failures: list[int], max_s: float = 1.0) -> RetryUntilAccepted:
    return RetryUntilAccepted(
        "Fake write",
        (ConnectionError, TimeoutError),
        on_failure=lambda: failures.append(1),
        log=log,
        initial_s=0.1,
        max_s=max_s,
        sleep=sleeps.append,
    )


def test_transient_errors_are_retried_with_growing_backoff_and_each_failure_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps: list[float] = []
    failures: list[int] = []
    write = Flaky(6, ConnectionError("refused"))
    with caplog.at_level(logging.WARNING, logger=log.name):
        retry(sleeps, failures, max_s=1.0).run(write)
    assert write.calls == 7
    assert len(failures) == 6
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])  # doubling, capped at max_s
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once when the outage starts, once when it ends: not once per attempt
    assert messages[0].startswith("Fake write failed (refused); retrying with backoff")
    assert messages[1].startswith("Fake write resumed after ")


def test_a_write_that_goes_through_at_once_is_neither_delayed_nor_logged(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    failures: list[int] = []
    write = Flaky(0, ConnectionError())
    with caplog.at_level(logging.WARNING, logger=log.name):
        retry(sleeps, failures).run(write)
    assert (write.calls, sleeps, failures, caplog.records) == (1, [], [], [])


def test_each_outage_is_logged_again_and_backoff_starts_over(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    failures: list[int] = []
    retrier = retry(sleeps, failures)
    with caplog.at_level(logging.WARNING, logger=log.name):
        retrier.run(Flaky(2, TimeoutError("slow")))
        retrier.run(Flaky(1, ConnectionError("down")))
    assert sleeps == pytest.approx([0.1, 0.2, 0.1])
    assert len(failures) == 3
    assert len(caplog.records) == 4


def test_another_error_propagates_at_once_without_a_retry() -> None:
    sleeps: list[float] = []
    failures: list[int] = []
    write = Flaky(5, ValueError("bad command"))
    with pytest.raises(ValueError, match="bad command"):
        retry(sleeps, failures).run(write)
    assert (write.calls, sleeps, failures) == (1, [], [])


def test_a_batch_kafka_does_not_take_raises_with_the_topic_and_how_many() -> None:
    # Nothing listens on port 1: every message times out undelivered, which must raise, not pass silently.
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0})
    messages: list[tuple[bytes | None, bytes, list[tuple[str, str | bytes | None]] | None]] = [
        (b"k", b"v1", None),
        (None, b"v2", [("h", b"x")]),
    ]
    with pytest.raises(RuntimeError, match=r"could not write 2 test messages to the topic 'nowhere'"):
        produce_all_or_raise(producer, "nowhere", messages, "test messages", flush_timeout_s=10.0)


def test_writers_to_one_place_tell_an_outage_once_between_them(caplog: pytest.LogCaptureFixture) -> None:
    # Two writers of one process to the same Redis, both failing through the same outage (one thread each, as
    # bytewax workers do); the first to fail tells it, the last to get through says it is over.
    started = threading.Barrier(2)
    outage_over = threading.Event()

    def failing_until_over() -> None:
        if not outage_over.is_set():
            raise ConnectionError("refused")

    def writer() -> None:
        retrier = RetryUntilAccepted(
            "Fake write", (ConnectionError,), lambda: None, log, sleep=lambda _s: time.sleep(0.01), place="Redis at h:1"
        )
        started.wait()
        retrier.run(failing_until_over)

    with caplog.at_level(logging.WARNING, logger=log.name):
        threads = [threading.Thread(target=writer) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        outage_over.set()
        for thread in threads:
            thread.join(timeout=5)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("Redis at h:1: Fake write failed (refused); retrying with backoff")
    assert messages[1].startswith("Redis at h:1: writes resumed after ")
