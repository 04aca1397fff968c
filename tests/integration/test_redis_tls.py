"""Redis over TLS with a private CA: `--redis-ssl-ca-location` lets the flow write and `query` read.

A real `redis-server` with TLS only, its certificate signed by a CA made here with openssl; without the
option the certificate is untrusted, and the commands stop at once saying which option to give.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streampulse.local_stack import redis_server_argv
from streampulse.processes import ManagedProcess, free_port, port_open
from tests.conftest import Stack
from tests.integration.helpers import create_topics, playback_sessions, produce_log, streampulse

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not shutil.which("openssl") or not shutil.which("redis-server"), reason="needs openssl"),
]

FAIL_FAST_S = 5.0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certificates(directory: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=streampulse test CA", cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1", cwd=directory,
    )  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=directory,
    )  # fmt: skip


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS-only redis-server: its rediss:// URL and the CA file that signed its certificate."""
    certs = tmp_path / "certs"
    _make_certificates(certs)
    executable = shutil.which("redis-server")
    assert executable is not None
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    argv = redis_server_argv(executable, 0, data, persistent=False)  # port 0: no plain-text listener
    argv += [
        "--tls-port", str(port), "--tls-cert-file", str(certs / "server.pem"),
        "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.pem"),
        "--tls-auth-clients", "no",
    ]  # fmt: skip
    process = ManagedProcess("redis-server (TLS)", argv, log_path=tmp_path / "redis-tls.log", cwd=data)
    try:
        process.wait_until(lambda: port_open("127.0.0.1", port), 20, "its TLS port opened")
        yield f"rediss://127.0.0.1:{port}/0", certs / "ca.pem"
    finally:
        process.stop()


def _connection(stack: Stack, name: str, redis_url: str) -> list[str]:
    return [
        "--kafka-bootstrap", stack.bootstrap, "--playback-topic", f"playback-{name}", "--signup-topic",
        f"signup-{name}", "--dead-letter-topic", f"dead-letter-{name}", "--redis-url", redis_url,
        "--namespace", f"tls-{name}",
    ]  # fmt: skip


def _starts(redis_url: str, namespace: str, *tls: str) -> Counter[tuple[int, str, str]]:
    result = streampulse(
        "query", "stream_starts", "--from", "0", "--by", "country,device_type", "--format", "json",
        "--redis-url", redis_url, "--namespace", namespace, *tls,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    counts: Counter[tuple[int, str, str]] = Counter()
    for line in result.stdout.splitlines():
        row = orjson.loads(line)
        if row["value"]:
            counts[(row["window_start_ms"], row["dims"]["country"], row["dims"]["device_type"])] += row["value"]
    return counts


def test_flow_writes_and_query_reads_over_tls_with_the_ca(
    stack: Stack, unique_name: str, tls_redis: tuple[str, Path]
) -> None:
    redis_url, ca = tls_redis
    log = playback_sessions(9, 2, sessions=300, start_ms=int(time.time() * 1000) - 20 * 60_000, span_ms=120_000)
    create_topics(stack.bootstrap, {f"playback-{unique_name}": 2, f"signup-{unique_name}": 1})
    produce_log(stack.bootstrap, f"playback-{unique_name}", log)
    tls = ["--redis-ssl-ca-location", str(ca)]
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0", *_connection(stack, unique_name, redis_url), *tls, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _starts(redis_url, f"tls-{unique_name}", *tls) == log.expected_starts(10_000)


def test_without_the_ca_the_commands_stop_at_once_naming_the_option(
    stack: Stack, unique_name: str, tls_redis: tuple[str, Path]
) -> None:
    redis_url, _ = tls_redis
    create_topics(stack.bootstrap, {f"playback-{unique_name}": 1, f"signup-{unique_name}": 1})
    for argv in (
        ["query", "stream_starts", "--redis-url", redis_url],
        ["run", "--metrics-port", "0", *_connection(stack, unique_name, redis_url)],
    ):
        started = time.monotonic()
        result = streampulse(*argv, timeout=60)
        elapsed = time.monotonic() - started
        assert result.returncode == 2, result.stderr[-3000:]
        message = result.stderr.strip().splitlines()[-1]
        assert "not trusted" in message and "--redis-ssl-ca-location" in message, message
        # Interpreter start-up and the Kafka checks included: no waiting on retries.
        assert elapsed < FAIL_FAST_S, f"{argv[0]} took {elapsed:.1f} s to fail"
