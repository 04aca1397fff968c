"""How the anomaly detector did on a folded day: detections matched with the injected incidents.

`detect` runs the flows' own detector over a day's final windows (bench/day_fold.py); `judge` matches its
anomalies with the ground truth's incidents (time to detect, false alarms, what each incident's own first
minutes could show at best: `evidence`); `summarise` sums the days. Used by the load generator's evaluation
(bench/anomaly_eval.py) and the realistic day (bench/realistic_fold_day.py).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.day_fold import DayData
from flows.anomaly.config import DetectorConfig
from flows.anomaly.detector import AnomalyDetector
from flows.anomaly.events import AnomalyEvent
from flows.anomaly.seasonal import HOUR_MS
from flows.anomaly.series import CELL_FIELDS, SERIES, STARTUP_B2, observation
from flows.anomaly.stats import binomial_score, normal_score, poisson_score

TARGET_DETECT_MS = 120_000
MATCH_GRACE_MS = 300_000
# The series each incident effect moves: an anomaly on another series is not explained by the incident.
EFFECT_SERIES: dict[str, tuple[str, ...]] = {
    "start_failure_multiplier": ("vsf_rate", "sps"),
    "starts_drop": ("sps",),
    "rebuffer_multiplier": ("rebuffer_ratio",),
    "play_error_multiplier": ("playback_error_rate",),
    "startup_ms_multiplier": ("startup_ms",),
    "payment_decline_multiplier": ("payment_failure_rate", "signup_completion_ratio"),
}


def detect(day: DayData, config: DetectorConfig) -> tuple[list[AnomalyEvent], float]:
    """Every anomaly event the detector raises over the day, and the detector's CPU time per window (ms)."""
    detector = AnomalyDetector(config)
    events: list[AnomalyEvent] = []
    started = time.process_time()
    for start, end, cells in day.windows:
        for detection in detector.observe_cells(start, end, cells, scores=False):
            events.extend(detection.events)
    per_window_ms = (time.process_time() - started) * 1000 / max(len(day.windows), 1)
    return events, per_window_ms


def _in_scope(event: AnomalyEvent, where: dict[str, list[str]]) -> bool:
    countries, devices = where.get("country"), where.get("device_type")
    if countries is not None and event.country != "all" and event.country not in countries:
        return False
    return devices is None or event.device_type == "all" or event.device_type in devices


def explains(incident: dict[str, Any], event: AnomalyEvent) -> bool:
    """Whether an incident explains an anomaly: a series it moves, in its scope, during it (+ grace)."""
    moved = {s for effect in incident["effect"] for s in EFFECT_SERIES.get(effect, ())}
    return (
        event.series in moved
        and _in_scope(event, incident["where"])
        and event.window_end_ms >= incident["start_ms"]
        and event.onset_ms < incident["end_ms"] + MATCH_GRACE_MS
    )


def evidence(day: DayData, incident: dict[str, Any]) -> tuple[float, float]:
    """The best score the incident's data can give at all: over all of it, and over its first 2 minutes.

    Summed over its whole scope (every country and device type in it), on the rate, share and startup
    series its effect moves, against a baseline known exactly: the rest of the day, an hour or more away
    from the incident. No detector can do better with that much data; it shows what is detectable.
    """
    moved = {s for effect in incident["effect"] for s in EFFECT_SERIES.get(effect, ())} - {"sps"}
    countries, devices = incident["where"].get("country"), incident["where"].get("device_type")
    start, end = incident["start_ms"], incident["end_ms"]
    sums = {part: [0] * len(CELL_FIELDS) for part in ("base", "whole", "first")}
    for window_start, _end, cells in day.windows:
        if start <= window_start < end:
            parts = ("whole", "first") if window_start < start + TARGET_DETECT_MS else ("whole",)
        elif window_start < start - HOUR_MS or window_start >= end + HOUR_MS:
            parts = ("base",)
        else:
            continue
        for (country, device), cell in cells.items():
            if (countries is None or country in countries) and (devices is None or device in devices):
                for part in parts:
                    total = sums[part]
                    for i, value in enumerate(cell):
                        total[i] += value
    best = [0.0, 0.0]
    for index, spec in enumerate(SERIES):
        if spec.id not in moved:
            continue
        base_k, base_n = observation(index, sums["base"])
        if base_n <= 0 or base_k <= 0:
            continue
        for slot, part in enumerate(("whole", "first")):
            k, n = observation(index, sums[part])
            if spec.kind == "rate":
                score = poisson_score(k, n * base_k / base_n)
            elif spec.kind == "share":
                score = binomial_score(k, n, base_k / base_n)
            else:  # lognormal: Σlog-bucket of n starts against the baseline's mean and per-start variance
                mean = base_k / base_n
                variance = sums["base"][STARTUP_B2] / base_n - mean * mean
                score = normal_score(k - n * mean, n * variance)
            if "down" in spec.directions:
                score = -score
            best[slot] = max(best[slot], score)
    return best[0], best[1]


