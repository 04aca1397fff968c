"""Every dashboard query and alert rule, run by a real Prometheus scraping a real flow over real Kafka and Redis.

Load-generator traffic (with malformed messages, duplicates and late events) and a last stretch of
hand-made events that holds every event type in every window go to Kafka; `streampulse run` serves
/metrics; Debian's `prometheus` binary (`apt-get install prometheus`) scrapes it every second with
the shipped config and alert rules. Once the newest final window has been scraped a few times, each
panel's PromQL (template variables set to `.*`, then to a real value) and each alert expression is
sent to Prometheus's HTTP API. Then a last stretch of traffic in a coarse window of its own: over a range
holding just it, the dashboard's all-countries VSF and rebuffer ratio equal `streampulse query` for that window
within 1 %, and its p90 startup lies in the histogram bucket of `query`'s p90.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import yaml

from flows.window_counters import STARTUP_BUCKETS_MS
from loadgen.api import generate
from loadgen.api import produce as produce_generated
from loadgen.config import FaultConfig, ModelParams
from settings.kafka import KafkaSettings
from streampulse.processes import ManagedProcess, free_port
from tests.conftest import Stack
from tests.integration.helpers import REPO, create_topics, produce, streampulse
from tests.services.binaries import missing_prometheus_message, prometheus_tool
from tests.unit.test_alert_rules import (
    ALERTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    declared_metric_names,
    promql_metric_names,
)
from tests.unit.test_deploy_grafana import Query, dashboards, panels, queries, substitute, variable_queries

pytestmark = pytest.mark.integration
T = TypeVar("T")
Keyed = list[tuple[int, dict[str, object]]]  # (partition, event): a session or funnel stays on one partition

PARTITIONS = 2
FINE_MS = 10_000
LATENESS = "5s"
LATENESS_MS = 5_000
# Hand-made events cover the last BLOCK_MS of event time: the newest final window lies inside it.
BLOCK_MS = 40_000
DEADLINE_S = 90.0
# Queries that may rightly find nothing in a run like this one, with the reason. Matched against
# the expression (a metric name or a piece of PromQL).
MAY_BE_EMPTY = {
    "offset 1d": "the same series a day earlier: this Prometheus is a minute old",
    "streampulse_anomaly_active": "no anomaly opens in a minute of steady traffic",
    "streampulse_anomaly_score": "the detector scores a series only after its warm-up windows",
}


class Prometheus:
    """A real `prometheus` (tests/services/binaries.py) on a free loopback port, scraping one flow."""

    def __init__(self, work_dir: Path, metrics_port: int) -> None:
        found = prometheus_tool("prometheus")
        if found is None:
            pytest.fail(missing_prometheus_message("prometheus"))
        executable = found.path
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / path) for path in config["rule_files"]]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        config_path = work_dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            "prometheus",
            [
                executable,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            log_path=work_dir / "prometheus.log",
            cwd=work_dir,
        )
        self.process.wait_until(self._ready, 30, "/-/ready answered")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:  # refused, or 503 while the TSDB starts
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: the `data` of a successful answer; fails the test with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        assert body["status"] == "success", f"{params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time; its vector (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.process.stop()


def _playback(event_id: str, event_type: str, time_ms: int, session: int, **fields: object) -> dict[str, object]:
    countries, devices = ("BR", "US", "DE"), ("tv", "mobile", "web")
    return {
        "event_id": event_id,
        "event_type": event_type,
        "event_time_ms": time_ms,
        "country": countries[session % 3],
        "device_type": devices[session // 3 % 3],
        "schema_version": 1,
        "session_id": f"block-{session}",
        "account_id": f"block-account-{session}",
        "title_id": f"title-{session % 7}",
        **fields,
    }


def _signup(event_id: str, event_type: str, time_ms: int, funnel: int, **fields: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "event_time_ms": time_ms,
        "country": ("BR", "US")[funnel % 2],
        "device_type": "web",
        "schema_version": 1,
        "signup_id": f"block-signup-{funnel}",
        "channel": "organic",
        **fields,
    }


def _every_event_type(end_ms: int) -> tuple[Keyed, Keyed]:
    """Each second of [end - BLOCK_MS, end): a session that plays on (rebuffering, switching bitrate), one that
    ends in an error, one that fails to start, a sign-up that completes and one whose payment is declined."""
    playback: Keyed = []
    signup: Keyed = []
    for second, t in enumerate(range(end_ms - BLOCK_MS, end_ms, 1000)):
        playing, failing, not_starting = 3 * second, 3 * second + 1, 3 * second + 2
        sessions = {
            playing: [
                _playback(f"b{playing}-0", "play_attempt", t, playing),
                _playback(f"b{playing}-1", "play_start", t + 100, playing, startup_ms=800 + second, cdn="c1"),
                _playback(f"b{playing}-2", "heartbeat", t + 200, playing, played_ms=1000, bitrate_kbps=4000),
                _playback(f"b{playing}-3", "rebuffer", t + 300, playing, rebuffer_ms=150),
                _playback(
                    f"b{playing}-4", "bitrate_change", t + 400, playing, bitrate_kbps=2500, previous_bitrate_kbps=4000
                ),
            ],
            failing: [
                _playback(f"b{failing}-0", "play_attempt", t + 100, failing),
                _playback(f"b{failing}-1", "play_start", t + 200, failing, startup_ms=1500, cdn="c2"),
                _playback(f"b{failing}-2", "play_error", t + 500, failing, error_code="PE_TEST"),
            ],
            not_starting: [
                _playback(f"b{not_starting}-0", "play_attempt", t + 200, not_starting),
                _playback(f"b{not_starting}-1", "start_failure", t + 600, not_starting, error_code="SF_TEST"),
            ],
        }
        playback += [(session % PARTITIONS, event) for session, events in sessions.items() for event in events]
        completes, declined = 2 * second, 2 * second + 1
        funnels: dict[int, list[dict[str, object]]] = {}
        for funnel in (completes, declined):
            funnels[funnel] = [
                _signup(f"f{funnel}-0", "signup_started", t, funnel),
                _signup(f"f{funnel}-1", "plan_selected", t + 100, funnel, plan="standard"),
                _signup(f"f{funnel}-2", "payment_submitted", t + 200, funnel, plan="standard", payment_method="card"),
            ]
        funnels[completes].append(
            _signup(
                f"f{completes}-3", "signup_completed", t + 300, completes, plan="standard", payment_method="card",
                account_id=f"new-{completes}", price_cents=1299, currency="USD",
            )
        )  # fmt: skip
        funnels[declined].append(
            _signup(f"f{declined}-3", "signup_failed", t + 300, declined, failure_reason="payment_declined")
        )
        signup += [(funnel % PARTITIONS, event) for funnel, events in funnels.items() for event in events]
    return playback, signup


def _produce_traffic(stack: Stack, kafka: KafkaSettings, end_ms: int) -> Keyed:
    """Loadgen traffic up to the last BLOCK_MS, then the hand-made events; returns the hand-made playback events."""
    create_topics(stack.bootstrap, {kafka.playback_topic: PARTITIONS, kafka.signup_topic: PARTITIONS})
    span_ms = 3 * 60_000
    generated = generate(
        seed=31,
        start_ms=end_ms - span_ms,
        span_ms=span_ms - BLOCK_MS,
        rate=100,
        params=ModelParams(diurnal=False),
        faults=FaultConfig(
            jitter_ms=1_000, duplicate_fraction=0.02, malformed_fraction=0.01, late_fraction=0.01, late_by_ms=60_000
        ),
        with_truth=False,
    )
    assert produce_generated(generated.messages, kafka)["failed"] == 0
    playback, signup = _every_event_type(end_ms)
    for topic, key, events in (
        (kafka.playback_topic, "session_id", playback),
        (kafka.signup_topic, "signup_id", signup),
    ):
        produce(stack.bootstrap, topic, [(p, str(e[key]).encode(), orjson.dumps(e)) for p, e in events])
    return playback


def _trickle(stack: Stack, kafka: KafkaSettings, playback: Keyed) -> None:
    """Bad messages and re-deliveries of final windows' events: counters move while the windows stay as they are."""
    messages: list[tuple[int, bytes | None, bytes]] = [(p, None, b"{not json") for p in range(PARTITIONS)]
    messages += [(p, None, b"[1, 2]") for p in range(PARTITIONS)]
    messages += [(p, str(event["session_id"]).encode(), orjson.dumps(event)) for p, event in playback[:20]]
    produce(stack.bootstrap, kafka.playback_topic, messages)


