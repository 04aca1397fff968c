"""The evaluation path (bench/anomaly_eval.py): its inputs are the ground truth, and a scenario is caught cleanly."""

from __future__ import annotations

from collections import Counter

from bench.anomaly_eval import START_MS, DaySpec, absolute, simulate
from bench.anomaly_judging import detect, judge
from bench.truth_check import TRUTH_OF, truth_total
from flows.anomaly.config import DetectorConfig
from flows.anomaly.series import CELL_FIELDS
from loadgen.api import generate
from loadgen.incidents import load_scenario
from settings.windows import WindowConfig

MINUTE_MS = 60_000


def test_the_detector_inputs_of_the_eval_equal_the_load_generators_truth() -> None:
    span, rate, seed = 8 * MINUTE_MS, 150.0, 21
    incidents = absolute(load_scenario("mobile-app-outage-in"), START_MS)
    day = simulate(DaySpec("fidelity", seed, START_MS, span, incidents, ""), rate, WindowConfig())
    truth = generate(
        seed=seed,
        start_ms=START_MS,
        span_ms=span,
        rate=rate,
        incidents=incidents,
        session_timeout_ms=60_000,
    ).truth
    assert day.incidents == [{k: v for k, v in i.items()} for i in truth["incidents"]]
    expected: Counter[tuple[int, str, str, str]] = Counter()
    for window in truth["windows"]["10s"]["windows"]:
        for cell in window["cells"]:
            for field, (key, depth) in TRUTH_OF.items():
                if key in cell:
                    expected[(window["start_ms"], cell["country"], cell["device_type"], field)] += truth_total(
                        cell[key], depth
                    )
    measured: Counter[tuple[int, str, str, str]] = Counter()
    for start, _end, cells in day.windows:
        for (country, device), values in cells.items():
            for field in TRUTH_OF:
                measured[(start, country, device, field)] += values[CELL_FIELDS.index(field)]
    assert +measured == +expected
    assert sum(v for k, v in expected.items() if k[3] == "starts") > 1000  # it was real traffic


def test_a_scenario_run_through_the_eval_is_detected_without_false_alarms() -> None:
    # The rebuffer storm starts 10 minutes in: long enough for the baselines, with the default parameters.
    incidents = absolute(load_scenario("rebuffer-storm-us-tv"), START_MS)
    spec = DaySpec("rebuffer-storm", 5, START_MS, 22 * MINUTE_MS, incidents, "")
    day = simulate(spec, 200.0, WindowConfig())
    events, _per_window_ms = detect(day, DetectorConfig())
    result = judge(day, events)
    (incident,) = result["incidents"]
    assert incident["detected"], events
    assert incident["detect_s"] <= 60
    assert incident["first"]["series"] == "rebuffer_ratio" and incident["first"]["severity"] == "critical"
    assert result["false_alarms"] == []
