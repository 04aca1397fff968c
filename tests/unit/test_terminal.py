"""The test terminal (tests/services/terminal.py): size, screen, keys and exit codes, on a small program."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.services.terminal import Terminal, terminal_env

# Reports the size it sees, draws over its first line with cursor moves (as rich's live view does),
# then echoes keys read one at a time in cbreak mode until `q`, which ends it with 3.
PROGRAM = """
import os, sys, termios, tty
size = os.get_terminal_size()
sys.stdout.write(f"{size.lines}x{size.columns} tty={sys.stdin.isatty()}\\r\\nold line\\x1b[1;1H\\x1b[2Kready\\r\\n")
sys.stdout.flush()
saved = termios.tcgetattr(0)
tty.setcbreak(0)
try:
    while (key := sys.stdin.read(1)) != "q":
        sys.stdout.write(f"\\x1b[3;1Hkey {ord(key)}")
        sys.stdout.flush()
finally:
    termios.tcsetattr(0, termios.TCSADRAIN, saved)
sys.exit(3)
"""


@pytest.fixture
def terminal(tmp_path: Path) -> Terminal:
    return Terminal([sys.executable, "-c", PROGRAM], cwd=tmp_path, env=terminal_env(), rows=20, columns=70)


def test_the_program_sees_a_terminal_of_the_given_size_and_the_screen_is_what_it_drew(terminal: Terminal) -> None:
    with terminal:
        text = terminal.wait_for("ready", timeout_s=10)
        lines = text.split("\n")
        assert lines[0] == "ready"  # the cursor move overwrote "20x70 ...", as a terminal would show it
        assert lines[1] == "old line"
        assert len(lines) == 20
        terminal.send("a", "Enter")
        # Enter is a carriage return, which the terminal's line discipline (ICRNL, kept by cbreak) turns into \n.
        terminal.wait_for("key 10", timeout_s=10)
        terminal.send("q")
        assert terminal.wait_exit(timeout_s=10) == 3


def test_ctrl_c_interrupts_as_in_a_terminal(terminal: Terminal) -> None:
    with terminal:
        terminal.wait_for("ready", timeout_s=10)
        terminal.send("C-c")
        # Python ends an uncaught KeyboardInterrupt by killing itself with SIGINT.
        assert terminal.wait_exit(timeout_s=10) == -2


def test_waiting_for_text_that_never_comes_fails_with_the_screen(terminal: Terminal) -> None:
    with terminal, pytest.raises(AssertionError, match="never appeared on the screen:\nready"):
        terminal.wait_for("nowhere", timeout_s=0.5)


def test_the_size_and_environment_the_program_gets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("STREAMPULSE_REDIS_URL", "redis://elsewhere")
    env = terminal_env("STREAMPULSE_REDIS_URL")
    assert "COLUMNS" not in env and "STREAMPULSE_REDIS_URL" not in env
    probe = "import os, sys; print(os.get_terminal_size(), sys.stdout.isatty(), os.environ['TERM'])"
    with Terminal([sys.executable, "-c", probe], cwd=tmp_path, env=env, rows=33, columns=99) as terminal:
        assert terminal.wait_exit(timeout_s=10) == 0
        assert "os.terminal_size(columns=99, lines=33) True xterm-256color" in terminal.text()
