"""`streampulse top` against a real Redis filled by a real flow: the screen shows what `query` answers.

Five minutes of load-generator traffic at a fixed time of day, yesterday (nothing is
"from the future", nothing depends on the hour the test runs at), with one
scripted incident (US TVs rebuffer ten times as often from minute 3 to the
end, so its anomaly is still open), go through real Kafka and `streampulse
run --exit-at-end` into a fresh namespace. Then `top` runs three ways: in a
real terminal (a pseudo-terminal read back as a VT100 screen would show it,
tests/services/terminal.py; quit with `q`), with `--once` (plain table), and
with `--format json`. Each country's SPS and VSF on screen must be `streampulse
query`'s for the window shown, and the incident's anomaly must be in the
anomalies pane.
"""

from __future__ import annotations

import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis

from loadgen.api import generate, produce
from sinks.redis_layout import health_key
from tests.conftest import Stack
from tests.integration.helpers import REPO, own_topics, streampulse, yesterday_at
from tests.services.terminal import Terminal, terminal_env

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
FINE = "2s"
INCIDENT = {
    "name": "us-tv-rebuffer-storm",
    "start": "+180s",
    "duration": "2m",
    "where": {"country": "US", "device_type": "tv"},
    "effect": {"rebuffer_multiplier": 10},
}
# A country row of the table: code, SPS, sparkline, VSF, ... (see streampulse/top_view.py COUNTRY_COLUMNS).
ROW = re.compile(r"^\s*([A-Z]{2})\s+(\d+\.\d)\s.*?\s(\d+\.\d\d)%\s")


@dataclass(frozen=True)
class Filled:
    redis_url: str
    namespace: str


