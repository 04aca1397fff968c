"""The provisioned Grafana dashboards and the compose file that runs them, checked without Grafana or Docker.

Every query must use only metrics sinks/prometheus.py declares (tests/integration/test_dashboards.py
then runs each one against a real Prometheus scraping a real flow).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from flows.window_counters import WINDOW_COUNTERS
from tests.unit.test_alert_rules import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_OWN,
    alert_rules,
    declared_metric_names,
    promql_metric_names,
)

REPO = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "streampulse.yml"
COMPOSE = REPO / "docker-compose.yml"
EXPECTED_DASHBOARDS = {
    "streampulse-ops": "streampulse / Ops overview",
    "streampulse-playback": "streampulse / Playback quality",
    "streampulse-signup": "streampulse / Sign-up funnel",
    "streampulse-pipeline": "streampulse / Pipeline health",
}
# Grafana's own variables, and what a query test may put in their place.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# The only metric whose labels may name a title (bounded: the top N).
TITLE_METRIC = "streampulse_top_title_stream_starts"
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")
OPS_UID = "streampulse-ops"
# What the anomaly detector exports (docs/anomalies.md), and the score it opens an anomaly from.
ANOMALY_ACTIVE, ANOMALY_SCORE = "streampulse_anomaly_active", "streampulse_anomaly_score"
ANOMALIES_OPENED = "streampulse_anomalies_total"
ANOMALY_OPEN_SCORE = 5


@dataclass(frozen=True)
class Query:
    """One panel target: where it is and its PromQL, template variables unresolved."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str


