"""The benchmark harness of streampulse: `make bench`, `python -m bench` (see bench/harness.py)."""
