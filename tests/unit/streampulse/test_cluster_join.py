"""Joining a cluster: a process waits for its earlier peers to listen, and the waiting never disturbs them."""

from __future__ import annotations

import socket
import threading
import time

from streampulse.cluster_join import listening_here, wait_for_earlier_peers
from streampulse.processes import free_port


def _listener(port: int) -> socket.socket:
    """A listening socket bound the way timely binds its own (Rust's TcpListener sets SO_REUSEADDR)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8)
    return sock


def test_a_listening_port_is_told_from_a_free_one() -> None:
    port = free_port()
    assert listening_here(f"127.0.0.1:{port}") is False
    with _listener(port):
        assert listening_here(f"127.0.0.1:{port}") is True
    assert listening_here(f"127.0.0.1:{port}") is False


def test_an_address_of_another_machine_cannot_be_told() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    assert listening_here(f"192.0.2.7:{free_port()}") is None
    assert listening_here("no-such-host.invalid:1234") is None


def test_a_process_joins_as_soon_as_its_earlier_peer_listens() -> None:
    first, second = free_port(), free_port()
    addresses = [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]
    listening: list[socket.socket] = []
    opened = threading.Timer(0.3, lambda: listening.append(_listener(first)))
    opened.start()
    try:
        started = time.monotonic()
        wait_for_earlier_peers(addresses, 1, timeout_s=5.0)
        waited = time.monotonic() - started
        assert listening, "returned before the earlier peer listened"
        assert waited < 2.0, f"waited {waited:.2f} s for a peer that listened after 0.3 s"
    finally:
        opened.join()
        for sock in listening:
            sock.close()


def test_the_first_process_and_a_peer_that_never_comes_do_not_hold_a_start() -> None:
    addresses = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    started = time.monotonic()
    wait_for_earlier_peers(addresses, 0, timeout_s=5.0)  # process 0 connects to no one
    assert time.monotonic() - started < 0.5
    wait_for_earlier_peers(addresses, 1, timeout_s=0.2)  # a peer that never listens: timely's retries take over
    assert time.monotonic() - started < 1.5


def test_probing_never_makes_the_peers_own_bind_fail() -> None:
    """The probe binds the peer's address for an instant: the peer's bind and listen must succeed regardless."""
    for _ in range(200):
        port = free_port()
        stop = threading.Event()

        def probe(address: str = f"127.0.0.1:{port}", stop: threading.Event = stop) -> None:
            while not stop.is_set() and not listening_here(address):
                pass

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            _listener(port).close()  # raises OSError if the probe's bind got in the way
        finally:
            stop.set()
            prober.join()
