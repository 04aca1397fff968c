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
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class SecureListener:
    """A SASL_SSL listener (SCRAM-SHA-512 over TLS) beside the plaintext one: where it is and how to log in."""

    bootstrap: str
    ca_file: Path  # the CA that signed the broker's certificate
    other_ca_file: Path  # a CA that did not: an "untrusted CA" for the tests
    username: str
    password: str = field(repr=False)
    mechanism: str = "SCRAM-SHA-512"


def _make_certificates(tls_dir: Path) -> tuple[Path, Path, Path]:
    """A test CA, a broker certificate it signs for 127.0.0.1/localhost, and an unrelated CA; (ca, broker pem, other ca).

    The broker's PEM file holds its unencrypted PKCS#8 key and its certificate, as Kafka's PEM keystore reads it.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "Cannot make the test broker's TLS certificates: `openssl` is not on PATH (apt-get install openssl)"
        )
    tls_dir.mkdir(parents=True, exist_ok=True)
    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], check=True, capture_output=True, cwd=tls_dir)

    for name in ("ca", "other-ca"):
        run("req", "-x509", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=streampulse test {name}")  # fmt: skip
    run("req", *key_options, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=127.0.0.1")
    (tls_dir / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "broker.crt", "-days", "2", "-extfile", "broker.ext")  # fmt: skip
    broker_pem = tls_dir / "broker.pem"
    broker_pem.write_text(
        (tls_dir / "broker.key").read_text(encoding="utf-8") + (tls_dir / "broker.crt").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    return tls_dir / "ca.pem", broker_pem, tls_dir / "other-ca.pem"


def _server_properties(
    *,
    broker_port: int,
    controller_port: int,
    data_dir: Path,
    partitions_default: int,
    secure_port: int | None = None,
    broker_pem: Path | None = None,
) -> str:
    listeners = f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}"
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    if secure_port is not None:
        listeners += f",SASL_SSL://127.0.0.1:{secure_port}"
        protocols += ",SASL_SSL:SASL_SSL"
    settings: dict[str, str | int] = {
        # One JVM is both the broker and the (only) KRaft controller.
        "process.roles": "broker,controller",
        "node.id": 1,
        # A dynamic quorum bootstrapped by `format --standalone` (KIP-853), as Kafka 4's own
        # quickstart does; the static controller.quorum.voters would also work.
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": listeners,
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": protocols,
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
    if secure_port is not None and broker_pem is not None:
        # Clients log in with SCRAM-SHA-512 over TLS; the user is created at format time (--add-scram).
        settings.update(
            {
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
                "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
                "listener.name.sasl_ssl.ssl.keystore.location": str(broker_pem),
            }
        )
    lines = ["# Written by tests/services/apache_kafka.py for one test session."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _format_storage(
    java: str,
    libs: Path,
    config: Path,
    cluster_id: str,
    work_dir: Path,
    env: dict[str, str],
    extra_args: tuple[str, ...] = (),
) -> None:
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
            *extra_args,
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

    def __init__(
        self,
        process: ManagedProcess,
        bootstrap: str,
        work_dir: Path,
        cluster_id: str,
        argv: list[str],
        env: dict[str, str],
        secure: SecureListener | None = None,
    ) -> None:
        super().__init__(process, work_dir)
        self.bootstrap = bootstrap
        self.cluster_id = cluster_id
        self.secure = secure
        self._argv = argv
        self._env = env

    def restart(self) -> None:
        """Start the broker again after `stop()`, on the same ports with the same data; return once it serves metadata."""
        self.process = ManagedProcess(
            "kafka", self._argv, log_path=self.work_dir / "logs" / "kafka.log", env=self._env, cwd=self.work_dir
        )
        try:
            _wait_ready(self.process, int(self.bootstrap.rsplit(":", 1)[1]), _READY_TIMEOUT_S)
        except BaseException:
            self.process.stop()
            raise

    def __repr__(self) -> str:
        return f"ApacheKafka(bootstrap={self.bootstrap!r}, work_dir={str(self.work_dir)!r})"


def _admin_lists_topics(admin: AdminClient) -> bool:
    try:
        metadata: Any = admin.list_topics(timeout=2.0)
    except Exception:
        # KafkaException while the broker is still coming up (no leader, not yet registered).
        return False
    return bool(metadata.brokers)


def _wait_ready(process: ManagedProcess, broker_port: int, timeout_s: float) -> None:
    started = time.monotonic()
    # The port opens before the broker can serve metadata; waiting for it first keeps
    # librdkafka from logging a stream of "connection refused" errors.
    process.wait_until(lambda: port_open("127.0.0.1", broker_port), timeout_s, "its broker port opened")
    admin = AdminClient(
        {
            "bootstrap.servers": f"127.0.0.1:{broker_port}",
            "socket.connection.setup.timeout.ms": 2000,
            "log_level": 3,  # errors only: the first attempts may race the broker's start
        }
    )
    remaining = max(1.0, timeout_s - (time.monotonic() - started))
    process.wait_until(lambda: _admin_lists_topics(admin), remaining, "an AdminClient could list topics")


def start_apache_kafka(work_dir: Path, partitions_default: int = 1, secure: bool = False) -> ApacheKafka:
    """Format and start a single-node Apache Kafka under `work_dir`; return once an AdminClient can list topics.

    The broker listens on a free loopback port (`.bootstrap`, "127.0.0.1:PORT") with a
    KRaft controller listener on another. Topics are not auto-created; `num.partitions`
    is `partitions_default`. Data and logs stay under `work_dir` (logs/kafka.log is the
    broker's output). Raises RuntimeError, saying what to run, if java or the jars
    (tools/kafka/fetch-kafka.sh) are missing, and with the log tail if the broker fails
    to start within 90 s. `secure` adds a SASL_SSL listener (SCRAM-SHA-512 over TLS, certificates made
    here with openssl): `.secure` says where it is and how to log in.
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

    listener: SecureListener | None = None
    broker_pem: Path | None = None
    format_args: tuple[str, ...] = ()
    if secure:
        secure_port = free_port()
        while secure_port in (broker_port, controller_port):
            secure_port = free_port()
        ca_file, broker_pem, other_ca = _make_certificates(work_dir / "tls")
        listener = SecureListener(f"127.0.0.1:{secure_port}", ca_file, other_ca, "streampulse", secrets.token_hex(12))
        format_args = ("--add-scram", f"SCRAM-SHA-512=[name={listener.username},password={listener.password}]")
    config = work_dir / "server.properties"
    config.write_text(
        _server_properties(
            broker_port=broker_port,
            controller_port=controller_port,
            data_dir=data_dir,
            partitions_default=partitions_default,
            secure_port=int(listener.bootstrap.rsplit(":", 1)[1]) if listener else None,
            broker_pem=broker_pem,
        ),
        encoding="utf-8",
    )
    log4j_config = work_dir / "log4j2.properties"
    log4j_config.write_text(_LOG4J2_PROPERTIES, encoding="utf-8")

    env = dict(os.environ)
    # Options meant for a developer's own JVMs must not change the test broker.
    for name in ("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"):
        env.pop(name, None)

    started = time.monotonic()
    cluster_id = _random_cluster_id()
    _format_storage(java, libs, config, cluster_id, work_dir, env, format_args)
    formatted = time.monotonic()

    argv = [java, *_BROKER_JVM_OPTS, f"-Dlog4j2.configurationFile={log4j_config}", "-cp", f"{libs}/*", "kafka.Kafka"]
    argv.append(str(config))
    process = ManagedProcess("kafka", argv, log_path=work_dir / "logs" / "kafka.log", env=env, cwd=work_dir)
    try:
        _wait_ready(process, broker_port, _READY_TIMEOUT_S)
    except BaseException:
        process.stop()
        raise
    _log.info(
        "Apache Kafka %s ready on 127.0.0.1:%d in %.1f s (format %.1f s)",
        KAFKA_VERSION,
        broker_port,
        time.monotonic() - started,
        formatted - started,
    )
    return ApacheKafka(process, f"127.0.0.1:{broker_port}", work_dir, cluster_id, argv, env, listener)