@pytest.fixture(scope="module")
def filled(stack: Stack) -> Filled:
    name = uuid.uuid4().hex[:10]
    # A fixed time of day (21:00 UTC yesterday, as tests/integration/test_anomalies.py): the same traffic, and
    # so the same countries in the newest window, whatever the hour the test runs at.
    start = yesterday_at(21)
    generated = generate(seed=31, start_ms=start, span_ms=5 * MINUTE_MS, rate=300, incidents=[INCIDENT])
    kafka = own_topics(stack.bootstrap, name)
    # Sessions go on past the span; cut inside the traffic so the newest window (the one top shows) is a full one.
    messages = [m for m in generated.messages if m.delivery_ms < start + 5 * MINUTE_MS - 5_000]
    assert produce(messages, kafka)["failed"] == 0
    namespace = f"test-top-{name}"
    result = streampulse(
        "run", "--exit-at-end", "--metrics-port", "0",
        "--kafka-bootstrap", stack.bootstrap, "--playback-topic", kafka.playback_topic,
        "--signup-topic", kafka.signup_topic, "--dead-letter-topic", kafka.dead_letter_topic,
        "--anomalies-topic", kafka.anomalies_topic,
        "--redis-url", stack.redis_url, "--namespace", namespace,
        "--fine-window", FINE, "--coarse-window", "10s", "--allowed-lateness", "2s",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return Filled(stack.redis_url, namespace)


def _connection(filled: Filled) -> list[str]:
    return ["--redis-url", filled.redis_url, "--namespace", filled.namespace, "--resolution", FINE]


def _query(filled: Filled, metric: str, window_start_ms: int) -> dict[str, Any]:
    result = streampulse(
        "query", metric, "--by", "country", "--from", str(window_start_ms), "--to", str(window_start_ms + 1),
        "--format", "json", *_connection(filled),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert rows and all(r["window_start_ms"] == window_start_ms for r in rows)
    return {r["dims"]["country"]: r["value"] for r in rows}


def _json_frame(filled: Filled) -> dict[str, Any]:
    result = streampulse("top", "--format", "json", *_connection(filled))
    assert result.returncode == 0, result.stderr
    frame: dict[str, Any] = orjson.loads(result.stdout)
    assert frame["window_start_ms"] is not None
    return frame


def _screen_rows(text: str) -> dict[str, tuple[float, float]]:
    """Country -> (SPS, VSF as a fraction) as the table prints them."""
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = (float(match.group(2)), float(match.group(3)) / 100)
    return rows


def _assert_rows_equal_query(rows: dict[str, tuple[float, float]], filled: Filled, window_start_ms: int) -> None:
    sps, vsf = _query(filled, "sps", window_start_ms), _query(filled, "vsf_rate", window_start_ms)
    assert set(rows) == set(sps) and len(rows) >= 5, (rows, sps)
    for country, (shown_sps, shown_vsf) in rows.items():
        # As printed: SPS to 0.1, VSF to 0.01 percentage point.
        assert shown_sps == pytest.approx(sps[country], abs=0.051), country
        assert shown_vsf == pytest.approx(vsf[country] or 0.0, abs=0.000051), country


def _assert_incident_shown(text: str) -> None:
    lines = [line for line in text.splitlines() if "rebuffer_ratio" in line and "US/tv" in line]
    assert lines, text
    assert "critical" in lines[0]


def test_the_json_frame_holds_querys_values_and_the_open_anomaly(filled: Filled) -> None:
    frame = _json_frame(filled)
    start = frame["window_start_ms"]
    assert frame["final"] is True  # the run finished: every window is final
    sps, vsf = _query(filled, "sps", start), _query(filled, "vsf_rate", start)
    shown = {row["country"]: row["values"] for row in frame["countries"]}
    # A country with no start in the window has no SPS row in `query` (and "-" on screen).
    assert {c: v["sps"] for c, v in shown.items() if v["sps"] is not None} == sps
    assert {c: v["vsf_rate"] for c, v in shown.items() if v["vsf_rate"] is not None} == vsf
    anomalies = [(a["series"], a["country"], a["device_type"]) for a in frame["anomalies"]]
    assert ("rebuffer_ratio", "US", "tv") in anomalies
    health = frame["health"]
    assert health["events_consumed_total"] > 50_000 and health["kafka_reachable"] is True
    assert health["newest_windows"][FINE]["final"] is True
    assert health["partitions"] == {"finished": 3}
    # The document lives under the namespace, with the retention TTL, like every key the flow writes.
    assert redis.Redis.from_url(filled.redis_url).ttl(health_key(filled.namespace)) > 0


def test_once_prints_the_same_figures_as_query(filled: Filled) -> None:
    result = streampulse("top", "--once", *_connection(filled))
    assert result.returncode == 0, result.stderr
    start = _json_frame(filled)["window_start_ms"]
    _assert_rows_equal_query(_screen_rows(result.stdout), filled, start)
    _assert_incident_shown(result.stdout)
    assert "sign-up funnel" in result.stdout


def test_filtered_by_country_shows_that_country_alone(filled: Filled) -> None:
    result = streampulse("top", "--once", "--where", "country=US", *_connection(filled))
    assert result.returncode == 0, result.stderr
    assert set(_screen_rows(result.stdout)) == {"US"}


def test_top_in_a_real_terminal_shows_querys_figures_and_quits_on_q(filled: Filled) -> None:
    top = [sys.executable, "-m", "streampulse.cli", "top", *_connection(filled)]
    with Terminal(top, cwd=REPO, env=terminal_env()) as terminal:
        text = terminal.wait_for("q quit")  # the live view's key line, drawn last
        start = _json_frame(filled)["window_start_ms"]
        _assert_rows_equal_query(_screen_rows(text), filled, start)
        _assert_incident_shown(text)

        # `s` sorts by the next column (VSF); `?` shows the help, any key closes it.
        terminal.send("s")
        terminal.wait_for("VSF ▼")
        terminal.send("?")
        terminal.wait_for("this help")
        terminal.send("x")
        terminal.wait_for("q quit")
        # `/` filters (here to one country), `r` switches to the coarse resolution the flow also writes.
        terminal.send("/", "U", "S", "Enter")
        text = terminal.wait_for("filter country=US")
        assert set(_screen_rows(text)) == {"US"}
        terminal.send("r")
        terminal.wait_for("resolution 10s")

        terminal.send("q")
        assert terminal.wait_exit(timeout_s=15) == 0
