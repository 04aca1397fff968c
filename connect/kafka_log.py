"""librdkafka's own log lines and error callbacks, summarised into a few lines of streampulse's log.

Left alone, every Kafka client prints each failed connection attempt to
stderr from its own threads: during an outage ~17 clients of one flow
(readers, dead-letter and anomaly producers, admin) printed ~86 lines a
second. Every client the flow makes takes its config through `with_logging`,
which routes librdkafka's lines (`logger=`) and errors (`error_cb`) to one
`KafkaLogSummary` per process. It writes:

- one warning when the cluster becomes unreachable ("Kafka H unreachable
  since 12:00:01, retrying: <cause>"), a reminder with the count of
  connection errors every `reminder_s` while it stays so, and one line when
  it answers again (`reachable()`, called by whoever gets an answer);
- any other librdkafka line once per kind (its facility), then at most once
  per `reminder_s` with how many were held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from confluent_kafka import KafkaError

log = logging.getLogger("streampulse.kafka")

REMINDER_S = 30.0
# Connection errors this soon after Kafka answered are lines queued during the outage and served late.
GRACE_S = 2.0

# Error codes and log facilities that mean "cannot talk to the broker at all" (the cluster is down or unreachable).
_UNREACHABLE_CODES = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE})
_UNREACHABLE_FACILITIES = frozenset({"FAIL", "BROKERFAIL", "CONNECT", "ERROR"})
_UNREACHABLE_TEXT = ("Connect to", "Connection refused", "brokers are down", "Disconnected", "transport failure")


@dataclass
class _Outage:
    since_wall: float
    last_line_at: float
    errors: int = 0


@dataclass
class _Held:
    last_line_at: float
    held: int = 0


class KafkaLogSummary:
    """Turns a stream of librdkafka lines and errors into a few lines a person can read; thread-safe."""

    def __init__(
        self,
        out: logging.Logger = log,
        reminder_s: float = REMINDER_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._out = out
        self._reminder_s = reminder_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._outages: dict[str, _Outage] = {}
        self._back_at: dict[str, float] = {}
        self._held: dict[tuple[str, str], _Held] = {}

    def on_error(self, bootstrap: str, error: KafkaError, outages: bool = True) -> None:
        """An `error_cb` error of a client of `bootstrap`; its connection errors count only if `outages`."""
        text = error.str()
        if error.code() in _UNREACHABLE_CODES and not _refusal_kind(text):
            if outages:
                self.unreachable(bootstrap, text)
        else:
            self.other(bootstrap, _refusal_kind(text) or error.name(), logging.WARNING, text)

    def on_line(self, bootstrap: str, level: int, facility: str, text: str, outages: bool = True) -> None:
        """One librdkafka log line (as a logging level) of a client of `bootstrap`; see `on_error` for `outages`."""
        refusal = _refusal_kind(text)
        if refusal:
            # error_cb reports the same refusal: one kind for both, so it is said once.
            self.other(bootstrap, refusal, logging.WARNING, text)
        elif level >= logging.WARNING and facility in _UNREACHABLE_FACILITIES and _is_connection_error(text):
            if outages:
                self.unreachable(bootstrap, text)
        else:
            self.other(bootstrap, facility, level, text)

    def unreachable(self, bootstrap: str, cause: str) -> None:
        """A failed attempt to reach the cluster at `bootstrap`: says so once, then every `reminder_s`."""
        now = self._clock()
        with self._lock:
            if now - self._back_at.get(bootstrap, -GRACE_S) < GRACE_S:
                return
            outage = self._outages.get(bootstrap)
            if outage is None:
                outage = self._outages[bootstrap] = _Outage(self._wall_clock(), now, 1)
                self._out.warning(
                    "Kafka %s unreachable since %s, retrying: %s", bootstrap, _hms(outage.since_wall), cause
                )
                return
            outage.errors += 1
            if now - outage.last_line_at < self._reminder_s:
                return
            outage.last_line_at = now
            errors = outage.errors
        self._out.warning(
            "Kafka %s unreachable since %s, retrying; %d connection errors", bootstrap, _hms(outage.since_wall), errors
        )

    def reachable(self, bootstrap: str) -> None:
        """The cluster at `bootstrap` answered: ends an outage with one line (cheap when there is none)."""
        if bootstrap not in self._outages:  # the common case, without the lock
            return
        with self._lock:
            outage = self._outages.pop(bootstrap, None)
            self._back_at[bootstrap] = self._clock()
        if outage is not None:
            self._out.warning(
                "Kafka %s reachable again after %.0f s unreachable (%d connection errors)",
                bootstrap,
                self._wall_clock() - outage.since_wall,
                outage.errors,
            )

    def is_unreachable(self, bootstrap: str) -> bool:
        """Whether an outage of `bootstrap` is going on."""
        return bootstrap in self._outages

    def other(self, bootstrap: str, kind: str, level: int, text: str) -> None:
        """Any other line: the first of its kind, then one per `reminder_s` saying how many were held back."""
        now = self._clock()
        key = (bootstrap, kind)
        with self._lock:
            held = self._held.get(key)
            if held is not None and now - held.last_line_at < self._reminder_s:
                held.held += 1
                return
            count = held.held if held is not None else 0
            self._held[key] = _Held(now)
        suffix = f" ({count} more like it held back)" if count else ""
        self._out.log(level, "Kafka %s: %s%s", bootstrap, text, suffix)


def _refusal_kind(text: str) -> str | None:
    """The kind of refusal ("authentication" or "tls") when the broker answered but refused us; retrying will not mend it."""
    if "SASL" in text and ("authentication" in text or "mechanism" in text):
        return "authentication"
    if "SSL" in text and ("handshake" in text or "certificate" in text):
        return "tls"
    return None


def _is_connection_error(text: str) -> bool:
    return any(part in text for part in _UNREACHABLE_TEXT)


def _hms(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%H:%M:%S UTC")


class _SummaryHandler(logging.Handler):
    """Receives confluent-kafka's `logger.log(level, "%s [%s] %s", facility, client name, text)` calls."""

    def __init__(self, summary: KafkaLogSummary, bootstrap: str, outages: bool) -> None:
        super().__init__()
        self._summary = summary
        self._bootstrap = bootstrap
        self._outages = outages

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 3:
            facility, _client, text = (str(a) for a in args)
        else:
            facility, text = "LOG", record.getMessage()
        self._summary.on_line(self._bootstrap, record.levelno, facility, text, self._outages)


