"""Serves the flow's Prometheus instruments (flows/health.py) on `/metrics`, stoppable fast."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from flows.health import (
    pipeline_metrics,
)


@dataclass
class MetricsServer:
    """The running `/metrics` HTTP endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port actually bound (useful when asked for port 0)."""
        return int(self.server.server_port)

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


# How often the serving thread checks for `stop`: prometheus_client's own server checks every 0.5 s, which
# was a third of the time `streampulse run --exit-at-end` took on empty topics.
STOP_POLL_S = 0.02


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        """Scrapes every few seconds are not worth a log line each."""


def serve_metrics(host: str, port: int, registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve `registry` (the flow's by default) on host:port/metrics in a background thread, stoppable fast."""
    registry = registry or pipeline_metrics().registry
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
    server: WSGIServer = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": STOP_POLL_S}, name="metrics-http", daemon=True
    )
    thread.start()
    return MetricsServer(server, thread)