def _wait_for(what: str, check: Callable[[], T | None], processes: list[ManagedProcess]) -> T:
    """Poll `check` until it returns something truthy; fail with the processes' logs if they die or time runs out."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for process in processes:
            assert process.alive(), f"{process.name} exited; its log ends with:\n{process.log_tail()}"
        result = check()
        if result:
            return result
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in processes)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


# The stretch the dashboard is compared with `streampulse query` on: after everything else, inside one coarse
# window of its own, only the label values the first hand-made stretch already created (a counter series born
# inside a range loses its first value to `increase()`).
CHECK_SECONDS = 30
COARSE_MS = 60_000


def _checked_stretch(start_ms: int) -> Keyed:
    """Each second from `start_ms`: a BR session that plays and rebuffers, a US one that starts and errors, a DE
    attempt that fails to start, and every third second one more DE failure; startup times spread over seconds."""
    playback: Keyed = []
    for second in range(CHECK_SECONDS):
        t = start_ms + second * 1000
        playing, failing, not_starting = (3 * (1000 + second) + k for k in range(3))
        extra = 3 * (2000 + second) + 2
        events = [
            (playing, _playback(f"c{playing}-0", "play_attempt", t, playing)),
            (playing, _playback(f"c{playing}-1", "play_start", t + 100, playing, startup_ms=700 + 37 * second,
                                cdn="c1")),
            (playing, _playback(f"c{playing}-2", "heartbeat", t + 200, playing, played_ms=1000 + 10 * second,
                                bitrate_kbps=4000)),
            (playing, _playback(f"c{playing}-3", "rebuffer", t + 300, playing, rebuffer_ms=50 + second)),
            (failing, _playback(f"c{failing}-0", "play_attempt", t + 100, failing)),
            (failing, _playback(f"c{failing}-1", "play_start", t + 200, failing, startup_ms=1500 + 50 * second,
                                cdn="c2")),
            (not_starting, _playback(f"c{not_starting}-0", "play_attempt", t + 200, not_starting)),
            (not_starting, _playback(f"c{not_starting}-1", "start_failure", t + 600, not_starting,
                                     error_code="SF_TEST")),
        ]  # fmt: skip
        if second % 3 == 0:
            events += [
                (extra, _playback(f"c{extra}-0", "play_attempt", t + 300, extra)),
                (extra, _playback(f"c{extra}-1", "start_failure", t + 700, extra, error_code="SF_TEST")),
            ]
        playback += [(session % PARTITIONS, event) for session, event in events]
    return playback


def _panel_expr(uid: str, title: str, legend: str = "") -> str:
    """The PromQL of one dashboard panel's target (by its legend when the panel has several)."""
    (board,) = [board for board in dashboards().values() if board["uid"] == uid]
    (panel,) = [panel for panel in panels(board) if panel["title"] == title]
    (target,) = [t for t in panel["targets"] if len(panel["targets"]) == 1 or t.get("legendFormat") == legend]
    return str(target["expr"])


