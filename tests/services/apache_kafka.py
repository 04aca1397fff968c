"""A real Apache Kafka broker for the integration tests: one KRaft node on free loopback ports.

The broker runs from the jars that tools/kafka/fetch-kafka.sh copies out of Maven Central
into the streampulse cache (no Kafka tarball, no Docker): it is formatted with
`kafka.tools.StorageTool format --standalone` and started as
`java -cp 'libs/*' kafka.Kafka server.properties`, in combined mode (broker and
controller in one JVM).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from streampulse.processes import ManagedProcess, StartedService, free_port, port_open

KAFKA_VERSION = "4.3.1"  # keep in step with tools/kafka/pom.xml and fetch-kafka.sh

_REPO_ROOT = Path(__file__).resolve().parents[2]
_FETCH_COMMAND = "bash tools/kafka/fetch-kafka.sh"
# Written by fetch-kafka.sh only once every jar is in place.
_MARKER_NAME = ".fetched"

_READY_TIMEOUT_S = 90.0
_FORMAT_TIMEOUT_S = 60.0

# The broker's heap: enough for the tests' traffic, small enough that broker, Redis,
# bytewax workers and pytest fit together on a 2-core CI machine.
_BROKER_JVM_OPTS = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    # Fail loudly rather than limp along in a test run.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# StorageTool runs for a second or two: the C1 compiler alone and a small serial heap
# start it faster than the broker's settings would.
_FORMAT_JVM_OPTS = ("-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

_LOG4J2_PROPERTIES = """\
# Written by tests/services/apache_kafka.py: everything at INFO to stdout, which
# ManagedProcess sends to the broker's log file.
status = warn
# log4j's own shutdown hook would race the broker's and drop the log lines of its shutdown;
# the console appender flushes every line, so there is nothing for log4j to flush at exit.
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# One line per request at DEBUG/TRACE would drown the log.
logger.request.name = kafka.request.logger
logger.request.level = WARN
# Per-partition state changes: useful when debugging the broker, noise for us.
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""

_log = logging.getLogger(__name__)


def kafka_home() -> Path:
    """Where fetch-kafka.sh puts Kafka: `${STREAMPULSE_CACHE_DIR:-$HOME/.cache/streampulse}/kafka-VERSION`."""
    # Like the script's ${VAR:-default}: an empty STREAMPULSE_CACHE_DIR counts as unset.
    cache_root = os.environ.get("STREAMPULSE_CACHE_DIR") or str(Path.home() / ".cache" / "streampulse")
    return Path(cache_root) / f"kafka-{KAFKA_VERSION}"


def kafka_jars_dir() -> Path:
    """The directory holding the broker's jars (it may not exist yet: see `kafka_jars_ready`)."""
    return kafka_home() / "libs"


