"""How a `Frame` looks: the header, the country table, anomalies and the sign-up funnel, as rich renderables.

The live screen and the plain one-shot frame (`--once`, or stdout not a
terminal) are the same renderables: the one-shot is printed without colour,
so what a script or a test reads is what a person sees.

rich, not textual: `top` redraws a few tables once a second and reads single
keys, which rich's `Live` and the standard library's termios cover. Measured
on this project's machine: importing rich's Live/Table/Console adds about
0.1 s to the start and brings 3 small packages (16 MB with pygments);
textual's App and widgets add about 0.55 s and 7 packages (26 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from streampulse.top_frame import COUNTRY_METRICS, AnomalyRow, CountryRow, Frame, Value

# Column titles of the country table, in COUNTRY_METRICS order after the country itself.
COUNTRY_COLUMNS: dict[str, str] = {
    "country": "country",
    "sps": "SPS",
    "vsf_rate": "VSF",
    "rebuffer_ratio": "rebuf",
    "startup_ms_p50": "p50 ms",
    "startup_ms_p90": "p90 ms",
    "playback_errors": "errors",
    "concurrent_streams": "streams",
}
SORT_KEYS: tuple[str, ...] = tuple(COUNTRY_COLUMNS)
SPARK = "▁▂▃▄▅▆▇█"
# Narrower than this, the country table drops the sparkline rather than cut the figures short.
SPARKLINE_MIN_WIDTH = 100
STALE_HEALTH_MS = 10_000  # a health document older than this means the flow is not publishing
KEYS_LINE = "q quit  s sort  / filter  r resolution  ? help"
HELP = """\
q        quit (Ctrl-C too)
s        sort the country table by the next column (S: the previous one)
/        filter: type a country (BR), a device type (tv) or DIM=VALUE; Enter applies, empty clears, Esc cancels
r        switch the window resolution (e.g. 10s <-> 1m)
?        this help (any key closes it)
"""


@dataclass
class ViewState:
    """What the person chose: sort column, filter, resolution, help or a filter being typed."""

    sort_key: str = "sps"
    where: dict[str, str] = field(default_factory=dict)
    resolution: str = "10s"
    help: bool = False
    prompt: str | None = None  # the filter being typed, while `/` is open


def fmt_value(metric: str, value: Value) -> str:
    """One figure as the tables show it (and the tests read it back)."""
    if value is None:
        return "-"
    if metric in ("vsf_rate", "rebuffer_ratio", "signup_completion_ratio", "payment_failure_rate"):
        return f"{value * 100:.2f}%"
    if metric == "sps":
        return f"{value:.1f}"
    if metric.startswith("startup_ms"):
        return f"{value:.0f}"  # the column says ms
    return str(int(value))


def sparkline(values: tuple[Value, ...]) -> str:
    """One character per window, scaled to the row's own highest value; blank where there is no data."""
    present = [v for v in values if v is not None]
    high = max(present, default=0)
    if not high:
        return "".join(" " if v is None else SPARK[0] for v in values)
    return "".join(
        " " if v is None else SPARK[min(int(v / high * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in values
    )


def utc(ms: int, seconds: bool = True) -> str:
    """Epoch milliseconds as UTC wall-clock time."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S" if seconds else "%H:%M")


def sorted_rows(rows: list[CountryRow], sort_key: str) -> list[CountryRow]:
    """Countries ascending by name, or by a figure, highest first (no data last)."""
    if sort_key == "country":
        return sorted(rows, key=lambda r: r.country)
    return sorted(rows, key=lambda r: (r.values.get(sort_key) is None, -(r.values.get(sort_key) or 0), r.country))


def _ago(ms: int) -> str:
    seconds = max(ms, 0) / 1000
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def header(frame: Frame) -> Text:
    """Newest window, watermark delay, throughput, lag, bad and late events, Redis and Kafka."""
    text = Text()
    text.append("streampulse top", style="bold")
    text.append(f"  namespace {frame.namespace}  resolution {frame.resolution}")
    if frame.where:
        text.append("  filter " + " ".join(f"{d}={v}" for d, v in sorted(frame.where.items())), style="cyan")
    text.append(f"  {utc(frame.read_ms)} UTC\n")
    if frame.redis_error:
        text.append("Redis: unreachable ", style="bold red")
        text.append(frame.redis_error)
        return text
    if frame.window_start_ms is None:
        text.append("window: none stored yet at this resolution")
    else:
        text.append(f"window {utc(frame.window_start_ms)}–{utc(frame.window_end_ms or 0)} ")
        text.append("final" if frame.final else "partial", style="green" if frame.final else "yellow")
    health = frame.health
    if health is None:
        text.append("   Redis: ok   flow health: no document (is a flow writing this namespace?)", style="yellow")
        return text
    newest = (health.get("newest_windows") or {}).get(frame.resolution)
    if newest and newest.get("start_ms") != frame.window_start_ms:
        # The window being filled now: shown in the tables once the watermark has passed its end.
        text.append(f"  (filling {utc(newest['start_ms'])})")
    watermark = int(health.get("watermark_ms", -1))
    delay = "-" if watermark < 0 else _ago(frame.read_ms - watermark)
    text.append(f"   watermark {delay} behind\n")
    lag = health.get("consumer_lag")
    text.append(f"consumed {health.get('events_per_second', 0):.0f} ev/s   lag {'-' if lag is None else lag}   ")
    bad, late = int(health.get("bad_events_last_minute", 0)), int(health.get("late_events_last_minute", 0))
    text.append(f"bad {bad}/min", style="red" if bad else "")
    text.append("   ")
    text.append(f"late {late}/min", style="yellow" if late else "")
    text.append("   Redis ")
    text.append("ok", style="green")
    text.append("   Kafka ")
    if health.get("kafka_reachable", True):
        text.append("ok", style="green")
    else:
        errors = health.get("kafka_errors") or {}
        text.append("unreachable", style="bold red")
        text.append(f"\n  {next(iter(errors.items()), ('', '?'))[1]}"[:200], style="red")
    age = frame.read_ms - int(health.get("updated_ms", 0))
    if age > STALE_HEALTH_MS:
        text.append(f"\nflow last published {_ago(age)} ago: is it running?", style="bold red")
    return text


def country_table(frame: Frame, sort_key: str, max_rows: int | None = None, spark: bool = True) -> Table:
    """The figures per country in the shown window, with an all-countries row first (and SPS sparklines)."""
    state = "final" if frame.final else "partial"
    title = (
        "by country" if frame.window_start_ms is None else f"by country, window {utc(frame.window_start_ms)} ({state})"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for key, name in COUNTRY_COLUMNS.items():
        marker = " ▼" if key == sort_key else ""
        table.add_column(name + marker, justify="left" if key == "country" else "right", no_wrap=True)
        if key == "sps" and spark:
            table.add_column(f"last {len(frame.countries[0].sps_history) if frame.countries else 0}", no_wrap=True)
    if frame.window_start_ms is not None:
        table.add_row("all", *_cells(frame.total, None, spark), style="bold")
    rows = sorted_rows(frame.countries, sort_key)
    for row in rows[:max_rows] if max_rows is not None else rows:
        table.add_row(row.country, *_cells(row.values, row.sps_history, spark))
    if max_rows is not None and len(rows) > max_rows:
        table.caption = f"{len(rows) - max_rows} more countries below (a taller terminal, or / to filter)"
    return table


def _cells(values: dict[str, Value], history: tuple[Value, ...] | None, spark: bool) -> list[str]:
    cells = []
    for metric in COUNTRY_METRICS:
        cells.append(fmt_value(metric, values.get(metric)))
        if metric == "sps" and spark:
            cells.append(sparkline(history) if history is not None else "")
    return cells


def _observed(anomaly: AnomalyRow, value: float | None) -> str:
    if value is None:
        return "-"
    if anomaly.unit == "ratio":
        return f"{value * 100:.2f}%"
    return f"{value:.3g} {anomaly.unit}"


def anomalies_table(frame: Frame, max_rows: int | None = None) -> Table:
    """The open anomalies, worst first."""
    table = Table(
        title=f"open anomalies ({len(frame.anomalies)})", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False
    )
    for name in ("severity", "series", "scope", "score", "observed", "expected", "open since"):
        table.add_column(name, no_wrap=True, justify="right" if name in ("score", "observed", "expected") else "left")
    for anomaly in frame.anomalies[:max_rows]:
        style = "bold red" if anomaly.severity == "critical" else "yellow"
        table.add_row(
            Text(anomaly.severity, style=style),
            anomaly.series,
            f"{anomaly.country}/{anomaly.device_type}",
            f"{anomaly.score:+.1f}",
            _observed(anomaly, anomaly.observed),
            _observed(anomaly, anomaly.expected),
            utc(anomaly.opened_ms),
        )
    if not frame.anomalies:
        table.add_row("none", "", "", "", "", "", "")
    return table


def funnel_table(frame: Frame) -> Table:
    """The sign-up funnel of the newest windows."""
    table = Table(title="sign-up funnel", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("window", "started", "plan", "payment", "done", "completion", "pay fail"):
        table.add_column(name, no_wrap=True, justify="left" if name == "window" else "right")
    for row in frame.funnel:
        v = row.values
        table.add_row(
            f"{utc(row.window_start_ms)}{'' if row.final else ' partial'}",
            *(fmt_value(m, v.get(m)) for m in ("signups_started", "plans_selected", "payments_submitted")),
            fmt_value("signups_completed", v.get("signups_completed")),
            fmt_value("signup_completion_ratio", v.get("signup_completion_ratio")),
            fmt_value("payment_failure_rate", v.get("payment_failure_rate")),
        )
    return table


def screen(frame: Frame, state: ViewState, height: int | None = None, width: int | None = None) -> RenderableType:
    """The whole frame; with `height` (live), the tables are cut to fit the terminal and the keys shown."""
    if state.help:
        return Group(header(frame), Text("\nkeys\n", style="bold"), Text(HELP))
    if frame.redis_error:
        return header(frame)
    anomalies = min(len(frame.anomalies), 5)
    # Lines the other parts take: the header's, each table's title, column names and rule (3), the all-countries
    # row and the "more below" caption (2), the anomaly and funnel rows, the key line (1).
    top = header(frame)
    fixed = len(top.plain.splitlines()) + 3 + 2 + 3 + max(anomalies, 1) + 3 + len(frame.funnel) + 1
    max_rows = None if height is None else max(height - fixed, 3)
    parts: list[RenderableType] = [
        top,
        country_table(frame, state.sort_key, max_rows, spark=width is None or width >= SPARKLINE_MIN_WIDTH),
        anomalies_table(frame, 5 if height is not None else None),
        funnel_table(frame),
    ]
    if height is not None:  # live: the keys, or the filter being typed
        parts.append(Text(KEYS_LINE if state.prompt is None else f"filter: {state.prompt}▏  (Enter apply, Esc cancel)"))
    return Group(*parts)
