"""The anomaly detector's cost per series and window, and a byte-exact record of everything it returns.

    .venv/bin/python -m bench.anomaly_bench                         # time it (best of --repeat runs)
    .venv/bin/python -m bench.anomaly_bench --save /tmp/anomaly.out # ... and record every output
    .venv/bin/python -m bench.anomaly_bench --check /tmp/anomaly.out  # ... and compare with a record
    .venv/bin/python -m bench.anomaly_bench --baseline /tmp/anomaly_detector_orig.py  # old vs new, same run

A deterministic synthetic day part, generated before anything is timed: `--countries` countries (Zipf-like
volumes, from a few hundred starts per 10 s window down to one every few windows) x 5 device types, each
country on its own local time of the diurnal curve (loadgen.diurnal.local_curve), over `--windows` fine
windows of 10 s, with every aggregate the detector reads in the window store's own shape (extra key
dimensions such as cdn or error code, startup sketch buckets), so `observe` runs `cell_inputs` too. Injected:
a start-failure spike, a drop in starts, a rebuffer storm, a startup slowdown and a payment outage (so
anomalies open, escalate and resolve and the exact tails run), a short gap of windows (fed as empty) and a
re-delivered window (ignored).

Each run feeds a fresh `AnomalyDetector` every window with `observe`, scores asked for every 10th window
only (what `AnomalyLogic.on_batch` does catching up on a backlog: scores for a batch's last window). The
time (CPU time of the process in `observe`) is per series-window: the run's time / Σ over windows of the
series held; the best of `--repeat` runs counts. The outputs — every `Detection` (events and scores) and
`snapshot()` every 200 windows and at the end — are kept as `repr` (floats repr exactly, ints stay ints),
so `--save` / `--check` compare them byte for byte. ~5 s a run with the defaults (per module).

`--baseline FILE` also loads another copy of flows/anomaly/detector.py (e.g. the original, kept before an
optimisation) and runs it in lockstep with the current one, window by window, alternating which goes first,
so the ratio is measured under the same noise (this machine is shared: absolute times move by +-30 %);
its outputs are checked against the current module's as well.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import math
import pickle
import random
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from flows.anomaly import detector as anomaly_detector
from flows.windows.sketch import bucket_of
from loadgen.diurnal import local_curve

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
W = 10_000
DEVICES = ("tv", "mobile", "web", "console", "other")
Values = dict[str, dict[tuple[Any, ...], int]]


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: exact (Knuth) when small, a rounded normal when large (only realism matters here)."""
    if mean <= 0.0:
        return 0
    if mean > 30.0:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    count, limit, product = 0, math.exp(-mean), rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _binomial(rng: random.Random, n: int, q: float) -> int:
    if n > 50:
        return min(n, _poisson(rng, n * q))
    return sum(1 for _ in range(n) if rng.random() < q)


