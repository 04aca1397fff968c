"""The anomaly detector on two weeks of realistic-noise traffic (bench/realistic_traffic.py).

    .venv/bin/python -m bench.realistic_eval              # 14 simulated days, 735 series (~5-10 min here)
    .venv/bin/python -m bench.realistic_eval --days 9     # shorter: the incidents start on day 8

Every 10 s window's inputs go to `AnomalyDetector.observe_cells` in order, as the dataflow feeds final
windows. Scored against the traffic's truth:

- an incident is *detected* by an anomaly on a series it moves, in its scope or a roll-up of it, opened at or
  after its start with evidence starting before its end + 5 min; *time to detect* is the end of the window
  that opened it minus the incident's start (event time);
- *time to close*: every anomaly an incident explains closes (resolved, or accepted as the new normal) — the
  time from the incident's end (a persistent one: from the anomaly's opening) to that;
- a *false alarm* is an opened anomaly no incident explains; reported per 1,000 series per day, for the
  first week (the detector learning the week) and after it;
- the benign premiere: the highest severity any anomaly it explains reached (it must not be critical).

Writes bench/results/anomaly_realistic.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.realistic_traffic import DAY_WINDOWS, T0_MS, WINDOW_MS, Incident, Traffic
from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import CLOSED_STATES, AnomalyEvent

RESULTS = Path(__file__).parent / "results"
EVIDENCE_SLACK_MS = 5 * 60_000


def explains(incident: Incident, event: AnomalyEvent) -> bool:
    """Whether `incident` explains the anomaly that `event` (its opening) announced."""
    start_ms, end_ms = T0_MS + incident.start * WINDOW_MS, T0_MS + incident.end * WINDOW_MS
    return (
        event.series in incident.series
        and (not incident.countries or event.country in (*incident.countries, "all"))
        and (not incident.devices or event.device_type in (*incident.devices, "all"))
        and event.opened_ms >= start_ms
        and event.onset_ms < end_ms + EVIDENCE_SLACK_MS
    )


def evaluate(days: int, seed: int, config: DetectorConfig) -> dict[str, Any]:
    """Run the detector over `days` of traffic; the figures of the module docstring."""
    traffic = Traffic(days=days, seed=seed)
    detector = AnomalyDetector(config)
    events: list[AnomalyEvent] = []
    cpu = 0.0
    for w in range(days * DAY_WINDOWS):
        cells, _ = traffic.window(w)
        start = time.process_time()
        for detection in detector.observe_cells(T0_MS + w * WINDOW_MS, T0_MS + (w + 1) * WINDOW_MS, cells, False):
            events.extend(detection.events)
        cpu += time.process_time() - start
    opened = [e for e in events if e.state == "open"]
    by_id: dict[str, list[AnomalyEvent]] = {}
    for e in events:
        by_id.setdefault(e.anomaly_id, []).append(e)
    series_days_week1 = detector.series_count * min(days, 7)
    series_days_after = detector.series_count * max(days - 7, 0)
    false_alarms: list[dict[str, Any]] = []
    incidents: list[dict[str, Any]] = []
    explained: set[str] = set()
    for incident in traffic.incidents:
        mine = [e for e in opened if explains(incident, e)]
        explained.update(e.anomaly_id for e in mine)
        start_ms, end_ms = T0_MS + incident.start * WINDOW_MS, T0_MS + incident.end * WINDOW_MS
        closing = []
        for e in mine:
            closed = [c for c in by_id[e.anomaly_id] if c.state in CLOSED_STATES]
            since = e.opened_ms if incident.persistent or incident.end >= days * DAY_WINDOWS else end_ms
            closing.append(
                {"anomaly": e.anomaly_id, "state": closed[0].state, "after_s": (closed[0].window_end_ms - since) / 1000}
                if closed
                else {"anomaly": e.anomaly_id, "state": "still open", "after_s": None}
            )
        severities = {c.severity for e in mine for c in by_id[e.anomaly_id]}
        incidents.append(
            {
                "incident": incident.name,
                "benign": incident.benign,
                "persistent": incident.persistent,
                "detected": bool(mine),
                "time_to_detect_s": min(((e.window_end_ms - start_ms) / 1000 for e in mine), default=None),
                "anomalies": len(mine),
                "worst_severity": "critical" if "critical" in severities else ("warning" if severities else None),
                "closing": closing,
            }
        )
    for e in opened:
        if e.anomaly_id not in explained:
            day = (e.window_start_ms - T0_MS) // (DAY_WINDOWS * WINDOW_MS)
            false_alarms.append({"day": day, "anomaly": e.anomaly_id, "severity": e.severity, "score": e.score})
    week1 = [f for f in false_alarms if f["day"] < 7]
    after = [f for f in false_alarms if f["day"] >= 7]
    windows = days * DAY_WINDOWS
    return {
        "days": days,
        "seed": seed,
        "series": detector.series_count,
        "cpu_ms_per_window": round(cpu / windows * 1000, 3),
        "false_alarms_week1": len(week1),
        "false_alarms_after_week1": len(after),
        "false_alarms_per_1000_series_day_week1": round(len(week1) / series_days_week1 * 1000, 3),
        "false_alarms_per_1000_series_day_after": (
            round(len(after) / series_days_after * 1000, 3) if series_days_after else None
        ),
        "false_alarm_list": false_alarms,
        "incidents": incidents,
        "still_open_at_end": detector.open_anomalies(),
        "config": asdict(config),
    }


def report(result: dict[str, Any]) -> str:
    """The results as Markdown."""
    real = [i for i in result["incidents"] if not i["benign"]]
    detected = [i for i in real if i["detected"]]
    within = [i for i in detected if i["time_to_detect_s"] is not None and i["time_to_detect_s"] <= 120]
    ttd = [i["time_to_detect_s"] for i in detected]
    closings = [c for i in real if not i["persistent"] for c in i["closing"]]
    close_s = [c["after_s"] for c in closings if c["after_s"] is not None]
    lines = [
        "# Anomaly detection on realistic-noise traffic",
        "",
        f"`python -m bench.realistic_eval --days {result['days']} --seed {result['seed']}`: {result['days']} simulated"
        f" days, {result['series']} series, gamma–Poisson noise around daily curves (5-10x peak/trough), a"
        " weekly cycle, drift, top-of-the-hour bursts, a benign premiere and the incident library"
        " (bench/realistic_traffic.py).",
        "",
        "| | value |",
        "|---|---|",
        f"| false alarms, first week (learning the week) | {result['false_alarms_week1']}"
        f" ({result['false_alarms_per_1000_series_day_week1']} per 1,000 series per day) |",
        f"| false alarms, after the first week | {result['false_alarms_after_week1']}"
        f" ({result['false_alarms_per_1000_series_day_after']} per 1,000 series per day) |",
        f"| incidents detected | {len(detected)} / {len(real)} |",
        f"| detected within 2 min (event time) | {len(within)} / {len(real)} |",
        f"| time to detect, median / max | {statistics.median(ttd) if ttd else '-'} s / {max(ttd, default='-')} s |",
        f"| anomalies closed after their incident's end, max | {max(close_s, default='-')} s"
        f" ({len(close_s)} of {len(closings)} closed) |",
        f"| still open at the end of the run | {len(result['still_open_at_end'])} |",
        f"| detector CPU per window ({result['series']} series) | {result['cpu_ms_per_window']} ms |",
        "",
        "| incident | detected | time to detect | anomalies | worst severity | closed (after its end; persistent: after opening) |",
        "|---|---|---:|---:|---|---|",
    ]
    for i in result["incidents"]:
        closed = ", ".join(f"{c['state']} {c['after_s']} s" for c in i["closing"]) or "-"
        lines.append(
            f"| {i['incident']} | {'yes' if i['detected'] else 'no'} | {i['time_to_detect_s'] or '-'} s |"
            f" {i['anomalies']} | {i['worst_severity'] or '-'} | {closed} |"
        )
    if result["false_alarm_list"]:
        lines += ["", "False alarms:", ""]
        lines += [
            f"- day {f['day']}: {f['anomaly']} ({f['severity']}, z={f['score']})" for f in result["false_alarm_list"]
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "anomaly_realistic")
    args = parser.parse_args()
    result = evaluate(args.days, args.seed, DetectorConfig())
    text = report(result)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
