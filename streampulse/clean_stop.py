"""Ctrl-C (SIGINT) that stops bytewax between steps, never inside one.

Bytewax stops cleanly when Python's SIGINT handler raises KeyboardInterrupt
while bytewax itself checks for signals between steps. Python runs the handler
wherever the main thread is, though: inside a step's Python code (a source's
`next_batch`, a sink's write) the KeyboardInterrupt unwinds through Rust,
which prints a panic and a traceback and exits 1. Here the handler raises only
when it runs from bytewax's own check (the frame that called `cli_main`);
anywhere else it notes the request, and the signal is sent again every few
milliseconds until it lands between steps.

Even its clean stop makes bytewax panic on purpose (a Rust panic carries the
KeyboardInterrupt out of the worker), and Rust's panic hook prints that to
stderr. So from the moment the stop is asked for until `cli_main` returns,
stderr goes to a temporary file; afterwards the lines of our own log format
(they start with the date) are passed on and the panic report is dropped.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

REDELIVER_EVERY_S = 0.01


class _BetweenSteps:
    def __init__(self, boundary: FrameType) -> None:
        self._boundary = boundary
        self._main_thread = threading.main_thread().ident or 0
        self._done = threading.Event()
        self._redelivery: threading.Thread | None = None
        self.requested = False
        self._stderr: int | None = None
        self._captured: tempfile._TemporaryFileWrapper[bytes] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if frame is self._boundary:
            self._capture_stderr()
            raise KeyboardInterrupt
        if self._redelivery is None:
            self._redelivery = threading.Thread(target=self._redeliver, args=(signum,), daemon=True)
            self._redelivery.start()

    def _redeliver(self, signum: int) -> None:
        while not self._done.wait(REDELIVER_EVERY_S):
            signal.pthread_kill(self._main_thread, signum)

    def _capture_stderr(self) -> None:
        if self._captured is not None:
            return
        sys.stderr.flush()
        self._captured = tempfile.NamedTemporaryFile(prefix="streampulse-stop-")  # noqa: SIM115 (closed in close())
        self._stderr = os.dup(2)
        os.dup2(self._captured.fileno(), 2)

    def close(self) -> None:
        self._done.set()
        if self._redelivery is not None:
            self._redelivery.join()
        if self._captured is None or self._stderr is None:
            return
        sys.stderr.flush()
        os.dup2(self._stderr, 2)
        os.close(self._stderr)
        with self._captured as captured:
            captured.seek(0)
            kept = [line for line in captured if line[:1].isdigit()]
        if kept:
            sys.stderr.buffer.write(b"".join(kept))
            sys.stderr.flush()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A SIGINT re-sent just before the dataflow stopped may still be pending: the stop is under way already."""


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
