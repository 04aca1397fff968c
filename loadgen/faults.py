"""Delivery: turns valid events (in event-time order) into messages in delivery order, injecting faults.

Every message has a delivery time: its event time, plus up to `jitter_ms`
(out-of-order delivery within the bound), plus `late_by_ms` for the late
ones; a duplicate follows its original by up to `duplicate_delay_ms`; a
malformed message goes out with the valid event it was made from. Messages
leave in delivery-time order. In realtime mode the delivery time is the
wall-clock time the pacer sends the message at; in simulated mode it only
orders the output.

Which events get a fault is decided by a per-fault accumulator with a
random phase: with fraction F exactly every 1/F-th valid event is picked, so
a run of N events has floor(F*N) or ceil(F*N) of each fault, and the ground
truth records exactly which.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

import orjson

from loadgen.config import FaultConfig
from loadgen.malformed import Malformer
from loadgen.truth import TruthBuilder
from schemas.contract import families

Event = dict[str, Any]

VALID, DUPLICATE, MALFORMED, LATE = 0, 1, 2, 3
"""Message kinds; LATE is a valid event (its only delivery) that was held back on purpose."""
KIND_NAMES = ("valid", "duplicate", "malformed", "late")
# A message on its way out: (delivery_ms, family, key, value, event or None, kind).
Out = tuple[int, str, "str | None", bytes, "Event | None", int]

FAMILY_KEY: dict[str, tuple[str, str]] = {
    et: (f.name, f.key_field) for f in families().values() for et in f.event_types
}


class Delivery:
    """Encodes events and applies the delivery faults of one run."""

    def __init__(
        self,
        faults: FaultConfig,
        seed: int,
        tag: str,
        truth: TruthBuilder | None = None,
        encode: Callable[[Any], bytes] = orjson.dumps,
    ) -> None:
        self.faults = faults
        self.truth = truth
        self.encode = encode
        self.rng = random.Random(f"faults:{seed}")
        self.malformer = Malformer(tag)
        self._heap: list[tuple[int, int, Out]] = []
        self._seq = itertools.count()
        # Random phases, so that the picked events differ between faults and seeds.
        self._acc_late = self.rng.random()
        self._acc_dup = self.rng.random()
        self._acc_bad = self.rng.random()
        self._max_released = -1
        self.counts = [0, 0, 0, 0]

    def process(self, events: list[Event]) -> list[Out]:
        """Messages ready to leave once `events` (the next ones in event-time order) are known."""
        if not self.faults.any:
            return self._plain(events)
        f = self.faults
        rng = self.rng.random
        heap = self._heap
        seq = self._seq
        encode = self.encode
        fam_key = FAMILY_KEY
        malformer = self.malformer
        for ev in events:
            t = ev["event_time_ms"]
            family, key_field = fam_key[ev["event_type"]]
            key = ev[key_field]
            value = encode(ev)
            d = t + int(rng() * (f.jitter_ms + 1)) if f.jitter_ms else t
            kind = VALID
            if f.late_fraction:
                self._acc_late += f.late_fraction
                if self._acc_late >= 1.0:
                    self._acc_late -= 1.0
                    d += f.late_by_ms
                    kind = LATE
            heapq.heappush(heap, (d, next(seq), (d, family, key, value, ev, kind)))
            if f.duplicate_fraction:
                self._acc_dup += f.duplicate_fraction
                if self._acc_dup >= 1.0:
                    self._acc_dup -= 1.0
                    d2 = d + int(rng() * (f.duplicate_delay_ms + 1))
                    heapq.heappush(heap, (d2, next(seq), (d2, family, key, value, ev, DUPLICATE)))
            if f.malformed_fraction:
                malformer.observe(ev)
                self._acc_bad += f.malformed_fraction
                while self._acc_bad >= 1.0:
                    self._acc_bad -= 1.0
                    bad_kind, bad_family, bad_key, raw = malformer.make(ev)
                    heapq.heappush(heap, (d, next(seq), (d, bad_family, bad_key, raw, None, MALFORMED)))
                    if self.truth is not None:
                        self.truth.add_malformed(bad_kind, bad_family)
        if not events:
            return []
        return self._release(events[-1]["event_time_ms"])

    def _plain(self, events: list[Event]) -> list[Out]:
        encode = self.encode
        fam_key = FAMILY_KEY
        out: list[Out] = []
        append = out.append
        for ev in events:
            family, key_field = fam_key[ev["event_type"]]
            append((ev["event_time_ms"], family, ev[key_field], encode(ev), ev, VALID))
        self.counts[VALID] += len(out)
        return out

    def _release(self, upto: int | None) -> list[Out]:
        """Pop every message due at or before `upto` (all of them when None)."""
        heap = self._heap
        out: list[Out] = []
        truth = self.truth
        counts = self.counts
        while heap and (upto is None or heap[0][0] <= upto):
            msg = heapq.heappop(heap)[2]
            kind = msg[5]
            counts[kind] += 1
            if kind in (VALID, LATE):
                ev = msg[4]
                assert ev is not None
                t = ev["event_time_ms"]
                behind = self._max_released - t
                if behind > 0:
                    if truth is not None:
                        truth.out_of_order += 1
                else:
                    self._max_released = t
                if kind == LATE and truth is not None:
                    truth.add_late(ev, msg[0] - t, max(behind, 0))
            elif kind == DUPLICATE and truth is not None:
                ev = msg[4]
                assert ev is not None
                truth.add_duplicate(ev, msg[0] - ev["event_time_ms"])
            out.append(msg)
        return out

    def flush(self) -> list[Out]:
        """Every message still held back (late ones, recent jittered ones), in delivery order."""
        return self._release(None)
