"""Ctrl-C under `stop_between_steps`: never raised inside a step, always raised soon at the boundary."""

from __future__ import annotations

import inspect
import os
import signal
import time

import pytest

from streampulse.clean_stop import interrupted, stop_between_steps


def _step(seconds: float) -> str:
    """Python code a dataflow step would run: Ctrl-C arrives in the middle of it."""
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "finished"


def test_ctrl_c_waits_for_the_step_then_stops_at_the_boundary() -> None:
    boundary = inspect.currentframe()
    assert boundary is not None
    results: list[str] = []
    with pytest.raises(KeyboardInterrupt), stop_between_steps(boundary):
        results.append(_step(0.2))  # re-delivered many times meanwhile, never raised in the step
        for _ in range(1000):
            time.sleep(0.01)  # between steps: the re-delivered signal stops it here
    assert results == ["finished"]
    # Once stopping, a late re-delivered SIGINT is ignored rather than raised elsewhere.
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_only_an_interrupt_counts_as_a_stop() -> None:
    wrapped = RuntimeError("error calling `next_batch`")
    wrapped.__cause__ = KeyboardInterrupt()
    assert interrupted(wrapped)
    assert interrupted(RuntimeError("interrupt signal received, all processes have been shut down"))
    assert not interrupted(RuntimeError("error writing output batch"))