def kafka_jars_ready() -> bool:
    """Whether fetch-kafka.sh has completed a download into `kafka_jars_dir()`."""
    libs = kafka_jars_dir()
    return (kafka_home() / _MARKER_NAME).is_file() and (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()


def java_executable() -> str | None:
    """The `java` to run the broker with: $JAVA_HOME/bin/java if set, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def java_available() -> bool:
    """Whether a `java` executable can be found (see `java_executable`)."""
    return java_executable() is not None


def _require_prerequisites() -> str:
    """The java executable, or a RuntimeError that says what to run to get what is missing."""
    java = java_executable()
    if java is None:
        raise RuntimeError(
            "Cannot start Apache Kafka: no `java` on PATH (nor in $JAVA_HOME/bin). "
            "Install a JDK 17+, e.g. `apt-get install -y openjdk-17-jdk-headless maven`, "
            f"then fetch the broker's jars with `{_FETCH_COMMAND}` (from {_REPO_ROOT})."
        )
    if not kafka_jars_ready():
        raise RuntimeError(
            f"Cannot start Apache Kafka: the Kafka {KAFKA_VERSION} jars are not in {kafka_jars_dir()} "
            f"(or their download was not completed). Fetch them with `{_FETCH_COMMAND}` "
            f"(from {_REPO_ROOT}; needs java and mvn; honours STREAMPULSE_CACHE_DIR)."
        )
    return java


def _random_cluster_id() -> str:
    """A cluster id as `kafka-storage random-uuid` makes one: 16 random bytes, base64url, no padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        # Kafka's own Uuid.randomUuid() rejects ids starting with '-': they read as a command-line flag.
        if not cluster_id.startswith("-"):
            return cluster_id


def _server_properties(
    *,
    broker_port: int,
    controller_port: int,
    data_dir: Path,
    partitions_default: int,
) -> str:
    settings: dict[str, str | int] = {
        # One JVM is both the broker and the (only) KRaft controller.
        "process.roles": "broker,controller",
        "node.id": 1,
        # A dynamic quorum bootstrapped by `format --standalone` (KIP-853), as Kafka 4's own
        # quickstart does; the static controller.quorum.voters would also work.
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": partitions_default,
        "auto.create.topics.enable": "false",
        # A single node can only hold one replica of the internal topics.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        # Creating the 50 partitions of __consumer_offsets (and of __transaction_state)
        # takes seconds on the first group request; the tests need far fewer.
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.num.partitions": 4,
        # No waiting for more members before the first rebalance of a consumer group.
        "group.initial.rebalance.delay.ms": 0,
        # The log cleaner's dedupe buffer is 128 MiB of heap by default; __consumer_offsets
        # of a test run is tiny.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        # Sized for a 2-core machine rather than a production server.
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 1,
        "background.threads": 4,
    }
    lines = ["# Written by tests/services/apache_kafka.py for one test session."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _format_storage(java: str, libs: Path, config: Path, cluster_id: str, work_dir: Path, env: dict[str, str]) -> None:
    """Run `kafka.tools.StorageTool format --standalone` and fail with its output if it fails."""
    proc = ManagedProcess(
        "kafka-storage format",
        [
            java,
            *_FORMAT_JVM_OPTS,
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            cluster_id,
            "--config",
            str(config),
        ],
        log_path=work_dir / "logs" / "kafka-format.log",
        env=env,
        cwd=work_dir,
    )
    try:
        code = proc.popen.wait(timeout=_FORMAT_TIMEOUT_S)
    except Exception:
        proc.stop()
        raise RuntimeError(
            f"kafka.tools.StorageTool format did not finish within {_FORMAT_TIMEOUT_S:.0f} s. "
            f"Its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
        ) from None
    proc.stop()
    if code != 0:
        raise RuntimeError(
            f"kafka.tools.StorageTool format failed with exit code {code}. "
            f"Its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
        )


class ApacheKafka(StartedService):
    """A running single-node Apache Kafka (KRaft combined mode) on loopback; `stop()` ends it."""

    stop_grace_s = 15.0

    def __init__(self, process: ManagedProcess, bootstrap: str, work_dir: Path, cluster_id: str) -> None:
        super().__init__(process, work_dir)
        self.bootstrap = bootstrap
        self.cluster_id = cluster_id

    def __repr__(self) -> str:
        return f"ApacheKafka(bootstrap={self.bootstrap!r}, work_dir={str(self.work_dir)!r})"

    def restart(self, first_signal: signal.Signals = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM: a controlled shutdown; SIGKILL: a crash) and start it again.

        Same ports, same data: clients see the outage of a broker restart. Returns once an AdminClient can list
        topics again.
        """
        self.process.stop(grace_s=self.stop_grace_s, first_signal=first_signal)
        port = int(self.bootstrap.rsplit(":", 1)[1])
        self.process = _launch_broker(_require_prerequisites(), kafka_jars_dir(), self.work_dir, port)


def _admin_lists_topics(admin: AdminClient) -> bool:
    try:
        metadata: Any = admin.list_topics(timeout=2.0)
    except Exception:
        # KafkaException while the broker is still coming up (no leader, not yet registered).
        return False
    return bool(metadata.brokers)


def _broker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Options meant for a developer's own JVMs must not change the test broker.
    for name in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"):
        env.pop(name, None)
    return env


def _launch_broker(java: str, libs: Path, work_dir: Path, broker_port: int) -> ManagedProcess:
    """Start the broker of the formatted `work_dir`; return once an AdminClient can list topics."""
    started = time.monotonic()
    process = ManagedProcess(
        "kafka",
        [
            java,
            *_BROKER_JVM_OPTS,
            f"-Dlog4j2.configurationFile={work_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(work_dir / "server.properties"),
        ],
        log_path=work_dir / "logs" / "kafka.log",
        env=_broker_env(),
        cwd=work_dir,
    )
    try:
        # The port opens before the broker can serve metadata; waiting for it first keeps
        # librdkafka from logging a stream of "connection refused" errors.
        process.wait_until(lambda: port_open("127.0.0.1", broker_port), _READY_TIMEOUT_S, "its broker port opened")
        admin = AdminClient(
            {
                "bootstrap.servers": f"127.0.0.1:{broker_port}",
                "socket.connection.setup.timeout.ms": 2000,
                "log_level": 3,  # errors only: the first attempts may race the broker's start
            }
        )
        remaining = max(1.0, _READY_TIMEOUT_S - (time.monotonic() - started))
        process.wait_until(lambda: _admin_lists_topics(admin), remaining, "an AdminClient could list topics")
    except BaseException:
        process.stop()
        raise
    return process


def start_apache_kafka(work_dir: Path, partitions_default: int = 1) -> ApacheKafka:
    """Format and start a single-node Apache Kafka under `work_dir`; return once an AdminClient can list topics.

    The broker listens on a free loopback port (`.bootstrap`, "127.0.0.1:PORT") with a
    KRaft controller listener on another. Topics are not auto-created; `num.partitions`
    is `partitions_default`. Data and logs stay under `work_dir` (logs/kafka.log is the
    broker's output). Raises RuntimeError, saying what to run, if java or the jars
    (tools/kafka/fetch-kafka.sh) are missing, and with the log tail if the broker fails
    to start within 90 s.
    """
    java = _require_prerequisites()
    libs = kafka_jars_dir()

    work_dir = work_dir.resolve()
    data_dir = work_dir / "kafka-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)

    broker_port = free_port()
    controller_port = free_port()
    while controller_port == broker_port:
        controller_port = free_port()

    config = work_dir / "server.properties"
    config.write_text(
        _server_properties(
            broker_port=broker_port,
            controller_port=controller_port,
            data_dir=data_dir,
            partitions_default=partitions_default,
        ),
        encoding="utf-8",
    )
    log4j_config = work_dir / "log4j2.properties"
    log4j_config.write_text(_LOG4J2_PROPERTIES, encoding="utf-8")

    started = time.monotonic()
    cluster_id = _random_cluster_id()
    _format_storage(java, libs, config, cluster_id, work_dir, _broker_env())
    formatted = time.monotonic()
    process = _launch_broker(java, libs, work_dir, broker_port)
    _log.info(
        "Apache Kafka %s ready on 127.0.0.1:%d in %.1f s (format %.1f s)",
        KAFKA_VERSION,
        broker_port,
        time.monotonic() - started,
        formatted - started,
    )
    return ApacheKafka(process, f"127.0.0.1:{broker_port}", work_dir, cluster_id)
