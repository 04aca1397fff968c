"""The anomaly test's traffic gives the same verdict at every hour of the day.

tests/integration/test_anomalies.py runs its rebuffer storm through Kafka,
the flow and Redis at one fixed hour. The traffic follows the diurnal curve,
so its volume and country mix change with the hour: here the same traffic,
folded by the flows' own code (bench/anomaly_eval.py `simulate`), goes to
the detector for each of the 24 start hours, and each must give the verdict
the integration test asserts.
"""

from __future__ import annotations

import pytest

from bench.anomaly_eval import DaySpec, absolute, simulate
from bench.anomaly_judging import detect
from flows.anomaly.config import DetectorConfig
from loadgen.incidents import parse_incidents
from settings.windows import WindowConfig
from tests.rebuffer_storm import (
    COARSE_MS,
    FINE_MS,
    HOUR_MS,
    INCIDENT,
    LATENESS_MS,
    RATE,
    SEED,
    SPAN_MS,
    check_anomalies,
)

MIDNIGHT_MS = 1_796_428_800_000  # 2026-12-05T00:00:00Z


@pytest.mark.parametrize("hour", range(24))
def test_the_rebuffer_storm_is_one_anomaly_whatever_the_hour(hour: int) -> None:
    start = MIDNIGHT_MS + hour * HOUR_MS
    spec = DaySpec(f"storm-{hour:02d}h", SEED, start, SPAN_MS, absolute(parse_incidents([INCIDENT]), start), "")
    day = simulate(spec, RATE, WindowConfig(fine_ms=FINE_MS, coarse_ms=COARSE_MS, allowed_lateness_ms=LATENESS_MS))
    events, _ = detect(day, DetectorConfig())
    check_anomalies([e.to_dict() for e in events], day.incidents[0])
