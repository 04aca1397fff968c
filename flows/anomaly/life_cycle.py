"""An anomaly's life: opened after enough alarms, escalated, closed, then a cooldown.

It closes as resolved once quiet, or as accepted (the new normal) once open for `accept_after` windows.
"""

from __future__ import annotations

from flows.anomaly.config import DetectorConfig
from flows.anomaly.events import AnomalyEvent, OpenAnomaly, State
from flows.anomaly.scoring import SeriesView, Verdict
from flows.anomaly.series import REBUFFER, Direction, SeriesSpec, Severity, metric_value


def life_cycle(
    config: DetectorConfig,
    series: SeriesView,
    index: int,
    spec: SeriesSpec,
    verdict: Verdict | None,
    start_ms: int,
    end_ms: int,
    window_s: float,
    events: list[AnomalyEvent],
    group: tuple[str, str],
) -> None:
    """Move one series' anomaly on by one window: open, escalate or resolve it, appending what changed."""
    alarm = verdict.alarm if verdict is not None else None
    series.hits = ((series.hits << 1) | (alarm is not None)) & ((1 << config.confirm_m) - 1)
    if series.cooldown > 0:
        series.cooldown -= 1
    opened = series.open
    if opened is None:
        if verdict is None or alarm is None or series.cooldown > 0:
            return
        if bin(series.hits).count("1") < config.confirm_n:
            return
        onset = end_ms - verdict.horizon * (end_ms - start_ms)
        series.open = opened = OpenAnomaly(
            id=f"{spec.id}:{group[0]}:{group[1]}:{alarm}:{onset}",
            direction=alarm,
            severity=severity(spec, alarm, verdict.severity_effect),
            onset_ms=onset,
            opened_ms=end_ms,
            horizon=verdict.horizon,
        )
        keep_peak(opened, verdict)
        series.quiet = 0
        events.append(anomaly_event(series, index, spec, opened, "open", start_ms, end_ms, window_s, group))
        return
    direction = opened.direction
    # Quiet: no horizon it is judged on (see resolve_horizon) beyond z_resolve in its direction, or no
    # baseline to judge by.
    if verdict is None:
        still = False
    elif direction == "up":
        still = verdict.quiet_up >= config.z_resolve
    else:
        still = verdict.quiet_down <= -config.z_resolve
    series.quiet = 0 if still else series.quiet + 1
    if verdict is not None and alarm == direction:
        if abs(verdict.alarm_score) > abs(opened.peak):
            keep_peak(opened, verdict)
        if opened.severity != "critical" and severity(spec, direction, verdict.severity_effect) == "critical":
            opened.severity = "critical"
            keep_peak(opened, verdict)
            events.append(anomaly_event(series, index, spec, opened, "escalated", start_ms, end_ms, window_s, group))
    # Open this long, it is how the series is now (a CDN degraded for good, a new app version): it closes as
    # accepted and the baseline adopts its level, so no anomaly outlives its cause by more than this.
    accepted = (end_ms - opened.opened_ms) >= config.accept_after * (end_ms - start_ms)
    if series.quiet >= config.resolve_after or accepted:
        closing: State = "resolved" if series.quiet >= config.resolve_after else "accepted"
        events.append(anomaly_event(series, index, spec, opened, closing, start_ms, end_ms, window_s, group))
        series.accepted = closing == "accepted"
        series.open = None
        series.quiet = 0
        series.hits = 0
        series.cooldown = config.cooldown


def keep_peak(opened: OpenAnomaly, verdict: Verdict) -> None:
    """Remember this verdict as the anomaly's strongest evidence."""
    opened.peak, opened.peak_k, opened.peak_n = verdict.alarm_score, verdict.k, verdict.n
    opened.peak_expected, opened.peak_aux, opened.peak_horizon = verdict.expected, verdict.aux, verdict.horizon


def severity(spec: SeriesSpec, direction: Direction, effect: float) -> Severity:
    """Critical once the effect (judged with its margin: Verdict.severity_effect) passes the critical bound."""
    if direction == "up":
        return "critical" if effect >= spec.critical_up else "warning"
    return "critical" if effect <= spec.critical_down else "warning"


def anomaly_event(
    series: SeriesView,
    index: int,
    spec: SeriesSpec,
    opened: OpenAnomaly,
    state: State,
    start_ms: int,
    end_ms: int,
    window_s: float,
    group: tuple[str, str],
) -> AnomalyEvent:
    """The event of an anomaly's change of `state`, with the numbers of its strongest evidence so far."""
    k, n, mean, horizon = opened.peak_k, opened.peak_n, opened.peak_expected, opened.peak_horizon
    if index == REBUFFER:
        # The ratio itself: Σrebuffer_ms / (Σplayed_ms + Σrebuffer_ms) over the horizon, against the baseline's.
        aux = opened.peak_aux
        observed = aux / (n + aux) if n + aux > 0 else None
        expected = series.d_num / series.d if series.d > 0 else None
    else:
        observed = metric_value(index, k, n, window_s, horizon)
        expected = metric_value(index, mean, n, window_s, horizon)
    return AnomalyEvent(
        anomaly_id=opened.id,
        state=state,
        series=spec.id,
        country=group[0],
        device_type=group[1],
        direction=opened.direction,
        severity=opened.severity,
        score=round(opened.peak, 3),
        window_start_ms=start_ms,
        window_end_ms=end_ms,
        onset_ms=opened.onset_ms,
        opened_ms=opened.opened_ms,
        resolved_ms=end_ms if state in ("resolved", "accepted") else None,
        observed=_round(observed),
        expected=_round(expected),
        observed_count=round(k, 3),
        expected_count=round(mean, 3),
        horizon_windows=horizon,
        unit=spec.unit,
    )


# --- state --------------------------------------------------------------------------------------


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")
