"""The rebuffer-storm traffic of the anomaly tests, and what the detector must make of it.

tests/integration/test_anomalies.py sends it through real Kafka, the real
flow and real Redis at one fixed hour of the day; tests/unit/
test_anomaly_every_hour.py sends the same traffic straight to the detector
at every hour of the day, so the integration test's outcome does not hang
on the hour it was anchored at.
"""

from __future__ import annotations

from typing import Any

from loadgen.api import Generated, generate

SEED = 31
RATE = 300.0
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SPAN_MS = 6 * MINUTE_MS
# 2-second windows so the detector warms up within the first minute.
FINE_MS, COARSE_MS, LATENESS_MS = 2_000, 10_000, 2_000
INCIDENT_AT_MS = 3 * MINUTE_MS
INCIDENT: dict[str, Any] = {
    "name": "us-tv-rebuffer-storm",
    "start": f"+{INCIDENT_AT_MS // 1000}s",
    "duration": "2m",
    "where": {"country": "US", "device_type": "tv"},
    "effect": {"rebuffer_multiplier": 10},
}
# Opened within this many fine windows of the incident's start.
DETECT_WITHIN_WINDOWS = 15


def storm(start_ms: int) -> Generated:
    """Six minutes of traffic from `start_ms`: US TVs rebuffer ten times as often from minute 3 to 5."""
    return generate(seed=SEED, start_ms=start_ms, span_ms=SPAN_MS, rate=RATE, incidents=[INCIDENT])


def check_anomalies(events: list[dict[str, Any]], incident: dict[str, Any]) -> dict[str, Any]:
    """Assert that the anomaly events (`AnomalyEvent.to_dict()` form) show the storm and nothing else.

    Returns the one anomaly opened on the incident's own series.
    """
    # Nothing where nothing was injected: every anomaly is the rebuffer storm, in its scope or a roll-up of it.
    unexplained = [
        e
        for e in events
        if not (e["series"] == "rebuffer_ratio" and e["country"] in ("US", "all") and e["device_type"] in ("tv", "all"))
    ]
    assert not unexplained, unexplained
    opened = {e["anomaly_id"]: e for e in events if e["state"] == "open"}
    cell = [e for e in opened.values() if (e["country"], e["device_type"]) == ("US", "tv")]
    assert len(cell) == 1, events  # one incident, one anomaly on its own series
    anomaly = cell[0]
    assert anomaly["direction"] == "up" and anomaly["severity"] == "critical" and anomaly["score"] >= 5
    start = incident["start_ms"]
    assert start < anomaly["window_end_ms"] <= start + DETECT_WITHIN_WINDOWS * FINE_MS, (anomaly, incident)
    assert anomaly["observed"] > 3 * anomaly["expected"]
    return anomaly
