"""`streampulse demo` in a real terminal opens `top`, and `q` or Ctrl-C stops every process it started.

The demo starts its own embedded broker and Redis-compatible server (the
`local` extra), so it takes no `stack`. It runs in tmux; the processes it
started are read from /proc (the descendants of tmux's shell) while the view
is up, and after `q` or Ctrl-C none of them may be left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): it is the real terminal this test runs the demo in")
    command = ["tmux", "-S", str(tmp_path / "tmux.sock")]
    yield command
    subprocess.run([*command, "kill-server"], capture_output=True, check=False)


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


def _wait_for_screen(tmux: list[str], needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = subprocess.run([*tmux, "capture-pane", "-p", "-t", "demo"], capture_output=True, text=True).stdout
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} never appeared on the screen:\n{text}")


@pytest.mark.parametrize("stop_key", ["q", "C-c"])
def test_the_demo_opens_top_and_stops_everything_on_q_or_ctrl_c(tmux: list[str], tmp_path: Path, stop_key: str) -> None:
    exit_file = tmp_path / "exit-code"
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
    # The demo's own defaults (a fresh embedded stack), without pytest's COLUMNS/LINES or a STREAMPULSE_* of the caller.
    shell = (
        f"cd {REPO} && env -u COLUMNS -u LINES -u STREAMPULSE_KAFKA_BOOTSTRAP -u STREAMPULSE_REDIS_URL "
        f"{' '.join(demo)}; echo $? > {exit_file}; sleep 60"
    )
    pythonpath = os.environ.get("PYTHONPATH", str(REPO))
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "demo", "-x", "150", "-y", "60", "-e", f"PYTHONPATH={pythonpath}", shell,
         ";", "set-option", "-t", "demo", "window-size", "manual"],
        check=True,
    )  # fmt: skip
    # Within the first minute: the full view, with figures in the country table.
    text = _wait_for_screen(tmux, "by country, window", timeout_s=60)
    assert "q quit" in text and "sign-up funnel" in text
    _wait_for_screen(tmux, "Kafka ok", timeout_s=30)
    shell_pid = int(
        subprocess.run([*tmux, "display", "-p", "-t", "demo", "#{pane_pid}"], capture_output=True, text=True).stdout
    )
    started = _descendants(shell_pid)
    names = {Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in started}
    assert any("tansu" in n for n in names) and any("valkey" in n for n in names), names
    assert any(" run " in n for n in names) and any(" loadgen " in n for n in names), names

    subprocess.run([*tmux, "send-keys", "-t", "demo", stop_key], check=True)
    deadline = time.monotonic() + 60
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert exit_file.read_text().strip() == "0"
    left = [pid for pid in started if _alive(pid) and "sleep" not in Path(f"/proc/{pid}/cmdline").read_text()]
    assert not left, [Path(f"/proc/{pid}/cmdline").read_text() for pid in left]
