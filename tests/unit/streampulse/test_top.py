"""`streampulse top`'s frame logic without Redis: which window, which anomalies, how figures print, the keys."""

from __future__ import annotations

import pytest
from rich.console import Console

from settings.errors import ConfigError
from sinks.window_read import StoredWindow
from streampulse.top import parse_where
from streampulse.top_frame import AnomalyRow, CountryRow, Frame, FunnelRow, _shown_window, open_anomalies
from streampulse.top_live import apply_key, parse_filter, resolutions_of
from streampulse.top_view import ViewState, fmt_value, screen, sorted_rows, sparkline

T0 = 1_700_000_000_000


def stored(start_ms: int, end_ms: int, final: bool, watermark_ms: int) -> StoredWindow:
    return StoredWindow(start_ms, end_ms, final, watermark_ms, {})


def test_the_shown_window_is_the_newest_the_watermark_has_passed() -> None:
    windows = [
        stored(T0 + 20_000, T0 + 30_000, False, T0 + 25_000),
        stored(T0 + 10_000, T0 + 20_000, False, T0 + 25_000),
    ]
    assert _shown_window(windows, T0 + 25_000) == (T0 + 10_000, T0 + 20_000, False)


def test_without_a_passed_window_the_newest_final_then_the_newest() -> None:
    assert _shown_window([stored(T0, T0 + 10_000, True, -1)], -1) == (T0, T0 + 10_000, True)
    newest_first = [stored(T0 + 10_000, T0 + 20_000, False, T0), stored(T0, T0 + 10_000, False, T0)]
    assert _shown_window(newest_first, T0) == (T0 + 10_000, T0 + 20_000, False)
    assert _shown_window([], T0) is None  # nothing stored (or expired between the index read and now)


def anomaly(state: str, severity: str, country: str, score: float, opened_ms: int = T0) -> dict[str, object]:
    return {
        "state": state,
        "severity": severity,
        "series": "vsf_rate",
        "country": country,
        "device_type": "tv",
        "score": score,
        "observed": 0.2,
        "expected": 0.02,
        "unit": "ratio",
        "opened_ms": opened_ms,
    }


def test_open_anomalies_leave_out_resolved_ones_and_put_critical_first() -> None:
    docs = [
        anomaly("open", "warning", "BR", 9.0),
        anomaly("resolved", "critical", "BR", 20.0),
        anomaly("escalated", "critical", "US", 6.0),
        anomaly("open", "critical", "all", 7.0),
    ]
    rows = open_anomalies(docs, {})
    assert [(a.country, a.severity) for a in rows] == [("all", "critical"), ("US", "critical"), ("BR", "warning")]
    # A filter keeps its own country and the roll-ups over countries.
    assert [a.country for a in open_anomalies(docs, {"country": "BR"})] == ["all", "BR"]


def test_figures_print_as_the_table_shows_them() -> None:
    assert fmt_value("sps", 12.345) == "12.3"
    assert fmt_value("vsf_rate", 0.05556) == "5.56%"
    assert fmt_value("startup_ms_p90", 2951.6) == "2952"
    assert fmt_value("concurrent_streams", 9423) == "9423"
    assert fmt_value("rebuffer_ratio", None) == "-"


def test_sparkline_scales_to_the_row_and_leaves_gaps_blank() -> None:
    assert sparkline((0.0, 5.0, None, 10.0)) == "▁▅ █"
    assert sparkline((None, 0.0)) == " ▁"


def row(country: str, sps: float | None) -> CountryRow:
    return CountryRow(country, {"sps": sps}, ())


def test_rows_sort_by_a_figure_highest_first_with_no_data_last() -> None:
    rows = [row("BR", 2.0), row("US", None), row("DE", 5.0), row("AU", 2.0)]
    assert [r.country for r in sorted_rows(rows, "sps")] == ["DE", "AU", "BR", "US"]
    assert [r.country for r in sorted_rows(rows, "country")] == ["AU", "BR", "DE", "US"]


