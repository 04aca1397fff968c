"""`streampulse demo` in a real terminal opens `top`, and `q` or Ctrl-C stops every process it started.

The demo starts its own embedded broker and Redis-compatible server (the
`local` extra), so it takes no `stack`. It runs in a pseudo-terminal
(tests/services/terminal.py); the processes it started are read from /proc
(the descendants of the demo's own process) while the view is up, and after
`q` or Ctrl-C the demo must end with 0 and none of them may be left.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.integration.helpers import REPO
from tests.services.terminal import Terminal, terminal_env

pytestmark = pytest.mark.integration


def _children(pid: int) -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(root: int) -> set[int]:
    parents = _children(root)
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("stop_key", ["q", "C-c"])
def test_the_demo_opens_top_and_stops_everything_on_q_or_ctrl_c(tmp_path: Path, stop_key: str) -> None:
    demo = [
        sys.executable,
        "-m",
        "streampulse.cli",
        "demo",
        "--metrics-port",
        "0",
        "--work-dir",
        str(tmp_path / "work"),
    ]
    # The demo's own defaults (a fresh embedded stack), without a STREAMPULSE_* of the caller.
    env = terminal_env("STREAMPULSE_KAFKA_BOOTSTRAP", "STREAMPULSE_REDIS_URL")
    with Terminal(demo, cwd=REPO, env=env) as terminal:
        # Within the first minute: the full view, with figures in the country table.
        text = terminal.wait_for("by country, window", timeout_s=60)
        assert "q quit" in text and "sign-up funnel" in text
        terminal.wait_for("Kafka ok", timeout_s=30)
        started = _descendants(terminal.pid)
        names = {Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in started}
        assert any("tansu" in n for n in names) and any("valkey" in n for n in names), names
        assert any(" run " in n for n in names) and any(" loadgen " in n for n in names), names

        terminal.send(stop_key)
        assert terminal.wait_exit(timeout_s=60) == 0
    left = [pid for pid in started | {terminal.pid} if _alive(pid)]
    assert not left, [Path(f"/proc/{pid}/cmdline").read_text() for pid in left]
