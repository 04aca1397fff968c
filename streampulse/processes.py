"""Child processes that never outlive us: brokers and servers we start ourselves.

Every child gets its own process group and is told by the kernel to die with
its parent (PR_SET_PDEATHSIG), so a crash or a kill -9 of streampulse (or of
pytest) cannot leave a broker or a Redis behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

_PR_SET_PDEATHSIG = 1
# Not the global generator: a test seeding it would make every process pick the same ports.
_PORTS = random.SystemRandom()
# Ports this process has handed out. Servers asked for ports one after another, before any of them binds, must not
# get the same one: nothing is bound in between to refuse it (a cluster's /metrics port once drew its peer's).
_HANDED_OUT: set[int] = set()


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' local ports from (Linux; the usual default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now, outside the ephemeral range where one can be found.

    A port the kernel hands out (bind to 0) comes from the ephemeral range, which every outgoing connection
    also draws from: between this call and the server's bind, a client socket can take it ("Address already in
    use", seen when a bytewax cluster starts beside busy Kafka clients). Below the range, only servers bind.
    Never the same port twice in one process, though it may be free again: see `_HANDED_OUT`.
    """
    low, _high = _ephemeral_ports()
    if low > 11_024:
        for _ in range(50):
            port = _PORTS.randrange(10_000, low - 1_000)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                _HANDED_OUT.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        found: int = sock.getsockname()[1]
        _HANDED_OUT.add(found)
        return found


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    os.setsid()
    # A parent started in the background inherits "ignore SIGINT"; our children must still stop on it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """A child process with its output in a log file, stopped with its whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's output, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `ready` until it holds; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with code {self.popen.returncode} before {what}. "
                    f"Its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not become ready ({what}) within {timeout_s:.0f} s. "
            f"Its log ({self.log_path}) ends with:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 10.0, first_signal: signal.Signals = signal.SIGTERM) -> None:
        """Send `first_signal` to the process group, then SIGKILL it if it has not exited within `grace_s`."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, first_signal)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=grace_s)
        # The leader may be gone while a child it forked lives on in the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


class Stoppable:
    """Something we started that `stop()` ends; also a context manager. `stop()` is safe to call twice."""

    def stop(self) -> None:
        """End it."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StartedService(Stoppable):
    """A server in a child process: stopped with `stop_signal`, then SIGKILL after `stop_grace_s`."""

    stop_signal: signal.Signals = signal.SIGTERM
    stop_grace_s: float = 10.0

    def __init__(self, process: ManagedProcess, work_dir: Path) -> None:
        self.process = process
        self.work_dir = work_dir

    @property
    def log_path(self) -> Path:
        """The process's log file (its stdout and stderr)."""
        return self.process.log_path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.alive()

    def stop(self) -> None:
        """Stop the process group; also when it already died (closes its log, reaps the group)."""
        self.process.stop(grace_s=self.stop_grace_s, first_signal=self.stop_signal)
