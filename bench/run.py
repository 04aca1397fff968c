"""`python bench/run.py ...`: the benchmark harness as a script; the same as `python -m bench ...` (bench/harness.py)."""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the checkout importable, as `python -m bench` from the checkout does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