def frame() -> Frame:
    return Frame(
        namespace="live",
        resolution="10s",
        where={},
        read_ms=T0 + 31_000,
        window_start_ms=T0,
        window_end_ms=T0 + 10_000,
        final=False,
        countries=[CountryRow("BR", {"sps": 2.5, "vsf_rate": 0.1}, (1.0, 2.5))],
        total={"sps": 2.5, "vsf_rate": 0.1},
        funnel=[FunnelRow(T0, False, {"signups_started": 4, "signups_completed": 1, "signup_completion_ratio": 0.25})],
        anomalies=[AnomalyRow("critical", "vsf_rate", "BR", "tv", 8.2, 0.2, 0.02, "ratio", T0, "open")],
        health={
            "updated_ms": T0 + 30_500,
            "watermark_ms": T0 + 21_000,
            "events_per_second": 301.4,
            "consumer_lag": 12,
            "bad_events_last_minute": 3,
            "late_events_last_minute": 0,
            "kafka_reachable": False,
            "kafka_errors": {"playback-events#0": "all brokers down"},
            "newest_windows": {"1m": {}, "10s": {"start_ms": T0 + 20_000, "end_ms": T0 + 30_000, "final": False}},
        },
    )


def render(state: ViewState, height: int | None = None, width: int = 120) -> str:
    console = Console(width=width, no_color=True, force_terminal=False)
    with console.capture() as capture:
        console.print(screen(frame(), state, height, width if height is not None else None))
    return capture.get()


def test_the_plain_frame_shows_every_pane() -> None:
    text = render(ViewState())
    assert "window 22:13:20–22:13:30 partial  (filling 22:13:40)" in text and "watermark 10 s behind" in text
    assert "consumed 301 ev/s" in text and "lag 12" in text and "bad 3/min" in text
    assert "Kafka unreachable\n  all brokers down" in text
    assert "BR" in text and "10.00%" in text and "▄█" in text
    assert "critical" in text and "BR/tv" in text and "+8.2" in text
    assert "25.00%" in text  # completion ratio in the funnel
    assert "q quit" not in text  # keys only on the live screen


def test_the_live_screen_shows_the_keys_and_the_filter_being_typed() -> None:
    assert "q quit" in render(ViewState(), height=50)
    assert "filter: BR" in render(ViewState(prompt="BR"), height=50)
    assert "this help" in render(ViewState(help=True), height=50)


def test_a_narrow_terminal_drops_the_sparkline_not_the_figures() -> None:
    text = render(ViewState(), height=24, width=80)
    assert "10.00%" in text and "▄█" not in text and "…" not in text.split("open anomalies")[0]


def test_a_stale_health_document_says_the_flow_stopped_publishing() -> None:
    old = frame()
    assert old.health is not None
    old.health["updated_ms"] = T0
    console = Console(width=120, no_color=True, force_terminal=False)
    with console.capture() as capture:
        console.print(screen(old, ViewState()))
    assert "flow last published 31 s ago" in capture.get()


def test_keys_change_the_view_and_q_quits() -> None:
    state, shown = ViewState(), frame()
    assert not apply_key("s", state, shown) and state.sort_key == "vsf_rate"
    assert not apply_key("S", state, shown) and state.sort_key == "sps"
    assert not apply_key("r", state, shown) and state.resolution == "1m"
    assert not apply_key("?", state, shown) and state.help
    assert not apply_key("q", state, shown) and not state.help  # a key closes the help first
    for key in "/br\r":
        apply_key(key, state, shown)
    assert state.where == {"country": "BR"} and state.prompt is None
    for key in "/x\x7fzz\x1b":  # typed, erased, cancelled
        apply_key(key, state, shown)
    assert state.where == {"country": "BR"}
    assert apply_key("q", state, shown)


def test_filters_read_a_country_a_device_or_dim_value() -> None:
    assert parse_filter("br tv") == {"country": "BR", "device_type": "tv"}
    assert parse_filter("country=DE") == {"country": "DE"}
    assert parse_filter("") == {}
    assert parse_filter("cdn=x") is None and parse_filter("brazil") is None


def test_resolutions_come_from_the_health_document_shortest_first() -> None:
    assert resolutions_of(frame()) == ["10s", "1m"]


def test_where_flags_are_checked_at_start() -> None:
    assert parse_where(["country=BR", "device_type=tv"]) == {"country": "BR", "device_type": "tv"}
    with pytest.raises(ConfigError, match="country=BR"):
        parse_where(["title_id=t1"])
