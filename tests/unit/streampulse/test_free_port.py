"""`free_port` hands out a port at most once per process, below the ephemeral range."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from streampulse import processes
from streampulse.processes import free_port


def _bindable_below_the_ephemeral_range(count: int) -> list[int]:
    low, _high = processes._ephemeral_ports()
    found: list[int] = []
    for port in range(20_000, low - 1_000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    pytest.skip("no free ports below the ephemeral range here")


def test_a_port_drawn_twice_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    if processes._ephemeral_ports()[0] <= 21_024:
        pytest.skip("the ephemeral range starts too low for ports below it")
    first, second = _bindable_below_the_ephemeral_range(2)
    draws = iter([first, first, second])  # the generator draws the first port again before the second
    monkeypatch.setattr(processes, "_PORTS", SimpleNamespace(randrange=lambda _low, _high: next(draws)))
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    # Nothing binds between the calls, so the first port is free again at the second: only the record refuses it.
    assert [free_port(), free_port()] == [first, second]


def test_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    low, _high = processes._ephemeral_ports()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    if low > 11_024:
        assert all(port < low for port in ports)
