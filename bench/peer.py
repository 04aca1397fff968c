"""The Python that runs the peer (Quix Streams): a virtual environment of its own, made on first use.

quixstreams 3.28 pins confluent-kafka below 2.13; installed next to
streampulse it would downgrade the client streampulse is measured with. So
the peer gets its own environment under the streampulse cache
(`${STREAMPULSE_CACHE_DIR:-~/.cache/streampulse}/bench-peer-venv`, next to
the Kafka jars) with the `bench` extra's requirements (pyproject.toml) and
what the contract decoder needs (msgspec, orjson); it imports the decoder
from this checkout (PYTHONPATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from bench.common import REPO, say

# The contract decoder (schemas/) is all the peer imports from this checkout.
DECODER_REQUIREMENTS = ("msgspec>=0.19", "orjson>=3.10")


def cache_dir() -> Path:
    """Where fetched tools live, as tools/kafka/fetch-kafka.sh has it (an empty variable counts as unset)."""
    return Path(os.environ.get("STREAMPULSE_CACHE_DIR") or Path.home() / ".cache" / "streampulse")


def requirements() -> list[str]:
    """The `bench` extra of pyproject.toml, plus the decoder's own requirements."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["optional-dependencies"]["bench"], *DECODER_REQUIREMENTS]


def peer_python(install: bool = True) -> Path | None:
    """The peer environment's python, made (once per set of requirements) if `install`; None if unavailable."""
    venv = cache_dir() / "bench-peer-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = "\n".join(requirements())
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    if not install:
        return None
    say(f"peer: installing {', '.join(requirements())} into {venv} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements()],
            check=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"peer: could not make its environment: {exc}")
        return None
    stamp.write_text(wanted, encoding="utf-8")
    return python


def peer_env() -> dict[str, str]:
    """Environment of the peer process: the checkout on its path for the contract decoder."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
