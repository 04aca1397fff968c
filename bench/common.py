"""Shared pieces of the benchmark harness: progress output, timed child processes, peak memory, the machine.

Every contender runs as a child process (`ManagedProcess`: its own process
group, killed with us), timed from just before it is started to its exit, so
interpreter start-up, imports and connecting count for every contender
alike. Peak memory is the kernel's high-water mark of the resident set
(`VmHWM` in /proc/PID/status), sampled while the process runs: Linux only,
which is what the harness targets.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streampulse.processes import ManagedProcess

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# How often a running child's memory is sampled.
SAMPLE_INTERVAL_S = 0.05

_T0 = time.monotonic()


def median_or_none(values: Sequence[float]) -> float | None:
    """The median of `values`, or None when there are none (a contender whose every round failed)."""
    return statistics.median(values) if values else None


def say(message: str) -> None:
    """One progress line on stderr, with the time since the harness started."""
    elapsed = time.monotonic() - _T0
    print(f"[bench {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


class ChildFailed(RuntimeError):
    """A contender exited with an error; the message holds its log tail."""


@dataclass(frozen=True)
class Timed:
    """How one child process ran."""

    wall_s: float
    peak_rss_bytes: int
    log_path: Path
    # CPU seconds (user + system) of the processes themselves, and of the whole machine over the same wall time:
    # the rest is the broker, Redis and anything else running. cores_busy = machine_cpu_s / wall_s.
    cpu_s: float = 0.0
    machine_cpu_s: float = 0.0
    # Each process's own CPU seconds (with its reaped children), in the order they were given: the busiest of a
    # cluster is what bounds its capacity with a core per process.
    process_cpu_s: tuple[float, ...] = ()


def machine_busy_s() -> float:
    """CPU seconds the machine has spent not idle since boot, all cores (from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (0 if the process is gone or the field is missing)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_bytes(pid: int) -> int:
    """The process's resident-set high-water mark so far (the kernel keeps it: VmHWM)."""
    return _status_kib(pid, "VmHWM:") * 1024


def rss_bytes(pid: int) -> int:
    """The process's resident set right now."""
    return _status_kib(pid, "VmRSS:") * 1024


def start(name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    """Start a child that dies with us, output to `log_path`, from the repository root."""
    return ManagedProcess(name, list(argv), log_path=log_path, env={**os.environ, **(env or {})}, cwd=REPO)


def run_timed(
    processes: Sequence[tuple[str, Sequence[str]]],
    log_dir: Path,
    timeout_s: float,
    env: dict[str, str] | None = None,
) -> Timed:
    """Start every process at once, wait for all to exit; wall time from the first start to the last exit.

    Peak RSS is the sum of each process's own peak (for a cluster of processes
    that all hold state at the end, this is what the machine must hold).
    Raises ChildFailed with the log tail if one exits non-zero or time runs out.
    """
    started = time.perf_counter()
    busy_at_start = machine_busy_s()
    children = [start(name, argv, log_dir / f"{name}.log", env) for name, argv in processes]
    exited: list[float | None] = [None] * len(children)
    busy_at_exit: list[float] = [0.0] * len(children)
    cpu: list[float] = [0.0] * len(children)

    def wait(i: int) -> None:
        # A thread per child records its exit time to the microsecond (sampling cannot) and its CPU time.
        popen = children[i].popen
        _pid, status, usage = os.wait4(popen.pid, 0)
        exited[i] = time.perf_counter()
        busy_at_exit[i] = machine_busy_s()
        popen.returncode = os.waitstatus_to_exitcode(status)
        # wait4's usage is the child's own plus that of its children it waited for (Linux getrusage semantics).
        cpu[i] = usage.ru_utime + usage.ru_stime

    waiters = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(len(children))]
    for waiter in waiters:
        waiter.start()
    peaks = [0] * len(children)
    deadline = started + timeout_s
    try:
        while any(e is None for e in exited):
            for i, child in enumerate(children):
                if exited[i] is None:
                    # VmHWM only grows: the last sample is the peak but for the last interval's growth.
                    peaks[i] = max(peaks[i], peak_rss_bytes(child.popen.pid))
            if time.perf_counter() > deadline:
                raise ChildFailed(
                    f"{children[0].name} did not finish within {timeout_s:.0f} s:\n{children[0].log_tail()}"
                )
            time.sleep(SAMPLE_INTERVAL_S)
    finally:
        for child in children:
            child.stop(grace_s=5)
        for waiter in waiters:
            waiter.join(timeout=10)
    for child in children:
        if child.popen.returncode != 0:
            raise ChildFailed(
                f"{child.name} exited with code {child.popen.returncode}; its log ({child.log_path}) ends with:\n"
                f"{child.log_tail(40)}"
            )
    wall = max(e for e in exited if e is not None) - started
    return Timed(wall, sum(peaks), children[0].log_path, sum(cpu), max(busy_at_exit) - busy_at_start, tuple(cpu))


@dataclass(frozen=True)
class Machine:
    """What the numbers were measured on."""

    cores: int
    cpu_model: str
    memory_gib: float
    python: str
    platform: str

    def as_dict(self) -> dict[str, object]:
        """For the JSON results."""
        return {
            "cores": self.cores,
            "cpu_model": self.cpu_model,
            "memory_gib": self.memory_gib,
            "python": self.python,
            "platform": self.platform,
        }


def machine() -> Machine:
    """Cores usable by us, CPU model and total memory, from the OS."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return Machine(
        cores=cores,
        cpu_model=model,
        memory_gib=round(memory_kib / 1024 / 1024, 1),
        python=platform.python_version(),
        platform=platform.platform(),
    )


PRODUCT_DIRS = ("flows", "sinks", "schemas", "streampulse", "loadgen")


def code_fingerprint() -> str:
    """A short hash of HEAD and the uncommitted changes to the product's code: did it change during the run?"""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, check=True, timeout=10)
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", *PRODUCT_DIRS], cwd=REPO, capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return hashlib.blake2b(head.stdout + diff.stdout, digest_size=6).hexdigest()


def git_commit() -> str:
    """The checked-out commit, `+dirty` if the product's code has uncommitted changes (what the numbers came from)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *PRODUCT_DIRS],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
