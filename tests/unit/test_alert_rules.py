"""The shipped Prometheus config and alert rules: valid for promtool, unit-tested, and built on real metrics.

promtool is the system's if on PATH, else built once into the user's cache by `make test` (tests/services/binaries.py).
The metric names the rules may use are read from the prometheus_client declarations of
sinks/prometheus.py, never copied by hand.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from flows.health import PipelineMetrics
from tests.services.binaries import missing_prometheus_message, prometheus_tool

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
# Series Prometheus makes itself that the rules and dashboards may use.
PROMETHEUS_OWN = frozenset({"up"})
SEVERITIES = ("critical", "warning")

# PromQL's binary operators and modifiers: words that are neither metrics nor function calls.
PROMQL_KEYWORDS = frozenset(
    ("and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "atan2")
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")


@cache
def declared_metric_names() -> frozenset[str]:
    """Every series name /metrics can carry, from the metric objects sinks/prometheus.py declares."""
    names: set[str] = set()
    for family in PipelineMetrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions are checked by Prometheus itself)."""
    text = _STRING.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in PROMQL_KEYWORDS and word.lower() not in ("inf", "nan"):
            names.add(word)
    return names


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/alerts.yml."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool() -> str:
    found = prometheus_tool("promtool")
    if found is None:
        pytest.fail(missing_prometheus_message("promtool"))
    return found.path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    result = _run("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert [(PROMETHEUS_DIR / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]


def test_promtool_accepts_the_rules() -> None:
    result = _run("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests/"
    result = _run("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    rules = alert_rules()
    assert all("alert" in rule for rule in rules), "only alert rules are expected here"
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']}: no `for:`, one bad scrape would page"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and len(annotations["description"]) > 100, rule["alert"]


def test_every_alert_is_tested_firing_and_silent() -> None:
    fires: set[str] = set()
    stays_silent: set[str] = set()
    for path in RULE_TESTS:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["rule_files"] == ["../alerts.yml"], path
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case["exp_alerts"] else stays_silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts no promtool test sees firing"
    assert names - stays_silent == set(), "alerts no promtool test sees silent"
    assert fires | stays_silent <= names, "tests of alerts that do not exist"


def test_alerts_use_only_exported_metrics() -> None:
    known = declared_metric_names() | PROMETHEUS_OWN
    used: set[str] = set()
    for rule in alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, f"{rule['alert']}: not exported by sinks/prometheus.py: {sorted(names - known)}"
        used |= names
    assert "streampulse_stream_starts_total" in used


def test_declared_names_come_from_the_registry() -> None:
    names = declared_metric_names()
    # One of each kind, so a change in how prometheus_client names things shows up here.
    assert {
        "streampulse_stream_starts_total",
        "streampulse_concurrent_streams",
        "streampulse_startup_seconds_bucket",
        "streampulse_redis_write_seconds_bucket",
        "streampulse_redis_write_seconds_count",
    } <= names
    assert "streampulse_stream_starts" not in names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (country) (rate(streampulse_stream_starts_total{country=~"B.*"}[5m] offset 1d))',
            {"streampulse_stream_starts_total"},
        ),
        ("a / on (job, instance) group_left count_over_time(b[1h:1m]) > 3 and bool c", {"a", "b", "c"}),
        ('histogram_quantile(0.9, sum by (le) (rate(x_bucket{i=~"$instance"}[$__rate_interval]))) > 1e3', {"x_bucket"}),
        ('time() - max(x) > 120 unless on () label_replace(y, "a", "$1", "b", "(.*)")', {"x", "y"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names
