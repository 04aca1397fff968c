"""What one saved anomaly-detector state costs: its size in Redis and the time to take, store and resume it.

The load generator's 14 countries x 6 device types (735 series with their
roll-ups), after 6 hours of 10-second windows of noisy traffic: the live run
takes this once per --detector-state-interval of event time (per part), a
replay reads and resumes it once at start (flows/anomaly/warm_start.py,
sinks/detector_state.py). About 20 seconds.

    .venv/bin/python -m bench.detector_state_cost
"""

from __future__ import annotations

import pickle
import random
import time
from collections.abc import Callable
from typing import TypeVar

from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.warm_start import reshard
from flows.sharding import DEVICE_TYPES
from flows.windows.store import WindowValues
from loadgen.world import COUNTRIES
from sinks.detector_state import decode_snapshot, encode_snapshot

T0 = 1_714_521_600_000
FINE_MS = 10_000
WINDOWS = 6 * 360  # 6 hours

R = TypeVar("R")


def _best_ms(work: Callable[[], R], rounds: int = 5) -> tuple[float, R]:
    """The fastest of `rounds` runs of `work` in ms (this machine is shared: the minimum is the cost), its result."""
    times, result = [], work()
    for _ in range(rounds):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000, result


def _window(rng: random.Random) -> WindowValues:
    values: WindowValues = {"stream_starts": {}, "start_failures": {}, "played_ms": {}, "rebuffers": {}}
    for country in COUNTRIES:
        for device in DEVICE_TYPES:
            starts = rng.randint(20, 60)
            values["stream_starts"][(country.code, device, "c1")] = starts
            values["start_failures"][(country.code, device, "E1")] = rng.randint(0, 3)
            values["played_ms"][(country.code, device)] = starts * 60_000
            values["rebuffers"][(country.code, device)] = rng.randint(0, 4)
    return values


def main() -> None:
    """Print the figures."""
    rng = random.Random(1)
    detector = AnomalyDetector()
    for w in range(WINDOWS):
        detector.observe(T0 + w * FINE_MS, T0 + (w + 1) * FINE_MS, _window(rng), scores=False)
    snapshot_ms, snapshot = _best_ms(detector.snapshot)
    encode_ms, stored = _best_ms(lambda: encode_snapshot(snapshot))
    decode_ms, decoded = _best_ms(lambda: decode_snapshot(stored))
    restore_ms, _ = _best_ms(lambda: AnomalyDetector.restore(decoded))
    reshard_ms, _ = _best_ms(lambda: reshard({"0": decoded}, 4, break_in_data=False))
    print(f"series: {detector.series_count}")
    print(f"stored: {len(stored) / 1e6:.2f} MB (pickled: {len(pickle.dumps(snapshot)) / 1e6:.2f} MB)")
    print(f"live, once per interval: snapshot {snapshot_ms:.0f} ms + encode {encode_ms:.0f} ms")
    print(
        f"replay, once at start: decode {decode_ms:.0f} ms + restore {restore_ms:.0f} ms (cut 1->4: {reshard_ms:.1f} ms)"
    )


if __name__ == "__main__":
    main()