def dashboards() -> dict[str, dict[str, Any]]:
    """The dashboard JSON documents, by file name."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> list[Query]:
    """Every PromQL target of every dashboard."""
    return [
        Query(board["uid"], panel["title"], target["refId"], target["expr"])
        for board in dashboards().values()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def sections(board: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The panels under each row title, as Grafana lays them out ("" for those above the first row)."""
    found: dict[str, list[dict[str, Any]]] = {"": []}
    current = found[""]
    for panel in sorted(board["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = found.setdefault(panel["title"], [])
            current.extend(panel.get("panels", []))  # a collapsed row holds its own
        else:
            current.append(panel)
    return found


def variable_queries(board: Mapping[str, Any]) -> dict[str, tuple[str | None, str]]:
    """Each query variable's `label_values(selector, label)` as (selector or None, label)."""
    found: dict[str, tuple[str | None, str]] = {}
    for variable in board["templating"]["list"]:
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text.strip())
        assert match, f"{board['uid']} ${variable['name']}: only label_values(...) variables are expected"
        found[variable["name"]] = (match["selector"], match["label"])
    return found


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """The expression with template variables ($name, ${name}, [[name]]) replaced, Grafana's own included."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return {**GRAFANA_BUILTINS, **values}[name]

    return _VARIABLE.sub(value, expr)


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def _mounts(service: Mapping[str, Any]) -> dict[str, tuple[Path, str]]:
    """container path -> (host path, mode) of a service's bind mounts."""
    mounts: dict[str, tuple[Path, str]] = {}
    for volume in service.get("volumes", []):
        host, container, *mode = volume.split(":")
        assert host.startswith("./"), f"{volume}: only bind mounts from the repository are expected"
        mounts[container] = (REPO / host, mode[0] if mode else "rw")
    return mounts


def _host_path(mounts: Mapping[str, tuple[Path, str]], container_path: str) -> Path | None:
    """The repository file a container path is mounted from, if any."""
    for target, (host, _mode) in mounts.items():
        if container_path == target:
            return host
        if container_path.startswith(target.rstrip("/") + "/"):
            return host / posixpath.relpath(container_path, target)
    return None


def test_the_four_dashboards_are_there() -> None:
    boards = dashboards()
    assert {board["uid"]: board["title"] for board in boards.values()} == EXPECTED_DASHBOARDS
    for board in boards.values():
        assert "streampulse" in board["tags"]
        assert board["refresh"] and board["time"]["to"] == "now"


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"]
    assert len(provisioned) == 1
    uid = provisioned[0]["uid"]
    for board in dashboards().values():
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{board['uid']}: duplicate panel ids"
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid, (board["uid"], panel["title"])
            assert panel["targets"], (board["uid"], panel["title"])
            assert panel.get("description"), f"{board['uid']} / {panel['title']}: say what the panel shows"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid, (board["uid"], panel["title"])
                assert target["expr"].strip(), (board["uid"], panel["title"])
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == uid, (board["uid"], variable["name"])


def test_panels_do_not_overlap() -> None:
    for board in dashboards().values():
        taken: dict[tuple[int, int], str] = {}
        for panel in board["panels"]:  # rows' own panels are placed when expanded, like their row
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (board["uid"], panel["title"])
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in taken, f"{board['uid']}: {panel['title']!r} overlaps {taken[(x, y)]!r}"
                    taken[(x, y)] = panel["title"]


def test_dashboards_use_only_exported_metrics() -> None:
    known = declared_metric_names() | PROMETHEUS_OWN
    for query in queries():
        names = promql_metric_names(query.expr)
        assert names, query
        assert names <= known, f"{query}: not exported by sinks/prometheus.py: {sorted(names - known)}"
    for board in dashboards().values():
        for name, (selector, _label) in variable_queries(board).items():
            assert selector is not None and promql_metric_names(selector) <= known, (board["uid"], name)


def test_template_variables_are_defined_and_used() -> None:
    for board in dashboards().values():
        defined = set(variable_queries(board))
        used: set[str] = set()
        for panel in panels(board):
            for target in panel.get("targets", []):
                for match in _VARIABLE.finditer(target["expr"]):
                    used.add(next(group for group in match.groups() if group))
        assert used - set(GRAFANA_BUILTINS) <= defined, f"{board['uid']}: undefined {sorted(used - defined)}"
        assert defined <= used, f"{board['uid']}: unused variables {sorted(defined - used)}"
        for variable in board["templating"]["list"]:
            # Multi-value and "All" become a regex: the queries must match with =~, never =.
            assert variable["includeAll"] and variable["allValue"] == ".*", (board["uid"], variable["name"])
        for query in queries():
            assert not re.search(r'[^=!]=\s*"\$', query.expr), f"{query}: use =~ with a template variable"


def test_titles_come_only_from_the_top_titles_metric() -> None:
    for query in queries():
        if "title_id" in query.expr:
            assert promql_metric_names(query.expr) == {TITLE_METRIC}, query
    for board in dashboards().values():
        assert all(label != "title_id" for _selector, label in variable_queries(board).values()), board["uid"]


def test_compose_runs_prometheus_with_the_rules_and_grafana_provisioned() -> None:
    services = _compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        for container, (host, mode) in _mounts(service).items():
            assert host.exists(), f"{host} (mounted at {container}) does not exist"
            assert mode == "ro", container

    prometheus_mounts = _mounts(prometheus)
    config_path = "/etc/prometheus/prometheus.yml"
    assert _host_path(prometheus_mounts, config_path) == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    for rule_file in config["rule_files"]:
        in_container = posixpath.join(posixpath.dirname(config_path), rule_file)
        assert _host_path(prometheus_mounts, in_container) == PROMETHEUS_CONFIG.parent / rule_file, rule_file
    for scrape in config["scrape_configs"]:
        for target in (t for group in scrape["static_configs"] for t in group["targets"]):
            host, port = target.split(":")
            assert host in services and any(str(p).endswith(f":{port}") for p in services[host]["ports"]), target

    assert grafana["image"].startswith("grafana/grafana:")
    assert "3000:3000" in grafana["ports"]
    grafana_mounts = _mounts(grafana)
    assert _host_path(grafana_mounts, "/etc/grafana/provisioning/datasources/prometheus.yml") == DATASOURCES
    assert _host_path(grafana_mounts, "/etc/grafana/provisioning/dashboards/streampulse.yml") == DASHBOARD_PROVIDERS
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))["providers"]
    for provider in providers:
        assert _host_path(grafana_mounts, provider["options"]["path"]) == DASHBOARD_DIR, provider["name"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_file = _host_path(grafana_mounts, home)
    assert home_file is not None and home_file.exists(), home
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"

    datasource = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"][0]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and any(str(p).endswith(f":{url.port}") for p in prometheus["ports"])
    # $__rate_interval is built on the datasource's scrape interval: it must be Prometheus's.
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


def test_ops_overview_shows_the_anomaly_detector() -> None:
    """On-call sees the detector's open anomalies and scores right under the headline numbers."""
    board = next(board for board in dashboards().values() if board["uid"] == OPS_UID)
    layout = sections(board)
    assert [title for title in layout if title][:1] == ["Anomalies"], "an Anomalies row first, under the headline"
    assert all(panel["type"] == "stat" for panel in layout[""]), "only the headline stats above the anomalies"
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for panel in layout["Anomalies"]:
        for target in panel["targets"]:
            for name in promql_metric_names(target["expr"]):
                by_metric.setdefault(name, []).append(panel)
    assert {ANOMALY_ACTIVE, ANOMALY_SCORE, ANOMALIES_OPENED} <= set(by_metric), sorted(by_metric)

    # The open anomalies, one row per series and place with its severity: what the alerts name.
    listed = [
        panel
        for panel in by_metric[ANOMALY_ACTIVE]
        if panel["type"] in ("table", "state-timeline")
        and any(
            all(label in target["expr"] for label in ("series", "country", "device_type", "severity"))
            for target in panel["targets"]
        )
    ]
    assert listed, "no table or state timeline of the open anomalies by series, country, device type, severity"

    # The scores over time, with the level that opens an anomaly marked on both sides.
    charts = [panel for panel in by_metric[ANOMALY_SCORE] if panel["type"] == "timeseries"]
    assert charts, "no time series of the anomaly scores"
    for chart in charts:
        steps = {step["value"] for step in chart["fieldConfig"]["defaults"]["thresholds"]["steps"]}
        assert {-ANOMALY_OPEN_SCORE, ANOMALY_OPEN_SCORE} <= steps, chart["title"]
        assert chart["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off", chart["title"]

    # Every anomaly query but the counter's (it has no country) follows the Country and Device type filters.
    for panel in layout["Anomalies"]:
        for target in panel["targets"]:
            if promql_metric_names(target["expr"]) & {ANOMALY_ACTIVE, ANOMALY_SCORE}:
                assert "$country" in target["expr"] and "$device_type" in target["expr"], panel["title"]


@pytest.mark.parametrize(
    ("expr", "values", "expected"),
    [
        ('rate(x{c=~"$country"}[$__rate_interval])', {"country": ".*"}, 'rate(x{c=~".*"}[1m])'),
        ('x{c=~"${country}", d=~"[[device_type]]"}', {"country": "BR", "device_type": "tv"}, 'x{c=~"BR", d=~"tv"}'),
    ],
)
def test_substitute_replaces_every_variable_form(expr: str, values: dict[str, str], expected: str) -> None:
    assert substitute(expr, values) == expected


def test_window_counters_are_read_as_rates_only() -> None:
    """Counters and the startup histogram only make sense through rate()/increase(): a raw value depends on when
    the process started, and summing raw values over processes or averaging them over time is wrong."""
    names = [f"{spec.name}_total" for spec in WINDOW_COUNTERS] + ["streampulse_startup_seconds_bucket"]
    exprs = [query.expr for query in queries()] + [rule["expr"] for rule in alert_rules()]
    used = set()
    for expr in exprs:
        for name in names:
            raw = len(re.findall(rf"\b{name}\b", expr))
            as_rate = len(re.findall(rf"\b(?:rate|increase)\(\s*{name}\b", expr))
            assert raw == as_rate, f"{name} outside rate()/increase() in: {expr}"
            used |= {name} if raw else set()
    # The dashboards show every MISSION §2 count and ratio from the counters and the histogram.
    for needed in ("play_attempts", "stream_starts", "start_failures", "played_seconds", "rebuffer_seconds"):
        assert f"streampulse_{needed}_total" in used, needed
    assert "streampulse_startup_seconds_bucket" in used
