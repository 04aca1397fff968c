"""A real terminal for tests, with no tool to install: a program in a pseudo-terminal, read back as a screen.

pexpect runs the program in a pty of a fixed size (so it sees a terminal: `isatty`, a size, Ctrl-C as
SIGINT from the line discipline) and pyte, a VT100 emulator, replays what it writes onto a screen that
reads back as text, the way `tmux capture-pane` would. Both come from PyPI (the `dev` extra): the tests
that drive `streampulse top` and `demo` need no root-installed terminal multiplexer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import pexpect
import pyte

ROWS = 60
COLUMNS = 150
# How long one read waits for the program's first bytes; the screen is read again after each.
READ_WAIT_S = 0.1
# Output counts as finished after this long without more: a frame bigger than the pty's buffer comes in
# several pieces, and a screen read between two of them would be half old frame, half new.
SETTLE_S = 0.1
# Keys as tmux's send-keys names them, for the tests' readability.
KEYS = {"Enter": "\r", "Escape": "\x1b", "C-c": "\x03"}


def terminal_env(*unset: str) -> dict[str, str]:
    """This process's environment for a program in the terminal, without `unset` and the size variables.

    COLUMNS and LINES (pytest's environment may have them) would override the terminal's own size in rich;
    TERM is a common colour terminal's, whatever the caller's (CI may have none, or `dumb`).
    """
    dropped = {"COLUMNS", "LINES", *unset}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env["TERM"] = "xterm-256color"
    return env


class Terminal:
    """One program running in a pseudo-terminal of `rows` x `columns`, its output kept on an emulated screen."""

    def __init__(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        rows: int = ROWS,
        columns: int = COLUMNS,
    ) -> None:
        self._screen = pyte.Screen(columns, rows)
        self._stream = pyte.ByteStream(self._screen)
        # Bytes (no `encoding`): pyte decodes them itself, so a character split between two reads stays whole.
        self._child: pexpect.spawn[bytes] = pexpect.spawn(
            argv[0], argv[1:], cwd=str(cwd), env=dict(env), dimensions=(rows, columns)
        )
        self._ended = False

    @property
    def pid(self) -> int:
        """The program's own process id (the root of whatever it starts)."""
        assert self._child.pid is not None  # set once spawned
        return self._child.pid

    def send(self, *keys: str) -> None:
        """Type keys: plain characters, or `Enter`, `Escape`, `C-c`."""
        for key in keys:
            self._child.send(KEYS.get(key, key))

    def _pump(self) -> None:
        """Feed the program's output to the screen until it pauses (waiting up to READ_WAIT_S for the first bytes)."""
        wait = READ_WAIT_S
        while not self._ended:
            try:
                chunk = self._child.read_nonblocking(size=65536, timeout=wait)
            except pexpect.TIMEOUT:
                return
            except pexpect.EOF:
                self._ended = True
                return
            self._stream.feed(chunk)
            wait = SETTLE_S

    def text(self) -> str:
        """The screen as text, one line per row, trailing blanks cut (as `capture-pane -p` prints it)."""
        self._pump()
        return "\n".join(line.rstrip() for line in self._screen.display)

    def wait_for(self, needle: str, timeout_s: float = 30) -> str:
        """The screen once `needle` is on it; an AssertionError with the last screen if it is not in time."""
        deadline = time.monotonic() + timeout_s
        text = self.text()
        while needle not in text:
            if time.monotonic() > deadline or self._ended:
                raise AssertionError(f"{needle!r} never appeared on the screen:\n{text}")
            text = self.text()
        return text

    def wait_exit(self, timeout_s: float = 30) -> int:
        """The program's exit code once it has ended (as subprocess gives it: -N if signal N killed it)."""
        deadline = time.monotonic() + timeout_s
        while not self._ended:
            if time.monotonic() > deadline:
                raise AssertionError(f"the program did not end within {timeout_s} s:\n{self.text()}")
            self._pump()  # keep reading: a program blocked on a full pty would never end
        self._child.wait()
        if self._child.signalstatus is not None:
            return -self._child.signalstatus
        assert self._child.exitstatus is not None  # not killed by a signal: it exited
        return self._child.exitstatus

    def close(self) -> None:
        """End the program if it is still running (SIGHUP, then SIGKILL), as closing a terminal window would."""
        if self._child.isalive():
            self._child.close(force=True)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
