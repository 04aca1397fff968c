"""Ctrl-C (SIGINT) that stops bytewax between steps, never inside one.

Bytewax stops cleanly when Python's SIGINT handler raises KeyboardInterrupt
while bytewax itself checks for signals between steps. Python runs the handler
wherever the main thread is, though: inside a step's Python code (a source's
`next_batch`, a sink's write) the KeyboardInterrupt unwinds through Rust,
which prints a panic and a traceback and exits 1. Here the handler raises only
when it runs from bytewax's own check (the frame that called `cli_main`);
anywhere else it notes the request, and the signal is sent again every few
milliseconds until it lands between steps. A step that does not end (a write
waiting out a Redis outage) cannot be interrupted inside without bytewax
aborting, so after FORCE_AFTER_S the process exits there and then, as a
kill -9 would: every write is idempotent and a restart with --recovery-dir
resumes from the last snapshot, as it does after any crash. Ctrl-C always
stops the flow.

Even its clean stop makes bytewax panic on purpose (a Rust panic carries the
KeyboardInterrupt out of the worker), and Rust's panic hook prints that to
stderr. So from the moment the stop is asked for until `cli_main` returns,
stderr goes to a temporary file; afterwards the lines of our own log format
(they start with the date) are passed on and the panic report is dropped.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

REDELIVER_EVERY_S = 0.01
FORCE_AFTER_S = 5.0


class _BetweenSteps:
    def __init__(self, boundary: FrameType) -> None:
        self._boundary = boundary
        self._main_thread = threading.main_thread().ident or 0
        self._done = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.requested = False
        self._raised = False
        self._stderr: int | None = None
        self._captured: tempfile._TemporaryFileWrapper[bytes] | None = None
        self._lock = threading.Lock()  # the watchdog and close() both restore stderr

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            self._watchdog = threading.Thread(target=self._watch, args=(signum, time.monotonic()), daemon=True)
            self._watchdog.start()
        if frame is self._boundary and not self._raised:
            self._raised = True
            self._capture_stderr()
            raise KeyboardInterrupt

    def _watch(self, signum: int, requested_at: float) -> None:
        """Re-send the signal until it lands between steps; exit outright if the stop takes too long."""
        while not self._done.wait(REDELIVER_EVERY_S):
            if time.monotonic() - requested_at >= FORCE_AFTER_S:
                self._exit_now()
            if not self._raised:
                signal.pthread_kill(self._main_thread, signum)

    def _exit_now(self) -> None:
        self._restore_stderr()
        log.warning(
            "stopped by Ctrl-C: a step did not end within %g s (waiting for Redis or Kafka?); "
            "a restart with the same --recovery-dir resumes from the last snapshot",
            FORCE_AFTER_S,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(0)

    def _capture_stderr(self) -> None:
        with self._lock:
            sys.stderr.flush()
            self._captured = tempfile.NamedTemporaryFile(prefix="streampulse-stop-")  # noqa: SIM115 (restored)
            self._stderr = os.dup(2)
            os.dup2(self._captured.fileno(), 2)

    def _restore_stderr(self) -> None:
        """Put stderr back, passing on our own log lines written meanwhile and dropping bytewax's panic report."""
        with self._lock:
            if self._captured is None or self._stderr is None:
                return
            sys.stderr.flush()
            os.dup2(self._stderr, 2)
            os.close(self._stderr)
            with self._captured as captured:
                captured.seek(0)
                kept = [line for line in captured if line[:1].isdigit()]
            self._captured = self._stderr = None
        if kept:
            sys.stderr.buffer.write(b"".join(kept))
            sys.stderr.flush()

    def close(self) -> None:
        self._done.set()
        if self._watchdog is not None:
            self._watchdog.join()
        self._restore_stderr()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A SIGINT re-sent just before the dataflow stopped may still be pending: the stop is under way already."""


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` (from `cli_main`) is the stop Ctrl-C asked for, rather than a failure."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt) or "signal received" in str(cause):
            return True
        cause = cause.__cause__
    return False


@contextmanager
def stop_between_steps(boundary: FrameType) -> Iterator[None]:
    """While inside, Ctrl-C raises KeyboardInterrupt only in `boundary`, the frame that runs the dataflow.

    Call from the main thread (Python runs signal handlers there only). Once Ctrl-C was pressed, further
    SIGINTs are ignored after the block: the process is on its way out (SIGTERM still ends it).
    """
    between = _BetweenSteps(boundary)
    previous = signal.signal(signal.SIGINT, between.handle)
    try:
        yield
    finally:
        between.close()
        signal.signal(signal.SIGINT, _ignore if between.requested else previous)
