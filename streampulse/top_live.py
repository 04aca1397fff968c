"""The full-screen, keyboard-driven `top`: a frame from Redis about every second, redrawn in place.

Keys are read one at a time from the terminal in cbreak mode (the standard
library's termios/tty): Ctrl-C still interrupts, and the terminal's settings
and screen are restored however the view ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator

import redis
from rich.console import Console
from rich.live import Live

from schemas.contract import enum_values
from streampulse.options import duration_ms
from streampulse.top_frame import FILTER_DIMS, Frame, read_frame
from streampulse.top_view import SORT_KEYS, ViewState, screen

REFRESH_S = 1.0
ESC = "\x1b"


@contextlib.contextmanager
def cbreak(fd: int) -> Iterator[None]:
    """Single keys without Enter and without echo, until the block ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def read_keys(fd: int, timeout_s: float) -> str:
    """What was typed within `timeout_s` ("" if nothing); arrow keys and other escape sequences are dropped."""
    ready, _, _ = select.select([fd], [], [], max(timeout_s, 0))
    if not ready:
        return ""
    typed = os.read(fd, 64).decode(errors="ignore")
    if typed.startswith(ESC + "[") or typed.startswith(ESC + "O"):
        return ""
    return typed


def parse_filter(text: str) -> dict[str, str] | None:
    """`BR`, `tv`, `country=BR device_type=tv` -> the filter; "" -> no filter; None if it cannot be read."""
    where: dict[str, str] = {}
    for word in text.split():
        dim, sep, value = word.partition("=")
        if sep:
            if dim not in FILTER_DIMS or not value:
                return None
            where[dim] = value
        elif word.lower() in enum_values("device_type"):
            where["device_type"] = word.lower()
        elif len(word) == 2 and word.isalpha():
            where["country"] = word.upper()
        else:
            return None
    return where


def resolutions_of(frame: Frame) -> list[str]:
    """The resolutions the flow writes (from its health document), shortest first, with the one shown."""
    known = set((frame.health or {}).get("newest_windows", {})) | {frame.resolution}

    def length(name: str) -> int:
        try:
            return duration_ms(name)
        except ValueError:
            return 0

    return sorted(known, key=length)


def apply_key(key: str, state: ViewState, frame: Frame) -> bool:
    """Change `state` for one key; True to quit."""
    if state.prompt is not None:
        if key in ("\r", "\n"):
            where = parse_filter(state.prompt)
            if where is not None:
                state.where = where
            state.prompt = None
        elif key == ESC:
            state.prompt = None
        elif key in ("\x7f", "\b"):
            state.prompt = state.prompt[:-1]
        elif key.isprintable():
            state.prompt += key
        return False
    if state.help:
        state.help = False
        return False
    if key == "q":
        return True
    if key in ("s", "S"):
        step = 1 if key == "s" else -1
        state.sort_key = SORT_KEYS[(SORT_KEYS.index(state.sort_key) + step) % len(SORT_KEYS)]
    elif key == "/":
        state.prompt = ""
    elif key == "r":
        known = resolutions_of(frame)
        state.resolution = known[(known.index(state.resolution) + 1) % len(known)]
    elif key == "?":
        state.help = True
    return False


def run_live(
    client: redis.Redis, namespace: str, state: ViewState, should_stop: Callable[[], bool] = lambda: False
) -> int:
    """Show `top` until `q` (0), or until `should_stop()` says so (0); Ctrl-C raises KeyboardInterrupt."""
    console = Console()
    fd = sys.stdin.fileno()
    with cbreak(fd), Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
        while not should_stop():
            frame = read_frame(client, namespace, state.resolution, state.where, time.time_ns() // 1_000_000)
            read_where, read_resolution = dict(state.where), state.resolution
            next_read = time.monotonic() + REFRESH_S
            live.update(screen(frame, state, console.height, console.width), refresh=True)
            # Keys redraw at once; a change of filter or resolution also reads a new frame.
            while (left := next_read - time.monotonic()) > 0:
                typed = read_keys(fd, left)
                for key in typed:
                    if apply_key(key, state, frame):
                        return 0
                if typed:
                    if state.where != read_where or state.resolution != read_resolution:
                        break
                    live.update(screen(frame, state, console.height, console.width), refresh=True)
    return 0
