"""The load generator as a Python API, for tests and tools that want events and truth in memory.

    from loadgen.api import generate
    out = generate(seed=7, events=50_000, start_ms=1_714_521_600_000, span_ms=3_600_000)
    out.messages   # list[Message] in delivery order (family, key, value bytes, kind, delivery_ms)
    out.truth      # the ground-truth document (loadgen/TRUTH.md), as written by --truth
    out.events()   # the distinct valid events as dicts, in event-time order

`produce(messages, settings)` sends such messages to Kafka like `streampulse loadgen` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from loadgen.config import FaultConfig, LoadgenConfig, ModelParams
from loadgen.faults import KIND_NAMES, MALFORMED, Out
from loadgen.incidents import Incident, parse_incidents
from loadgen.realism import RealismParams
from loadgen.runner import RunResult, run
from loadgen.sinks import KafkaSink, MemorySink
from settings.kafka import KafkaSettings


class Message(NamedTuple):
    """One generated Kafka message."""

    family: str
    """`playback` or `signup`: which topic it goes to."""
    key: str | None
    """The message key (the family's key field), None when a malformed message has none."""
    value: bytes
    kind: str
    """"valid", "late" (valid, held back on purpose), "duplicate" (same bytes again) or "malformed"."""
    delivery_ms: int
    """When it is delivered: event time plus jitter/lateness (wall clock in realtime mode)."""
    event: dict[str, Any] | None
    """The event as a dict (None for malformed messages)."""


@dataclass
class Generated:
    """Messages and ground truth of one in-memory run."""

    messages: list[Message]
    truth: dict[str, Any]
    result: RunResult = field(repr=False)

    def events(self) -> list[dict[str, Any]]:
        """The distinct valid events, in event-time order (delivery order may differ)."""
        evs = [m.event for m in self.messages if m.event is not None and m.kind in ("valid", "late")]
        return sorted(evs, key=lambda e: e["event_time_ms"])  # sorted() is stable: equal times keep order


def _message(out: Out) -> Message:
    # tuple.__new__ skips NamedTuple's Python-level constructor: this runs once per message.
    fields = (out[1], out[2], out[3], KIND_NAMES[out[5]], out[0], out[4] if out[5] != MALFORMED else None)
    return tuple.__new__(Message, fields)


def generate(
    *,
    seed: int = 1,
    events: int | None = None,
    start_ms: int,
    span_ms: int | None = 86_400_000,
    rate: float | None = None,
    params: ModelParams | None = None,
    faults: FaultConfig | None = None,
    incidents: Iterable[Incident] | list[dict[str, Any]] = (),
    windows_ms: tuple[int, ...] = (10_000, 60_000),
    session_timeout_ms: int | None = None,
    realism: RealismParams | None = None,
    with_truth: bool = True,
) -> Generated:
    """Generate a simulated run into memory: `events` distinct valid events (or the whole span) and its truth.

    `incidents` are `Incident`s or plain dicts in the incident-file format; `realism` the realistic-traffic
    options (loadgen/realism.py, all off by default). The same arguments always give
    the same messages and truth as `streampulse loadgen --mode simulated` with the equivalent options.
    `with_truth=False` skips the ground truth (faster; `truth` is then empty).
    """
    incident_list = list(incidents)
    parsed: tuple[Incident, ...]
    if incident_list and isinstance(incident_list[0], dict):
        parsed = parse_incidents(incident_list, "incidents")
    else:
        parsed = tuple(i for i in incident_list if isinstance(i, Incident))
    config = LoadgenConfig(
        start_ms=start_ms,
        seed=seed,
        mode="simulated",
        events=events,
        span_ms=span_ms,
        rate=rate,
        params=params or ModelParams(),
        faults=faults or FaultConfig(),
        incidents=parsed,
        windows_ms=windows_ms,
        session_timeout_ms=session_timeout_ms,
        realism=realism or RealismParams(),
    )
    return generate_config(config, with_truth=with_truth)


def generate_config(config: LoadgenConfig, with_truth: bool = True) -> Generated:
    """Like `generate`, from a ready `LoadgenConfig` (simulated mode only: no pacing in memory)."""
    if config.mode != "simulated":
        raise ValueError("in-memory generation is simulated only")
    sink = MemorySink()
    result = run(config, sink, with_truth=with_truth)
    return Generated([_message(m) for m in sink.messages], result.truth or {}, result)


def produce(messages: Iterable[Message], settings: KafkaSettings, **kafka_options: Any) -> dict[str, Any]:
    """Send messages to Kafka (topics from `settings`), like the CLI: returns the delivery report.

    Raises `loadgen.sinks.SinkError` when the broker cannot be reached. `kafka_options` are `KafkaSink`'s
    keyword arguments (linger_ms, batch_size, compression, timeout_s, flush_timeout_s, timestamps).
    """
    sink = KafkaSink(settings, **kafka_options)
    kinds = {name: i for i, name in enumerate(KIND_NAMES)}
    batch: list[Out] = []
    for m in messages:
        batch.append((m.delivery_ms, m.family, m.key, m.value, m.event, kinds[m.kind]))
        if len(batch) >= 10_000:
            sink.write(batch)
            batch = []
    sink.write(batch)
    return sink.close()