def make_windows(countries: int, windows: int, seed: int = 1) -> list[tuple[int, int, Values]]:
    """The windows to feed, in order: (start_ms, end_ms, the window's complete aggregates)."""
    rng = random.Random(seed)
    curve = local_curve()
    names = [f"C{i:02d}" for i in range(countries)]
    volume = {name: 150.0 / (i + 1) ** 1.3 for i, name in enumerate(names)}  # starts per window at the mean
    offset = {name: (i * 97) % 1440 for i, name in enumerate(names)}  # local minute of T0
    share = dict(zip(DEVICES, (0.35, 0.3, 0.2, 0.1, 0.05), strict=True))

    def at(fraction: float, length: int) -> range:
        first = int(windows * fraction)
        return range(first, first + length)

    vsf_spike, starts_drop, rebuffer_storm = at(0.35, 40), at(0.5, 60), at(0.25, 50)
    slow_startup, payment_outage = at(0.65, 45), at(0.8, 40)
    gap = at(0.45, 4)  # no window published at all: fed as empty windows
    redelivered = int(windows * 0.6)
    out: list[tuple[int, int, Values]] = []
    for w in range(windows):
        if w in gap:
            continue
        minute = w * W // 60_000
        values: Values = {
            name: {}
            for name in (
                "stream_starts",
                "start_failures",
                "played_ms",
                "rebuffer_ms",
                "rebuffers",
                "playback_errors",
                "signups_started",
                "signups_completed",
                "payments_submitted",
                "payment_declines",
                "startup_ms_sketch",
            )
        }
        for country in names:
            level = curve[(minute + offset[country]) % len(curve)]
            for device in DEVICES:
                mean = volume[country] * share[device] * level
                if country == "C01" and w in starts_drop:
                    mean *= 0.3
                attempts = _poisson(rng, mean)
                if attempts == 0 and rng.random() < 0.5:
                    continue  # a quiet cell: absent from the window, as in the window store
                q = 0.3 if (country, device) == ("C02", "tv") and w in vsf_spike else 0.02
                failures = _binomial(rng, attempts, q)
                starts = attempts - failures
                key = (country, device)
                if starts:
                    cdn_1 = _binomial(rng, starts, 0.6)
                    values["stream_starts"][(*key, "c1")] = cdn_1
                    values["stream_starts"][(*key, "c2")] = starts - cdn_1
                if failures:
                    values["start_failures"][(*key, "SF_TIMEOUT")] = failures
                played = int(mean * 300 * W * rng.uniform(0.9, 1.1))
                values["played_ms"][key] = played
                storm = 6.0 if (country, device) == ("C00", "tv") and w in rebuffer_storm else 1.0
                rebuffers = _poisson(rng, 3.0 / 3_600_000 * played * storm)
                values["rebuffers"][key] = rebuffers
                values["rebuffer_ms"][key] = rebuffers * rng.randint(500, 4000)
                errors = _poisson(rng, 0.05 / 3_600_000 * played)
                if errors:
                    values["playback_errors"][(*key, "PE_DECODE")] = errors
                payments = _poisson(rng, mean / 10)
                if payments:
                    path = (*key, "organic", "basic", "card")
                    decline_q = 0.5 if country == "C03" and w in payment_outage else 0.06
                    values["payments_submitted"][path] = payments
                    values["payment_declines"][path] = _binomial(rng, payments, decline_q)
                    values["signups_completed"][path] = _poisson(rng, mean / 12)
                values["signups_started"][(*key, "organic")] = _poisson(rng, mean / 5)
                slow = 2.5 if (country, device) == ("C04", "mobile") and w in slow_startup else 1.0
                sketch = values["startup_ms_sketch"]
                for _ in range(starts):
                    bucket = (*key, bucket_of(int(rng.lognormvariate(math.log(1500 * slow), 0.5))))
                    sketch[bucket] = sketch.get(bucket, 0) + 1
        out.append((T0 + w * W, T0 + (w + 1) * W, values))
        if w == redelivered:
            out.append(out[-2])  # an older window again (after a recovery): ignored
    return out


def run(modules: dict[str, ModuleType], windows: list[tuple[int, int, Values]]) -> dict[str, tuple[float, list[str]]]:
    """A fresh detector of each module over every window, in lockstep: per module (CPU seconds in `observe`,
    outputs as repr).

    Window by window, alternating which goes first, so the noise of a shared machine (and its cache) falls
    on each alike: their ratio is what to read.
    """
    detectors = {name: module.AnomalyDetector() for name, module in modules.items()}
    names = list(detectors)
    returned: dict[str, list[Any]] = {name: [] for name in names}
    snapshots: dict[str, list[str]] = {name: [] for name in names}
    elapsed = dict.fromkeys(names, 0.0)
    clock = time.process_time  # CPU time: the machine is shared, being descheduled is not our cost
    for w, (start, end, values) in enumerate(windows):
        for name in names if w % 2 == 0 else names[::-1]:
            detector = detectors[name]
            started = clock()
            detections = detector.observe(start, end, values, scores=w % 10 == 9)
            elapsed[name] += clock() - started
            returned[name].append(detections)
            if w % 200 == 199:
                snapshots[name].append(f"snapshot {w}: {detector.snapshot()!r}")
    result = {}
    for name, detector in detectors.items():
        outputs = [repr(d) for d in returned[name]] + snapshots[name]
        outputs.append(f"final snapshot: {detector.snapshot()!r}")
        outputs.append(f"open anomalies: {detector.open_anomalies()!r}")
        result[name] = (elapsed[name], outputs)
    return result


