"""CPU seconds of this process's threads by kind: librdkafka's own threads against everything else.

librdkafka runs each Kafka client's network work (fetching, parsing fetch
responses, producing) on threads of its own, named `rdk:...`; no step of the
flow runs on them, so `bench.cpu_split` counts them apart from its steps.
Linux lists only live threads, and clients close their threads at shutdown,
so a background thread samples every `interval_s` and keeps each thread's
latest figure: what a thread used after its last sample is not counted here
(it stays in the process's total).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
LIBRDKAFKA_PREFIX = "rdk:"


def thread_cpu_s(task_dir: Path = Path("/proc/self/task")) -> dict[int, tuple[str, float]]:
    """Each live thread of the process: thread id -> (its name, its user + system CPU seconds)."""
    threads: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return threads
    for tid in tids:
        try:
            raw = (task_dir / tid / "stat").read_text()
        except OSError:
            continue  # ended between the listing and the read
        # The name is in parentheses and may hold spaces; utime and stime are the 12th and 13th fields after it.
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICKS_PER_S)
    return threads


class ThreadSampler:
    """Every thread's latest CPU seconds, sampled in the background; its own thread is left out."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self._interval_s = interval_s
        self._latest: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._own_tid: int | None = None

    def start(self) -> None:
        """Sample until the process exits."""
        threading.Thread(target=self._run, name="thread-cpu-sampler", daemon=True).start()

    def _run(self) -> None:
        self._own_tid = threading.get_native_id()
        while True:
            self.sample()
            time.sleep(self._interval_s)

    def sample(self) -> None:
        """Take every live thread's figure now."""
        threads = thread_cpu_s()
        with self._lock:
            self._latest.update(threads)

    def librdkafka_cpu_s(self) -> float:
        """CPU seconds librdkafka's threads had used by their latest sample."""
        with self._lock:
            return sum(cpu for name, cpu in self._latest.values() if name.startswith(LIBRDKAFKA_PREFIX))

    def own_cpu_s(self) -> float:
        """CPU seconds the sampling thread itself used (not the flow's: taken out of the process's total)."""
        with self._lock:
            own = self._latest.get(self._own_tid) if self._own_tid is not None else None
        return own[1] if own is not None else 0.0
