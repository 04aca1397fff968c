"""Importing streampulse holds OpenBLAS to one thread, unless the environment says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

# How many threads the process has once the run job's modules (numpy among them) are imported.
_THREADS_AFTER_IMPORT = (
    "import os, streampulse.run; print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))"
)


def _run(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_AFTER_IMPORT], env=env, capture_output=True, text=True, check=True
    )
    setting, threads = done.stdout.split()
    return setting, int(threads)


def test_the_run_job_imports_numpy_with_a_single_blas_thread() -> None:
    setting, threads = _run(None)
    assert setting == "1"
    assert threads == 1  # the interpreter's own thread: no OpenBLAS pool


def test_an_explicit_setting_is_kept() -> None:
    setting, threads = _run("2")
    assert setting == "2"
    assert threads == 2  # OpenBLAS's pool: its caller plus one more (proves the check above can fail)