def judge(day: DayData, events: list[AnomalyEvent]) -> dict[str, Any]:
    """Detection, time to detect and false alarms of one day."""
    opened = [e for e in events if e.state == "open"]
    resolved = {e.anomaly_id: e for e in events if e.state == "resolved"}
    incidents = []
    explained: set[str] = set()
    for incident in day.incidents:
        matches = [e for e in opened if explains(incident, e)]
        explained.update(e.anomaly_id for e in matches)
        first = min(matches, key=lambda e: (e.window_end_ms, -abs(e.score)), default=None)
        last_resolved = [resolved[e.anomaly_id].window_end_ms for e in matches if e.anomaly_id in resolved]
        whole, first_2_min = evidence(day, incident)
        incidents.append(
            {
                "name": incident["name"],
                "start_ms": incident["start_ms"],
                "duration_s": (incident["end_ms"] - incident["start_ms"]) / 1000,
                "where": incident["where"],
                "effect": incident["effect"],
                "detected": first is not None,
                "detect_s": (first.window_end_ms - incident["start_ms"]) / 1000 if first else None,
                "first": _describe(first) if first else None,
                "anomalies": len(matches),
                # The same series opening twice within one incident: one incident should be one anomaly.
                "reopened": len(matches) - len({(e.series, e.country, e.device_type) for e in matches}),
                "evidence_z": round(whole, 1),
                "evidence_z_first_2_min": round(first_2_min, 1),
                "series": sorted({f"{e.series}:{e.country}:{e.device_type}" for e in matches}),
                "all_resolved_after_end_s": (max(last_resolved) - incident["end_ms"]) / 1000
                if matches and len(last_resolved) == len(matches)
                else None,
            }
        )
    false_alarms = [_describe(e) for e in opened if e.anomaly_id not in explained]
    return {
        "day": day.name,
        "span_h": day.span_ms / HOUR_MS,
        "events": day.events,
        "windows": len(day.windows),
        "incidents": incidents,
        "anomalies_opened": len(opened),
        "reopened": sum(i["reopened"] for i in incidents),
        "false_alarms": false_alarms,
    }


def _describe(event: AnomalyEvent) -> dict[str, Any]:
    return {
        "id": event.anomaly_id,
        "series": event.series,
        "country": event.country,
        "device_type": event.device_type,
        "direction": event.direction,
        "severity": event.severity,
        "score": event.score,
        "window_end_ms": event.window_end_ms,
        "observed": event.observed,
        "expected": event.expected,
        "horizon_windows": event.horizon_windows,
    }


def summarise(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over every day."""
    incidents = [i for d in days for i in d["incidents"]]
    detected = [i for i in incidents if i["detected"]]
    times = [i["detect_s"] for i in detected]
    simulated_days = sum(d["span_h"] for d in days) / 24
    false_alarms = sum(len(d["false_alarms"]) for d in days)
    return {
        "incidents": len(incidents),
        "detected": len(detected),
        "detection_rate": len(detected) / len(incidents) if incidents else None,
        "within_target": sum(1 for t in times if t <= TARGET_DETECT_MS / 1000),
        "detect_s_median": statistics.median(times) if times else None,
        "detect_s_max": max(times) if times else None,
        "simulated_days": simulated_days,
        "false_alarms": false_alarms,
        "false_alarms_per_day": false_alarms / simulated_days if simulated_days else None,
    }
