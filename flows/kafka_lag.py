"""Consumer lag measured on its own thread, so it stays true while the dataflow is stuck.

A reader used to set its lag gauge itself, between batches. But a bytewax
worker runs its readers and its sinks on one thread: while the Redis sink
waits out an outage (sinks/redis_sink.py retries inside `write_batch`), no
reader runs, so the gauge froze at its last value, 0 when caught up, however
many messages piled up. Here one thread per process asks the broker for the
end offset of every partition this process reads, every `interval_s`, and
sets lag = end offset - the reader's next offset (which stands still while
the worker is stuck). When the broker does not answer, lag is NaN (unknown,
never 0) and `streampulse_kafka_reachable` is 0.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from functools import cache

from confluent_kafka import Consumer, KafkaException, TopicPartition

from connect.kafka_log import process_summary, with_logging
from flows.health import pipeline_metrics
from settings.kafka import KafkaSettings

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
# Per partition: a broker that does not answer within this is unreachable for this round.
QUERY_TIMEOUT_S = 2.0


class LagMonitor:
    """Measures the lag of the partitions readers `track`, on a daemon thread of its own."""

    def __init__(self, kafka: KafkaSettings, interval_s: float = INTERVAL_S) -> None:
        self._kafka = kafka
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._positions: dict[tuple[str, int], Callable[[], int]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, topic: str, partition: int, next_offset: Callable[[], int]) -> None:
        """Measure `topic[partition]`, whose reader's next offset `next_offset()` tells; starts the thread."""
        with self._lock:
            self._positions[(topic, partition)] = next_offset
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kafka-lag", daemon=True)
                self._thread.start()

    def untrack(self, topic: str, partition: int) -> None:
        """Stop measuring `topic[partition]` (its reader closed)."""
        with self._lock:
            self._positions.pop((topic, partition), None)

    def _run(self) -> None:
        # Its own client: the readers' consumers are only served while their worker runs, which is what fails.
        config = with_logging(self._kafka.client_config(), self._kafka.bootstrap)
        consumer = Consumer({**config, "group.id": "streampulse-lag", "enable.auto.commit": False})
        while True:
            # Serves its log lines and errors (to the summary), which wait in its queue until polled: before
            # measuring, so none from before an answer comes after it. No assignment: never returns a message.
            consumer.poll(0)
            self.measure(consumer)
            self._wake.wait(self._interval_s)

    def measure(self, consumer: Consumer) -> None:
        """One round: every tracked partition's lag, or NaN for all of them when the broker does not answer."""
        metrics = pipeline_metrics()
        with self._lock:
            positions = list(self._positions.items())
        lags: dict[tuple[str, int], float] = {}
        try:
            for (topic, partition), next_offset in positions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=QUERY_TIMEOUT_S, cached=False
                )
                lags[(topic, partition)] = float(max(high - next_offset(), 0))
        except KafkaException as exc:
            log.debug("end offsets not available: %s", exc)
            metrics.kafka_reachable.set(0)
            for topic, partition in (key for key, _ in positions):
                metrics.consumer_lag.labels(topic, str(partition)).set(math.nan)
            return
        if positions:
            metrics.kafka_reachable.set(1)
            process_summary().reachable(self._kafka.bootstrap)
        for (topic, partition), lag in lags.items():
            metrics.consumer_lag.labels(topic, str(partition)).set(lag)


@cache
def lag_monitor(kafka: KafkaSettings) -> LagMonitor:
    """The process's monitor of the cluster `kafka` names (readers of one flow share it)."""
    return LagMonitor(kafka)