def _query_all(redis_url: str, namespace: str, metric: str, window_start_ms: int) -> float:
    """`streampulse query METRIC` for one coarse window, every country and device together."""
    result = streampulse(
        "query", metric, "--resolution", "1m", "--from", str(window_start_ms), "--to", str(window_start_ms + 1),
        "--format", "json", "--redis-url", redis_url, "--namespace", namespace,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = [orjson.loads(line) for line in result.stdout.splitlines()]
    return float(row["value"])


def _bucket_around(seconds: float) -> tuple[float, float]:
    """The startup histogram's bucket holding `seconds`: what histogram_quantile interpolates inside."""
    bounds = [0.0, *(ms / 1000 for ms in STARTUP_BUCKETS_MS), float("inf")]
    upper = next(i for i, bound in enumerate(bounds) if bound >= seconds)
    return bounds[max(upper - 1, 0)], bounds[upper]


def _dashboard_equals_query(
    prometheus: Prometheus, stack: Stack, kafka: KafkaSettings, namespace: str, after_ms: int, running: list[Any]
) -> None:
    """Traffic in one coarse window of its own, then the all-countries VSF, rebuffer ratio and p90 startup of the
    dashboard over a range holding just that traffic against `streampulse query` for that window."""
    window_ms = after_ms + COARSE_MS - after_ms % COARSE_MS
    stretch = _checked_stretch(window_ms)
    # What the stretch adds to a counter of each kind; some reach the windows only when their session's window
    # closes or its partition goes idle, so all of them are waited for.
    grows = {
        "streampulse_play_attempts_total": sum(1 for _, e in stretch if e["event_type"] == "play_attempt"),
        "streampulse_startup_seconds_count": sum(1 for _, e in stretch if e["event_type"] == "play_start"),
        "streampulse_rebuffers_total": sum(1 for _, e in stretch if e["event_type"] == "rebuffer"),
        "streampulse_heartbeat_played_seconds_total": sum(
            int(str(e["played_ms"])) for _, e in stretch if e["event_type"] == "heartbeat"
        )
        / 1000,
    }
    before = {name: float(prometheus.query(f"sum({name})")[0]["value"][1]) for name in grows}
    time.sleep(2)  # a scrape between `before` and the first new count
    range_start_s = time.time()
    produce(stack.bootstrap, kafka.playback_topic, [(p, str(e["session_id"]).encode(), orjson.dumps(e))
                                                    for p, e in stretch])  # fmt: skip
    for name, grown in grows.items():
        reached = f"sum({name}) >= {before[name] + grown - 1e-6}"
        _wait_for(f"the checked stretch in {name}", partial(prometheus.query, reached), running)
    time.sleep(2)  # scrapes of the counters standing still again: the range ends after the last growth
    # Every panel evaluated at the same moment, over a range holding the whole stretch and nothing else.
    at_s = time.time()
    values = {"country": ".*", "device_type": ".*", "__rate_interval": f"{int(at_s - range_start_s) + 2}s"}

    def dashboard(uid: str, title: str, legend: str = "") -> float:
        expr = substitute(_panel_expr(uid, title, legend), values)
        (sample,) = prometheus.api("query", query=expr, time=str(at_s))["result"]
        return float(sample["value"][1])

    for title, metric in (("Video start failures", "vsf_rate"), ("Rebuffer ratio", "rebuffer_ratio")):
        shown, stored = dashboard("streampulse-ops", title), _query_all(stack.redis_url, namespace, metric, window_ms)
        assert abs(shown - stored) <= 0.01 * stored, (title, shown, stored)
    p90 = dashboard("streampulse-playback", "Startup time percentiles", "p90")
    stored_p90 = _query_all(stack.redis_url, namespace, "startup_ms_p90", window_ms) / 1000
    low, high = _bucket_around(stored_p90)
    assert low <= p90 <= high, (p90, stored_p90)


def _may_be_empty(query: Query) -> bool:
    return any(key in query.expr for key in MAY_BE_EMPTY)


def test_every_dashboard_and_alert_query_works_on_a_live_flow(stack: Stack, unique_name: str, tmp_path: Path) -> None:
    kafka = KafkaSettings(
        bootstrap=stack.bootstrap,
        playback_topic=f"playback-{unique_name}",
        signup_topic=f"signup-{unique_name}",
        dead_letter_topic=f"dead-letter-{unique_name}",
    )
    now_ms = int(time.time() * 1000)
    end_ms = now_ms - now_ms % FINE_MS
    block = _produce_traffic(stack, kafka, end_ms)

    metrics_port = free_port()
    flow = ManagedProcess(
        "streampulse run",
        [
            sys.executable, "-m", "streampulse.cli", "run", "--metrics-port", str(metrics_port),
            "--kafka-bootstrap", kafka.bootstrap, "--playback-topic", kafka.playback_topic,
            "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
            "--redis-url", stack.redis_url, "--namespace", f"dashboards-{unique_name}",
            "--fine-window", "10s", "--coarse-window", "1m", "--allowed-lateness", LATENESS,
        ],
        log_path=tmp_path / "flow.log",
        cwd=REPO,
    )  # fmt: skip
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus(tmp_path, metrics_port)
        running = [flow, prometheus.process]
        # Every partition has read everything: the watermark is the newest event time, and the newest
        # final window is the last one that ends LATENESS before it, inside the hand-made stretch.
        newest_final_end_s = (end_ms - LATENESS_MS - (end_ms - LATENESS_MS) % FINE_MS) / 1000
        _wait_for(
            "the newest final window in Prometheus",
            lambda: prometheus.query(
                f'max(streampulse_final_window_end_timestamp_seconds{{resolution="10s"}}) >= {newest_final_end_s}'
            ),
            running,
        )
        # rate() needs two scrapes of a counter: wait until every counter and histogram series has three.
        counters = sorted(name for name in declared_metric_names() if name.endswith(("_total", "_bucket")))
        _wait_for(
            "three scrapes of every counter",
            lambda: not any(prometheus.query(f"count_over_time({name}[1m]) < 3") for name in counters),
            running,
        )
        # Live traffic after that, so that rates are not all zero.
        _trickle(stack, kafka, block)
        _wait_for(
            "the trickle to be consumed and scraped",
            lambda: prometheus.query("sum(increase(streampulse_dead_letters_written_total[1m])) > 0"),
            running,
        )

        empty: list[Query] = []
        for query in queries():
            result = prometheus.query(substitute(query.expr, {"country": ".*", "device_type": ".*", "instance": ".*"}))
            if not result and not _may_be_empty(query):
                empty.append(query)
        assert not empty, "dashboard queries without data:\n" + "\n".join(map(str, empty))

        # The template variables' own queries, then every panel with a value they offer.
        chosen: dict[str, str] = {}
        for board in dashboards().values():
            for name, (selector, label) in variable_queries(board).items():
                values = prometheus.api(f"label/{label}/values", **{"match[]": selector or ""})
                assert values, f"{board['uid']} ${name}: no values"
                chosen[name] = values[0]
        for query in queries():
            prometheus.query(substitute(query.expr, chosen))

        for rule in alert_rules():
            prometheus.query(rule["expr"])

        def rules_evaluated() -> list[dict[str, Any]] | None:
            assert prometheus is not None
            groups = prometheus.api("rules", type="alert")["groups"]
            loaded: list[dict[str, Any]] = [rule for group in groups for rule in group["rules"]]
            return loaded if loaded and all(rule["health"] != "unknown" for rule in loaded) else None

        loaded = _wait_for("every alert rule to be evaluated", rules_evaluated, running)
        assert {rule["name"] for rule in loaded} == {rule["alert"] for rule in alert_rules()}
        unhealthy = {rule["name"]: rule.get("lastError") for rule in loaded if rule["health"] != "ok"}
        assert not unhealthy
        assert {group["file"] for group in prometheus.api("rules")["groups"]} == {str(ALERTS)}
        # The rules select the scrape job by name: it must be the one Prometheus scrapes.
        assert prometheus.query('up{job="streampulse"} == 1')

        _dashboard_equals_query(prometheus, stack, kafka, f"dashboards-{unique_name}", end_ms, running)
    finally:
        if prometheus is not None:
            prometheus.stop()
        flow.stop()


def test_may_be_empty_names_real_metrics() -> None:
    """The exemptions above stay honest: each names an exported metric or PromQL a dashboard really uses."""
    exprs = [query.expr for query in queries()]
    for key in MAY_BE_EMPTY:
        assert any(key in expr for expr in exprs), key
        if key.startswith("streampulse_"):
            assert any(key in promql_metric_names(expr) for expr in exprs), key
