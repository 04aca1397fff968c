"""`python -m bench`: the benchmark harness (bench/harness.py)."""

import sys

from bench.harness import main

sys.exit(main())
