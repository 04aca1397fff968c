"""The per-partition hot path alone: decode, then decode + fold + merge, on the same messages, no Kafka.

    .venv/bin/python -m bench.fold_bench [--events N] [--repeat R] [--profile]

With the native fold installed (native/), the Python fold runs too, for the ratio.

The load generator makes N events in simulated time (every delivery fault on),
split into 4 partitions by key as the producer would. Each pass runs every
partition's messages through the contract decoder alone (the floor), then
through the decoder, a `PartitionAggregator` with the real folders and the
window store, in batches the size the Kafka readers consume. Passes alternate
and the best of R counts; the figure that matters is the ratio of the two
rates, measured in the same run (absolute rates move with machine noise).
`--profile` runs one fold pass under cProfile and prints the top entries.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
import zlib
from collections.abc import Callable

from flows.fold.native import Aggregator, make_aggregator, native_core
from flows.fold.partition_aggregator import Folder, PartitionAggregator
from flows.fold.playback import PlaybackFolder
from flows.fold.signup import SignupFolder
from flows.sources.reader_config import ReaderConfig
from flows.windows.store import WindowStore
from loadgen.api import generate
from loadgen.config import FaultConfig
from schemas.decoder import EventDecoder, Rejection
from settings.windows import WindowConfig

PARTITIONS = 4
BATCH = ReaderConfig.batch_size
START_MS = 1_714_521_600_000
SESSION_TIMEOUT_MS = 60_000
SIGNUP_TIMEOUT_MS = 3_600_000

Inputs = dict[str, list[list[bytes]]]


def make_inputs(events: int, seed: int, span_ms: int) -> Inputs:
    """Messages per partition of each family, in delivery order, cut into reader-sized batches."""
    generated = generate(
        seed=seed,
        events=events,
        start_ms=START_MS,
        span_ms=span_ms,
        faults=FaultConfig(jitter_ms=2_000, late_fraction=0.005, duplicate_fraction=0.01, malformed_fraction=0.005),
        with_truth=False,
    )
    ordered = sorted(generated.messages, key=lambda m: m.delivery_ms)
    parts: dict[str, list[bytes]] = {}
    for message in ordered:
        key = (message.key or "").encode()
        name = f"{message.family}:{zlib.crc32(key) % PARTITIONS}"
        parts.setdefault(name, []).append(message.value)
    return {name: [values[i : i + BATCH] for i in range(0, len(values), BATCH)] for name, values in parts.items()}


def _folder(family: str, windows: WindowConfig) -> Folder:
    if family == "playback":
        return PlaybackFolder(windows, SESSION_TIMEOUT_MS)
    return SignupFolder(SIGNUP_TIMEOUT_MS)


def decode_only(inputs: Inputs) -> int:
    """Decode every message; the floor any flow pays."""
    now = START_MS + 7_200_000
    n = 0
    for name, batches in inputs.items():
        decode = EventDecoder(name.split(":")[0], 65_536, 3_600_000).decode
        for batch in batches:
            for raw in batch:
                decode(raw, now)
            n += len(batch)
    return n


def decode_and_fold(inputs: Inputs, make: Callable[[str, WindowConfig, Folder], Aggregator] = make_aggregator) -> int:
    """Decode, fold per partition and merge every batch summary into one window store, as the flow does."""
    windows = WindowConfig()
    store = WindowStore(windows, list(inputs), SESSION_TIMEOUT_MS)
    now = START_MS + 7_200_000
    n = 0
    readers = []
    for name, batches in inputs.items():
        family = name.split(":")[0]
        decoder = EventDecoder(family, 65_536, 3_600_000)
        readers.append((name, batches, decoder.decode, make(name, windows, _folder(family, windows))))
    # Round-robin over partitions, one batch at a time, like readers interleaving.
    longest = max(len(b) for _, b, _, _ in readers)
    next_publish = time.perf_counter() + 1.0
    for i in range(longest):
        for _name, batches, decode, aggregator in readers:
            if i >= len(batches):
                continue
            # Folded as decoded, as the Kafka reader does (flows/sources/kafka.py).
            aggregator.add_all(e for e in (decode(raw, now) for raw in batches[i]) if type(e) is not Rejection)
            n += len(batches[i])
            store.merge(aggregator.summary("active"))
        if time.perf_counter() >= next_publish:  # the flow publishes every publish interval (1 s)
            store.publish()
            next_publish = time.perf_counter() + 1.0
    store.finish()
    return n


def python_fold(inputs: Inputs) -> int:
    """`decode_and_fold` with the Python aggregator for every partition (the reference implementation)."""
    return decode_and_fold(inputs, PartitionAggregator)


def best_rate(run: Callable[[Inputs], int], inputs: Inputs) -> float:
    gc.collect()
    started = time.perf_counter()
    n = run(inputs)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    # The harness's density: 2 M events over an hour of event time.
    parser.add_argument("--events-per-second", type=float, default=2_000_000 / 3600, help="of event time")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    inputs = make_inputs(args.events, args.seed, int(args.events / args.events_per_second * 1000))
    messages = sum(len(b) for batches in inputs.values() for b in batches)
    print(f"{messages:,} messages in {len(inputs)} partitions")
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)  # as streampulse/run.py sets them
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(decode_and_fold, inputs)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)
        return
    native = native_core() is not None
    decode_rates, fold_rates, python_rates = [], [], []
    for _ in range(args.repeat):
        decode_rates.append(best_rate(decode_only, inputs))
        fold_rates.append(best_rate(decode_and_fold, inputs))
        if native:
            python_rates.append(best_rate(python_fold, inputs))
    decode, fold = max(decode_rates), max(fold_rates)
    print(f"decode only:            {decode:12,.0f} msg/s")
    print(f"decode + fold + merge:  {fold:12,.0f} msg/s   ({fold / decode:.2f} of decode only)", end="")
    print(", playback folded in Rust (streampulse_native)" if native else ", folded in Python")
    if native:
        python = max(python_rates)
        print(
            f"... folded in Python:   {python:12,.0f} msg/s   ({python / decode:.2f}; Rust {fold / python:.2f}x Python)"
        )


if __name__ == "__main__":
    main()