def series_windows(windows: list[tuple[int, int, Values]]) -> int:
    """Σ over the windows processed (empty ones in a gap included) of the series held after each."""
    detector = anomaly_detector.AnomalyDetector()
    total = 0
    for start, end, values in windows:
        total += len(detector.observe(start, end, values, scores=False)) * detector.series_count
    return total


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("anomaly_detector_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _digest(outputs: list[str]) -> str:
    return hashlib.blake2b("\n".join(outputs).encode(), digest_size=12).hexdigest()


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            j = next((j for j, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
            return (
                f"output {i} differs at char {j}:\n  {x[max(0, j - 150) : j + 150]}\n  {y[max(0, j - 150) : j + 150]}"
            )
    return f"lengths differ: {len(a)} vs {len(b)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--countries", type=int, default=12, help="countries (x 5 device types, + roll-ups)")
    parser.add_argument("--windows", type=int, default=800, help="10 s windows fed")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (the best counts)")
    parser.add_argument("--save", type=Path, help="write every output (pickled reprs) here")
    parser.add_argument("--check", type=Path, help="compare every output with this --save file")
    parser.add_argument("--baseline", type=Path, help="another anomaly_detector.py to time (and check) alongside")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    windows = make_windows(args.countries, args.windows)
    print(f"inputs: {len(windows)} windows, {args.countries} countries, in {time.perf_counter() - started:.1f} s")
    modules = {"current": anomaly_detector}
    if args.baseline:
        modules["baseline"] = _load(args.baseline)
    count = series_windows(windows)
    best: dict[str, float] = {}
    totals = dict.fromkeys(modules, 0.0)
    outputs: dict[str, list[str]] = {}
    gc.collect()
    for _ in range(max(args.repeat, 1)):
        for name, (seconds, outputs[name]) in run(modules, windows).items():
            best[name] = min(best.get(name, math.inf), seconds)
            totals[name] += seconds
        print("  " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in totals.items()) + " (running totals)")
    for name, seconds in best.items():
        print(
            f"{name:>8}: best {seconds:.3f} s, {seconds * 1e9 / count:.0f} ns per series-window "
            f"({count:,} series-windows), outputs {_digest(outputs[name])}"
        )
    events = sum(o.count("AnomalyEvent(") for o in outputs["current"][: len(windows)])
    print(f"anomaly events: {events}")
    ok = True
    if "baseline" in best:
        print(
            f"speed-up: {best['baseline'] / best['current']:.3f}x best of {args.repeat}, "
            f"{totals['baseline'] / totals['current']:.3f}x in total (baseline / current, in lockstep)"
        )
        if outputs["baseline"] != outputs["current"]:
            ok = False
            print(
                "DIFFERENT from the baseline module's outputs: "
                + _first_difference(outputs["baseline"], outputs["current"])
            )
        else:
            print("identical to the baseline module's outputs")
    if args.save:
        args.save.write_bytes(pickle.dumps(outputs["current"]))
        print(f"saved {len(outputs['current'])} outputs to {args.save}")
    if args.check:
        saved = pickle.loads(args.check.read_bytes())
        if saved != outputs["current"]:
            ok = False
            print(f"DIFFERENT from {args.check}: " + _first_difference(saved, outputs["current"]))
        else:
            print(f"identical to {args.check} ({len(saved)} outputs, {_digest(saved)})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
