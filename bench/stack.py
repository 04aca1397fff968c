"""The Kafka and Redis the benchmark runs against: the embedded stack, Apache Kafka, or given ones.

Topics are made per benchmark phase with explicit partition counts and
deleted afterwards (tansu keeps every record in memory until its topic goes);
Redis namespaces are dropped once a run's results have been checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bench.common import say
from connect.kafka_admin import ensure_topics
from settings.kafka import KafkaSettings


class _Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class Services:
    """Where Kafka and Redis are, and what to stop at the end (nothing for given services)."""

    name: str
    bootstrap: str
    redis_url: str
    running: list[_Stoppable] = field(default_factory=list)

    def stop(self) -> None:
        """Stop what we started, newest first."""
        for service in reversed(self.running):
            with contextlib.suppress(Exception):
                service.stop()
        self.running.clear()


def start_services(kind: str, work_dir: Path, bootstrap: str | None = None, redis_url: str | None = None) -> Services:
    """`embedded` (tansu + valkey), `apache` (Apache Kafka + redis-server, from tests/services) or `external`."""
    if kind == "external":
        if not bootstrap or not redis_url:
            raise SystemExit("bench: --kafka-bootstrap and --redis-url are both needed to use given services")
        return Services("external", bootstrap, redis_url)
    if kind == "embedded":
        from streampulse.local_stack import start_embedded_stack

        stack = start_embedded_stack(work_dir / "embedded")
        return Services("embedded (tansu + valkey)", stack.bootstrap, stack.redis_url, [stack])
    if kind == "apache":
        from tests.services.apache_kafka import start_apache_kafka

        kafka = start_apache_kafka(work_dir / "apache-kafka")
        services = Services("Apache Kafka 4.3 + Redis", kafka.bootstrap, "", [kafka])
        if redis_url:
            services.redis_url = redis_url
            return services
        try:
            from tests.services.redis_server import start_redis_server

            server = start_redis_server(work_dir / "redis")
        except Exception:
            services.stop()
            raise
        services.running.append(server)
        services.redis_url = server.url
        return services
    raise SystemExit(f"bench: unknown stack {kind!r}")


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create the topics with these partition counts, as the product does (connect.kafka_admin)."""
    ensure_topics(KafkaSettings(bootstrap, "unused-playback", "unused-signup", "unused-dead-letter"), topics)


def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """Delete topics, best effort: freeing the broker's memory must not fail a benchmark."""
    names = list(topics)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    with contextlib.suppress(Exception):
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=60)


def drop_namespace(redis_url: str, namespace: str) -> None:
    """Delete every key of a streampulse namespace (`sp:{ns}:*`), best effort."""
    try:
        client: Any = redis.Redis.from_url(redis_url)
        keys: list[bytes] = []
        for key in client.scan_iter(match=f"sp:{namespace}:*", count=5000):
            keys.append(key)
            if len(keys) >= 5000:
                client.unlink(*keys)
                keys = []
        if keys:
            client.unlink(*keys)
        client.close()
    except (redis.RedisError, KafkaException) as exc:
        say(f"could not drop Redis namespace {namespace}: {exc}")
