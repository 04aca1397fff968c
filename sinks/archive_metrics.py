"""What `streampulse archive` exposes on /metrics: progress, bad input, lag and the age of its newest chunk.

The archive is a long-running job of its own (streampulse/archive.py): an
operator needs to see that it keeps up with the topics (`lag`), that it
still commits (`last_chunk`), and what it skips. Its registry is its own,
served on the archive's `--metrics-port` (default 9465, beside the flow's 9464).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from sinks.parquet_archive import ChunkWritten


class ArchiveMetrics:
    """The archive job's metric objects (one registry per process; tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.messages = Counter(
            "streampulse_archive_messages",
            "Kafka messages covered by committed chunks (events and bad messages)",
            ["topic"],
            registry=self.registry,
        )
        self.events = Counter(
            "streampulse_archive_events", "Valid events written to Parquet", ["topic"], registry=self.registry
        )
        self.bad_events = Counter(
            "streampulse_archive_bad_events",
            "Bad messages skipped by the archive, by reason (the live flow dead-letters them)",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.chunks = Counter(
            "streampulse_archive_chunks",
            "Chunks committed (one per partition and cut)",
            ["topic"],
            registry=self.registry,
        )
        self.last_chunk = Gauge(
            "streampulse_archive_last_chunk_timestamp_seconds",
            "Wall clock when the newest chunk was committed (0 before the first)",
            registry=self.registry,
        )
        self.buffered = Gauge(
            "streampulse_archive_buffered_messages",
            "Messages read but not yet in a committed chunk (a kill -9 makes the restart read them again)",
            ["topic"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "streampulse_archive_lag_messages",
            "Messages between the archive's next offset and the partition's high watermark",
            ["topic", "partition"],
            registry=self.registry,
        )

    def committed(self, topic: str, written: ChunkWritten, now_s: float) -> None:
        """Count one committed chunk."""
        self.messages.labels(topic).inc(written.messages)
        self.events.labels(topic).inc(written.events)
        self.chunks.labels(topic).inc()
        for reason, count in written.bad.items():
            self.bad_events.labels(topic, reason).inc(count)
        self.last_chunk.set(now_s)
