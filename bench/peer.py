"""The Pythons that run the peers (Quix Streams, Pathway): a virtual environment each, made on first use.

quixstreams 3.28 pins confluent-kafka below 2.13; installed next to
streampulse it would downgrade the client streampulse is measured with.
pathway 0.33 brings a large tree of its own dependencies. So each peer gets
its own environment under the streampulse cache
(`${STREAMPULSE_CACHE_DIR:-~/.cache/streampulse}/bench-peer-venv` for Quix
Streams, `.../bench-pathway-venv` for Pathway, next to the Kafka jars) with
its extra's requirements (pyproject.toml: `bench`, `bench-pathway`) and what
its program imports besides; it imports that program (bench/*_peer.py, and
for Quix the contract decoder) from this checkout (PYTHONPATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, say


@dataclass(frozen=True)
class Peer:
    """One peer's environment: where it lives, the pyproject extra it installs, and what else its program needs."""

    name: str
    venv_name: str
    extra: str
    also: tuple[str, ...]
    # Environment variables of the peer's process beyond PYTHONPATH.
    env: tuple[tuple[str, str], ...] = ()


# Quix Streams uses the contract decoder (schemas/): msgspec and orjson.
QUIX = Peer("quix", "bench-peer-venv", "bench", ("msgspec>=0.19", "orjson>=3.10"))
# One thread: PEERS.md measured that a second gains nothing (one already keeps ~1.5 cores busy).
PATHWAY = Peer("pathway", "bench-pathway-venv", "bench-pathway", ("orjson>=3.10",), (("PATHWAY_THREADS", "1"),))


def cache_dir() -> Path:
    """Where fetched tools live, as tools/kafka/fetch-kafka.sh has it (an empty variable counts as unset)."""
    return Path(os.environ.get("STREAMPULSE_CACHE_DIR") or Path.home() / ".cache" / "streampulse")


def requirements(peer: Peer = QUIX) -> list[str]:
    """The peer's extra of pyproject.toml, plus what its program imports besides."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["optional-dependencies"][peer.extra], *peer.also]


def peer_python(peer: Peer = QUIX, install: bool = True) -> Path | None:
    """The peer environment's python, made (once per set of requirements) if `install`; None if unavailable."""
    venv = cache_dir() / peer.venv_name
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = "\n".join(requirements(peer))
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    if not install:
        return None
    say(f"{peer.name}: installing {', '.join(requirements(peer))} into {venv} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements(peer)],
            check=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"{peer.name}: could not make its environment: {exc}")
        return None
    stamp.write_text(wanted, encoding="utf-8")
    return python


def peer_env(peer: Peer = QUIX) -> dict[str, str]:
    """Environment of the peer process: the checkout on its path for its program, and the peer's own variables."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), **dict(peer.env)}


# What each peer runs, for the report.
PEER_DESCRIPTIONS = {
    "quix": "Quix Streams 3.28 with its defaults: the contract decoder as deserializer, "
    "`filter` play_start, `group_by` country|device_type (a repartition topic), "
    "`tumbling_window(10 s, grace 30 s).count().final()`; playback topic only; its time runs to "
    "the last message processed (not the idle timeout that stops it).",
    "pathway": "Pathway 0.33, one thread, as PEERS.md found it best: `pw.io.kafka.read(format=json, "
    "mode=static, autocommit_duration_ms=10)` with a schema (its reader skips what does not fit), the "
    "contract's other rules for a play_start as column filters, one tumbling 10 s `windowby` (cutoff 30 s) "
    "per partition so each has its own clock, `count_distinct(event_id)` against duplicates, partitions "
    "summed; playback topic only; its time is the process's, start to exit. Its JSON reader cannot see "
    "message sizes: the contract's 64 KiB limit is not applied.",
}
