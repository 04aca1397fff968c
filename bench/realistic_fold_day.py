"""One realistic day through the real fold (issue 15): is the aggregate-level evaluation faithful to events?

    .venv/bin/python -m bench.realistic_fold_day               # one day at 150 events/s (~15 min first, cached)
    .venv/bin/python -m bench.realistic_fold_day --rate 40     # lighter

bench/realistic_eval.py judges the detector on two weeks of realistic-noise traffic drawn directly as per-window
aggregates (bench/realistic_traffic.py), since folding two weeks of events would take days here. This runs one
day of the same kind of traffic as *events*: the load generator's `realistic-day` scenario (gamma–Poisson
arrivals per country x device type, an 8x daily peak/trough, busier weekends, top-of-the-hour bursts, drift,
a benign premiere, four incidents and a persistent one), on a Saturday, folded by the flows' own code exactly as
bench/anomaly_eval.py folds its days, and:

(a) checks every final 10 s window's detector inputs against the load generator's ground truth (built an hour
    at a time, loadgen/truth.py);
(b) measures, on the folded starts and on the aggregate model's starts for a Saturday at the same mean rate, the
    statistics the aggregate evaluation rests on: the dispersion of a window's count around its local level
    (d², with var = mean + d² mean²), each country's daily peak/trough, the top-of-the-hour burst and the
    steepest hourly ramp;
(c) runs the detector over the day (default `DetectorConfig`, `observe_cells` on every final window, a cold
    start at midnight) and reports false alarms, the incidents it detected (bench/anomaly_eval.py's scoring) and
    what it made of the benign premiere.

The folded windows and the truth check are cached (~/.cache/streampulse/realistic-fold-day), so judging the
detector again takes a minute. Writes bench/results/realistic_fold_day.md and .json.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import inspect
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.anomaly_eval import REPO
from bench.anomaly_judging import explains, judge
from bench.day_fold import SESSION_TIMEOUT_MS, DayData, FoldedWindow, fold_events, gc_paused, truth_incidents
from bench.realistic_traffic import COUNTRIES as AGGREGATE_COUNTRIES
from bench.realistic_traffic import DAY_WINDOWS, Traffic
from bench.truth_check import TruthCheck
from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import CLOSED_STATES, AnomalyEvent
from flows.anomaly.seasonal import HOUR_MS
from flows.anomaly.series import CELL_FIELDS, Cells, cell_inputs
from loadgen.config import LoadgenConfig, ModelParams
from loadgen.diurnal import DAY_MS
from loadgen.incident_effects import IncidentSet
from loadgen.incidents import load_scenario
from loadgen.model import Model
from loadgen.realism import RealismParams, scenario_realism
from loadgen.world import COUNTRIES
from settings.windows import WindowConfig

RESULTS = REPO / "bench" / "results"
CACHE = Path.home() / ".cache" / "streampulse" / "realistic-fold-day"
CACHE_VERSION = "1"
SCENARIO = "realistic-day"
START_MS = 1_714_780_800_000  # 2024-05-04T00:00:00Z, a Saturday
AGGREGATE_SATURDAY = 5  # bench/realistic_traffic.py's day 0 is a Monday
PREMIERE_GRACE_MS = 300_000
STARTS = CELL_FIELDS.index("starts")


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"[realistic-fold-day] {message}", file=sys.stderr, flush=True)


# --- (a) the day, folded, checked against the ground truth -------------------------------------------------


def day_config(rate: float, seed: int, windows: WindowConfig) -> LoadgenConfig:
    """The load generator's run: the realistic-day scenario over one Saturday."""
    return LoadgenConfig(
        start_ms=START_MS,
        seed=seed,
        span_ms=DAY_MS,
        rate=rate,
        params=ModelParams(),
        incidents=load_scenario(SCENARIO),
        realism=RealismParams(**scenario_realism(SCENARIO)),
        windows_ms=(windows.fine_ms, windows.coarse_ms),
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def simulate(config: LoadgenConfig, windows: WindowConfig) -> tuple[DayData, dict[str, Any]]:
    """Generate the day, fold it with the flows' own code (bench/day_fold.py), check it on the truth."""
    assert config.span_ms is not None
    started = time.monotonic()
    with gc_paused():
        incident_set = IncidentSet(config.resolved_incidents())
        model = Model(config, incident_set)
        check = TruthCheck(windows.fine_ms)
        model.hidden = check.hidden
        waiting: list[FoldedWindow] = []
        next_report, folded = HOUR_MS, 0

        def on_batch(batch: list[dict[str, Any]]) -> None:
            nonlocal next_report, folded
            check.add(batch)
            folded += len(batch)
            if batch[-1]["event_time_ms"] - config.start_ms >= next_report:
                say(f"{next_report // HOUR_MS} h folded: {folded:,} events, {time.monotonic() - started:.0f} s")
                next_report += HOUR_MS

        def on_windows(fresh: list[FoldedWindow], final: bool) -> None:
            nonlocal waiting
            waiting = check.compare(waiting + fresh, final)

        out, events = fold_events(model, windows, config.start_ms + config.span_ms, on_batch, on_windows)
        day = DayData(SCENARIO, out, truth_incidents(incident_set), events, config.span_ms, time.monotonic() - started)
        return day, check.result()


def _cache_path(config: LoadgenConfig, windows: WindowConfig) -> Path:
    digest = hashlib.blake2b(CACHE_VERSION.encode(), digest_size=8)
    # What the cached windows and truth check depend on: the generator, the scenario, the detector's inputs.
    for path in [*sorted((REPO / "loadgen").glob("*.py")), REPO / "loadgen" / "scenarios" / f"{SCENARIO}.yaml"]:
        digest.update(path.read_bytes())
    digest.update(inspect.getsource(cell_inputs).encode() + repr(CELL_FIELDS).encode())
    digest.update(orjson.dumps({"run": config.describe(), "windows": asdict(windows)}))
    return CACHE / f"{SCENARIO}-{config.rate:g}-{digest.hexdigest()}.json.gz"


def day_data(rate: float, seed: int, windows: WindowConfig, use_cache: bool) -> tuple[DayData, dict[str, Any]]:
    """The folded day and its truth check: from the cache, or generated, folded and checked (then cached)."""
    config = day_config(rate, seed, windows)
    path = _cache_path(config, windows)
    if use_cache and path.exists():
        doc = orjson.loads(gzip.decompress(path.read_bytes()))
        folded = [(s, e, {(row[0], row[1]): row[2:] for row in rows}) for s, e, rows in doc["windows"]]
        day = DayData(SCENARIO, folded, doc["incidents"], doc["events"], doc["span_ms"], doc["seconds"], True)
        return day, doc["truth_check"]
    say(f"simulating and folding {SCENARIO} (24 h at {rate:g} events/s) ...")
    day, check = simulate(config, windows)
    say(f"{day.events:,} events, {len(day.windows)} windows in {day.seconds:.0f} s")
    doc = {
        "incidents": day.incidents,
        "events": day.events,
        "span_ms": day.span_ms,
        "seconds": day.seconds,
        "truth_check": check,
        "windows": [[s, e, [[c, d, *cell] for (c, d), cell in cells.items()]] for s, e, cells in day.windows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(orjson.dumps(doc), compresslevel=3))
    tmp.replace(path)
    return day, check


# --- (b) the statistics the aggregate model must reproduce ---------------------------------------------------


def starts_table(windows: list[tuple[int, int, Cells]], day_start_ms: int, fine_ms: int) -> dict[tuple[str, str], Any]:
    """Each cell's starts per window of the day, as an array (0 where a window has none)."""
    count = DAY_MS // fine_ms
    table: dict[tuple[str, str], Any] = {}
    for start, _end, cells in windows:
        w = (start - day_start_ms) // fine_ms
        if not 0 <= w < count:
            continue
        for key, row in cells.items():
            if key not in table:
                table[key] = np.zeros(count)
            table[key][w] = row[STARTS]
    return table


def traffic_statistics(
    table: dict[tuple[str, str], Any], offset_ms: dict[str, int], fine_ms: int, half_width: int = 15
) -> dict[str, Any]:
    """Dispersion, peak/trough, top-of-the-hour burst and steepest ramp of starts per cell and window.

    Dispersion: each window's count against its local level, the mean of the `half_width` windows on each
    side (not itself; a linear trend cancels), away from the top-of-the-hour bursts; pooled over cells,
    d² = (Σ(x - m)² / (1 + 1/(2 half_width)) - Σm) / Σm² (a gamma–Poisson count has variance m + d² m²; the
    local mean's own noise is the 1/(2 half_width)). Its standard error, approximately: each (x - m)² has a
    variance of about 2 v² + m (v = m + d² m²); at a fraction of a start per window it is what limits the estimate.
    """
    count = DAY_MS // fine_ms
    index = np.arange(count)
    kernel = np.ones(2 * half_width + 1)
    kernel[half_width] = 0
    sq_dev = sum_m = sum_m2 = 0.0
    levels = []
    burst_in = burst_out = 0.0
    n_in = n_out = 0
    per_country: dict[str, Any] = {}
    for (country, _device), series in table.items():
        local = (index * fine_ms + offset_ms[country]) % HOUR_MS
        in_burst = local < 120_000
        margin = (half_width + 1) * fine_ms
        clear = (local >= 120_000 + margin) & (local < HOUR_MS - margin)
        clear[:half_width] = clear[-half_width:] = False
        level = np.convolve(series, kernel, "same") / (2 * half_width)
        sq_dev += float(((series - level) ** 2)[clear].sum())
        sum_m += float(level[clear].sum())
        sum_m2 += float((level[clear] ** 2).sum())
        levels.append(level[clear])
        burst_in += float(series[in_burst].sum())
        n_in += int(in_burst.sum())
        burst_out += float(series[~in_burst].sum())
        n_out += int((~in_burst).sum())
        hours = ((index * fine_ms + offset_ms[country]) % DAY_MS) // HOUR_MS
        per_country[country] = per_country.get(country, 0) + np.bincount(hours, weights=series, minlength=24)
    d2 = (sq_dev / (1 + 1 / (2 * half_width)) - sum_m) / sum_m2 if sum_m2 else None
    d2_se = None
    if d2 is not None:
        m = np.concatenate(levels)
        v = m + max(d2, 0.0) * m * m
        d2_se = float(np.sqrt((2 * v * v + m).sum())) / sum_m2
    ratios, ramps = {}, {}
    for country, hourly in per_country.items():
        if hourly.min() >= 50:  # enough starts an hour for the ratio to mean something
            ratios[country] = round(float(hourly.max() / hourly.min()), 2)
            steps = np.abs(np.diff(np.log(np.append(hourly, hourly[0]))))
            ramps[country] = round(float(steps.max() / 60 * 100), 2)
    total = sum(float(s.sum()) for s in table.values())
    return {
        "starts": int(total),
        "starts_per_window_per_cell": round(total / count / max(len(table), 1), 3),
        "dispersion_d2": round(d2, 4) if d2 is not None else None,
        "dispersion_d2_se": round(d2_se, 4) if d2_se is not None else None,
        "dispersion_d": round(float(np.sqrt(max(d2, 0.0))), 3) if d2 is not None else None,
        "peak_trough_median": round(statistics.median(ratios.values()), 2) if ratios else None,
        "peak_trough_by_country": ratios,
        "top_of_hour_ratio": round((burst_in / n_in) / (burst_out / n_out), 3) if n_in and burst_out else None,
        "steepest_ramp_pct_per_min_median": round(statistics.median(ramps.values()), 2) if ramps else None,
        "steepest_ramp_pct_per_min_max": max(ramps.values()) if ramps else None,
    }


def aggregate_model_day(starts_per_s: float, seed: int) -> dict[tuple[str, str], Any]:
    """bench/realistic_traffic.py's starts for its Saturday, at `starts_per_s` (its noise and curves as they are)."""
    traffic = Traffic(days=AGGREGATE_SATURDAY + 1, starts_per_s=starts_per_s, seed=seed)
    first = AGGREGATE_SATURDAY * DAY_WINDOWS
    table: dict[tuple[str, str], Any] = {key: np.zeros(DAY_WINDOWS) for key in traffic.cells}
    for w in range(first + DAY_WINDOWS):
        cells, _active = traffic.window(w)
        if w >= first:
            for key, row in cells.items():
                table[key][w - first] = row[STARTS]
    return table


# --- (c) the detector over the day ------------------------------------------------------------------------


def detector_run(day: DayData) -> dict[str, Any]:
    """Every window through the detector; false alarms, incidents (anomaly_eval's scoring) and the premiere."""
    detector = AnomalyDetector(DetectorConfig())
    events: list[AnomalyEvent] = []
    cpu = time.process_time()
    for start, end, cells in day.windows:
        for detection in detector.observe_cells(start, end, cells, scores=False):
            events.extend(detection.events)
    cpu = time.process_time() - cpu
    real = [i for i in day.incidents if not i.get("benign")]
    benign = [i for i in day.incidents if i.get("benign")]
    judged = judge(DayData(day.name, day.windows, real, day.events, day.span_ms, day.seconds), events)
    opened = [e for e in events if e.state == "open"]
    closed: dict[str, AnomalyEvent] = {}
    for e in events:
        if e.state in CLOSED_STATES and e.anomaly_id not in closed:
            closed[e.anomaly_id] = e
    premiere_anomalies = [e for e in opened if any(_premiere_explains(p, e) for p in benign)]
    explained = {e.anomaly_id for e in opened for i in real if explains(i, e)}
    premiere_ids = {e.anomaly_id for e in premiere_anomalies}
    false_alarms = [e for e in opened if e.anomaly_id not in explained | premiere_ids]
    closing = []
    for incident in real:
        for e in (e for e in opened if explains(incident, e)):
            done = closed.get(e.anomaly_id)
            since = e.opened_ms if incident.get("persistent") else incident["end_ms"]
            closing.append(
                {
                    "incident": incident["name"],
                    "anomaly": e.anomaly_id,
                    "state": done.state if done else "still open",
                    "after_s": (done.window_end_ms - since) / 1000 if done else None,
                }
            )
    severities = {c.severity for e in premiere_anomalies for c in events if c.anomaly_id == e.anomaly_id}
    series_days = detector.series_count * day.span_ms / DAY_MS
    return {
        "series": detector.series_count,
        "cpu_ms_per_window": round(cpu * 1000 / max(len(day.windows), 1), 3),
        "anomalies_opened": len(opened),
        "incidents": judged["incidents"],
        "closing": closing,
        "premiere": {
            "anomalies": len(premiere_anomalies),
            "worst_severity": "critical" if "critical" in severities else ("warning" if severities else None),
            "series": sorted({f"{e.series}:{e.country}:{e.device_type}" for e in premiere_anomalies}),
        },
        "false_alarms": len(false_alarms),
        "false_alarms_per_1000_series_day": round(len(false_alarms) / series_days * 1000, 2) if series_days else None,
        "false_alarm_list": [
            {
                "hour": (e.window_start_ms - START_MS) / HOUR_MS,
                "series": e.series,
                "country": e.country,
                "device_type": e.device_type,
                "direction": e.direction,
                "severity": e.severity,
                "score": e.score,
            }
            for e in false_alarms
        ],
        "still_open_at_end": detector.open_anomalies(),
    }


def _premiere_explains(premiere: dict[str, Any], event: AnomalyEvent) -> bool:
    """A premiere moves its country's starts (every device type, and the roll-ups above)."""
    countries = premiere["where"].get("country")
    return (
        event.series == "sps"
        and (countries is None or event.country in (*countries, "all"))
        and event.window_end_ms >= premiere["start_ms"]
        and event.onset_ms < premiere["end_ms"] + PREMIERE_GRACE_MS
    )


# --- report -----------------------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown."""
    check, det = report["truth_check"], report["detector"]
    folded, model = report["statistics"]["folded"], report["statistics"]["aggregate_model"]
    lines = [
        "# One realistic day through the real fold",
        "",
        f"`python -m bench.realistic_fold_day --rate {report['rate']:g} --seed {report['seed']}`: the load"
        f" generator's `{SCENARIO}` scenario over a Saturday, {report['events']:,} events at {report['rate']:g}"
        f" events/s, folded by the flows' own code ({report['fold_seconds']:.0f} s here), every final 10 s window"
        " checked against the ground truth and fed to the detector (default `DetectorConfig`, cold at midnight).",
        "",
        f"**(a) Folded inputs against the ground truth**: {check['windows_equal']:,} of"
        f" {check['windows_compared']:,} windows equal on every checked input ({', '.join(check['fields'])});"
        f" starts {check['starts_folded']:,} folded, {check['starts_truth']:,} in the truth;"
        f" {len(check['mismatches'])} mismatches listed.",
        "",
        "**(b) The folded day against the aggregate model** (bench/realistic_traffic.py, its Saturday, at the same"
        f" {report['statistics']['starts_per_s']:.2f} starts/s): starts per country x device type and 10 s window.",
        "",
        "| statistic | folded events | aggregate model | configured (events / model) |",
        "|---|---:|---:|---|",
        f"| starts per window per cell | {folded['starts_per_window_per_cell']} |"
        f" {model['starts_per_window_per_cell']} | |",
        f"| dispersion d (var = m + d² m²) | {folded['dispersion_d']} | {model['dispersion_d']} |"
        f" {report['realism']['dispersion']} / {report['aggregate_dispersion_d']:.3f} |",
        f"| d², ± its standard error | {folded['dispersion_d2']} ± {folded['dispersion_d2_se']} |"
        f" {model['dispersion_d2']} ± {model['dispersion_d2_se']} |"
        f" {report['realism']['dispersion'] ** 2:.3f} / {report['aggregate_dispersion_d'] ** 2:.3f} |",
        f"| daily peak/trough, median over countries (hourly sums) | {folded['peak_trough_median']} |"
        f" {model['peak_trough_median']} | {report['realism']['peak_trough']} / 5-10 per country |",
        f"| top-of-the-hour burst (first 2 min against the rest) | {folded['top_of_hour_ratio']} |"
        f" {model['top_of_hour_ratio']} | {1 + report['realism']['top_of_hour_boost']} / 1.25 |",
        f"| steepest hourly ramp, median / max over countries (%/min) |"
        f" {folded['steepest_ramp_pct_per_min_median']} / {folded['steepest_ramp_pct_per_min_max']} |"
        f" {model['steepest_ramp_pct_per_min_median']} / {model['steepest_ramp_pct_per_min_max']} | |",
        "",
        f"**(c) The detector over the day** ({det['series']} series, {det['cpu_ms_per_window']} ms CPU a window):"
        f" {det['anomalies_opened']} anomalies opened; {det['false_alarms']} false alarms"
        f" ({det['false_alarms_per_1000_series_day']} per 1,000 series per day, the first day: no daily profile"
        f" learned yet); the benign premiere: {det['premiere']['anomalies']} anomalies, worst severity"
        f" {det['premiere']['worst_severity'] or '-'}; {len(det['still_open_at_end'])} still open at the end.",
        "",
        "| incident | detected | time to detect | anomalies | evidence z: all / first 2 min | closed |",
        "|---|---|---:|---:|---|---|",
    ]
    for inc in det["incidents"]:
        closes = [c for c in det["closing"] if c["incident"] == inc["name"]]
        closed_text = ", ".join(f"{c['state']} {c['after_s']} s" for c in closes) or "-"
        lines.append(
            f"| {inc['name']} | {'yes' if inc['detected'] else '**no**'} |"
            f" {inc['detect_s'] if inc['detect_s'] is not None else '-'} s | {inc['anomalies']} |"
            f" {inc['evidence_z']} / {inc['evidence_z_first_2_min']} | {closed_text} |"
        )
    lines.append("")
    lines.append("Closed: after the incident's end (the persistent one: after the anomaly opened).")
    if det["false_alarm_list"]:
        lines += ["", "False alarms:", ""]
        lines += [
            f"- {f['hour']:.2f} h: {f['series']} {f['country']}/{f['device_type']} {f['direction']} {f['severity']}"
            f" z={f['score']:.1f}"
            for f in det["false_alarm_list"]
        ]
    if check["mismatches"]:
        lines += ["", "Truth mismatches (first ten):", ""] + [f"- {m}" for m in check["mismatches"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the day and write bench/results/realistic_fold_day.md and .json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=150.0, help="mean events/s of the simulated day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="simulate again even when the day is cached")
    parser.add_argument("--out", type=Path, default=RESULTS / "realistic_fold_day", help="PATH(.md, .json)")
    args = parser.parse_args(argv)
    windows = WindowConfig()
    day, check = day_data(args.rate, args.seed, windows, not args.no_cache)
    folded = starts_table(day.windows, START_MS, windows.fine_ms)
    offsets = {c.code: c.utc_offset_min * 60_000 for c in COUNTRIES}
    folded_stats = traffic_statistics(folded, offsets, windows.fine_ms)
    starts_per_s = folded_stats["starts"] / (DAY_MS / 1000)
    say(f"aggregate model: a Saturday at {starts_per_s:.2f} starts/s ...")
    model_table = aggregate_model_day(starts_per_s, args.seed)
    model_offsets = {c: h * HOUR_MS for c, _share, h in AGGREGATE_COUNTRIES}
    model_stats = traffic_statistics(model_table, model_offsets, windows.fine_ms)
    say("detector ...")
    report = {
        "rate": args.rate,
        "seed": args.seed,
        "events": day.events,
        "fold_seconds": day.seconds,
        "realism": asdict(day_config(args.rate, args.seed, windows).realism),
        "aggregate_dispersion_d": 1 / np.sqrt(Traffic.dispersion),
        "truth_check": check,
        "statistics": {"starts_per_s": starts_per_s, "folded": folded_stats, "aggregate_model": model_stats},
        "detector": detector_run(day),
        "incidents": day.incidents,
    }
    text = markdown(report)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
