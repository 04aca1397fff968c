"""CPU per anomaly-detector step: all cells (1 process), one shard of 4, and the roll-up series (scale-out).

    .venv/bin/python -m bench.detector_step_cost                    # CPU per step, medians of --repeat runs
    .venv/bin/python -m bench.detector_step_cost --profile shard    # ... and cProfile one shard's steps

Inputs: bench/anomaly_bench.py's synthetic day part (`--countries` countries x 5 device types, injected
incidents, a gap, a re-delivered window), as per-cell inputs (`cell_inputs`, done before timing). Four
contenders each get a fresh `AnomalyDetector` per run and every window in order, as the dataflow feeds them
(flows/anomaly/steps.py):

- `all`: one detector with roll-ups over every cell (the 1-process run: `alone`);
- `shard i/4`: cells of shard i of 4, routed by flows/sharding.py's `ShardRouter` (no roll-ups);
- `roll-up`: the roll-up groups summed over every cell (`roll_up_sums`), no roll-ups of its own;
- `roll-up+3/4`: the roll-up step as the dataflow runs it, with the last shard's cells in the same detector
  (the last shard steps no detector of its own): what the last worker pays per window beside its store.

The cost of a step is the CPU time (`time.process_time`: this machine is shared) of one `observe_cells`; per
run the median over the windows after `--skip` (past the warm-up, so the judged path runs), and the median
of the runs is reported. `outputs` is a digest of everything each contender returned (every `Detection` and
its final snapshot, as `repr`): equal digests before and after a change mean the same results bit for bit.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import statistics
import time

from bench.anomaly_bench import make_windows
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.series import Cells, cell_inputs
from flows.anomaly.steps import roll_up_sums
from flows.sharding import ShardRouter

SHARDS = 4
Window = tuple[int, int, Cells]


def contenders(countries: int, windows: int) -> dict[str, tuple[bool, list[Window]]]:
    """Per contender: (roll-ups of its own, its windows as per-cell inputs)."""
    router = ShardRouter(SHARDS)
    whole = [(start, end, cell_inputs(values)) for start, end, values in make_windows(countries, windows)]
    out: dict[str, tuple[bool, list[Window]]] = {"all": (True, whole)}
    for shard in range(SHARDS):
        mine = [
            (start, end, {cell: v for cell, v in cells.items() if router.shard_of(*cell) == shard})
            for start, end, cells in whole
        ]
        out[f"shard {shard}/{SHARDS}"] = (False, mine)
    out["roll-up"] = (False, [(start, end, roll_up_sums(cells)) for start, end, cells in whole])
    last = out[f"shard {SHARDS - 1}/{SHARDS}"][1]
    out[f"roll-up+{SHARDS - 1}/{SHARDS}"] = (
        False,
        [
            (start, end, {**sums, **cells})
            for (start, end, sums), (_s, _e, cells) in zip(out["roll-up"][1], last, strict=True)
        ],
    )
    return out


def run(roll_up: bool, windows: list[Window], skip: int) -> tuple[float, int, str]:
    """A fresh detector over `windows`: the median CPU s of a step after `skip`, its series, the outputs' digest."""
    detector = AnomalyDetector(roll_up=roll_up)
    clock = time.process_time
    costs: list[float] = []
    outputs: list[str] = []
    for w, (start, end, cells) in enumerate(windows):
        started = clock()
        detections = detector.observe_cells(start, end, cells, scores=w % 10 == 9)
        spent = clock() - started
        if w >= skip and len(detections) == 1:  # one step (a gap's catch-up steps several at once)
            costs.append(spent)
        outputs.append(repr(detections))
    outputs.append(repr(detector.snapshot()))
    digest = hashlib.blake2b("\n".join(outputs).encode(), digest_size=8).hexdigest()
    return statistics.median(costs), detector.series_count, digest


def main(argv: list[str] | None = None) -> int:
    """Print CPU per step per contender."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--countries", type=int, default=14, help="countries (x 5 device types)")
    parser.add_argument("--windows", type=int, default=600, help="10 s windows fed")
    parser.add_argument("--skip", type=int, default=100, help="windows not timed (warm-up)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender (the median counts)")
    parser.add_argument("--profile", help="cProfile the contender whose name starts with this, once, and print")
    args = parser.parse_args(argv)
    inputs = contenders(args.countries, args.windows)
    if args.profile:
        name = next(n for n in inputs if n.startswith(args.profile))
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        run(*inputs[name], args.skip)
        profiler.disable()
        print(f"profile of {name!r} ({args.windows} windows):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    medians: dict[str, list[float]] = {name: [] for name in inputs}
    facts: dict[str, tuple[int, str]] = {}
    for _ in range(args.repeat):
        for name, (roll_up, windows) in inputs.items():  # interleaved: the machine's noise falls on each alike
            cost, series, digest = run(roll_up, windows, args.skip)
            medians[name].append(cost)
            facts[name] = (series, digest)
    whole = statistics.median(medians["all"])
    print(f"{args.countries} countries x 5 devices, {args.windows} windows, median of {args.repeat} runs' medians")
    print(f"{'contender':<12} {'series':>6} {'CPU us/step':>12} {'vs all':>7}  outputs")
    for name, costs in medians.items():
        cost = statistics.median(costs)
        series, digest = facts[name]
        print(f"{name:<12} {series:>6} {cost * 1e6:>12.0f} {cost / whole:>7.2f}  {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