@cache
def process_summary() -> KafkaLogSummary:
    """The one summary of this process: every client's lines meet there, so an outage is told once."""
    return KafkaLogSummary()


@cache
def _client_logger(bootstrap: str, outages: bool) -> logging.Logger:
    # Not registered with logging's manager: nothing but the summary hears these, and nothing configures them.
    logger = logging.Logger(f"streampulse.kafka.librdkafka[{bootstrap}]", logging.INFO)
    logger.propagate = False
    logger.addHandler(_SummaryHandler(process_summary(), bootstrap, outages))
    return logger


def with_logging(
    config: dict[str, Any],
    bootstrap: str,
    on_error: Callable[[KafkaError], None] | None = None,
    outages: bool = True,
) -> dict[str, Any]:
    """`config` with librdkafka's lines and errors routed to the process's summary (and to `on_error` too).

    `outages=False` for clients polled only now and then (the dead-letter and anomaly producers poll when they
    write): their connection errors wait in their queue and would tell of an outage long over. The clients polled
    all the time (readers, the lag monitor) tell of outages for them.
    """
    summary = process_summary()

    def error_cb(error: KafkaError) -> None:
        if on_error is not None:
            on_error(error)
        summary.on_error(bootstrap, error, outages)

    return {
        **config,
        "logger": _client_logger(bootstrap, outages),
        "error_cb": error_cb,
        # A broker closing an idle connection is routine, not an outage worth a line.
        "log.connection.close": False,
    }
