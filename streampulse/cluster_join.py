"""Join a bytewax cluster without timely's one-second retry.

Bytewax's cluster is timely's: process i listens for the processes after it
and connects to each process before it, and a refused connection is retried
after a fixed second (timely_communication's `start_connections`). Processes
started together reach that point within milliseconds of each other, so the
first try often finds a peer a few milliseconds from listening, and every
process then waits a whole second: in 2-process runs of the benchmark's 2 M
events, half the starts lost that race and took 1.5 s longer (8.1-8.3 s against
6.5-6.8 s on the wall clock).

So before joining, a process waits, polling every few milliseconds, until each
peer it will connect to is listening. A connection cannot tell: timely takes
the first bytes of every accepted connection as a peer's handshake and fails
on anything else. Binding can: a socket bound with SO_REUSEADDR to the peer's
address fails with EADDRINUSE exactly when a socket listens there, and never
stops the peer's own bind (timely's listener is Rust's `TcpListener`, which
sets SO_REUSEADDR too; Linux refuses such a second bind only against a
listening socket). This works for the peers on this machine; for an address
not local to it (EADDRNOTAVAIL) the process joins at once and timely retries as
before. A peer that does not come up within `timeout_s` is left to timely's
retries too, so the wait never makes a start slower than it was.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Sequence

POLL_S = 0.005
TIMEOUT_S = 10.0


def listening_here(address: str) -> bool | None:
    """Whether a socket listens on `address` ("host:port") of this machine; None if it is not this machine's."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return None
    family, kind, proto, _name, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            return None  # not an address of this machine (EADDRNOTAVAIL), or not ours to bind: cannot tell
    return False


def wait_for_earlier_peers(addresses: Sequence[str], process_id: int, timeout_s: float = TIMEOUT_S) -> None:
    """Return once every process before `process_id` that runs on this machine listens, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    for address in addresses[:process_id]:
        while listening_here(address) is False and time.monotonic() < deadline:
            time.sleep(POLL_S)
