"""Reading a ground-truth document back: one row per (window, country, device_type) cell."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TruthRow:
    """One value of the truth, shaped like a line of `streampulse query --format json`."""

    metric: str
    window_start_ms: int
    window_end_ms: int
    dims: dict[str, str]
    value: int


# Dimensions of the nested metrics, outermost first.
NESTED_DIMS: dict[str, tuple[str, ...]] = {
    "events": ("event_type",),
    "stream_starts": ("cdn",),
    "title_starts": ("title_id",),
    "start_failures": ("error_code",),
    "start_failures_by_cdn": ("cdn",),
    "playback_errors": ("error_code",),
    "signups_started": ("channel",),
    "plans_selected": ("channel", "plan"),
    "payments_submitted": ("payment_method",),
    "signups_completed": ("channel", "plan"),
    "signups_failed": ("channel", "failure_reason"),
    "signups_failed_by_plan": ("plan",),
    "payment_declines": ("payment_method",),
    "new_subscription_value_cents": ("plan", "currency"),
}


def iter_rows(truth: dict[str, Any], resolution: str, section: str = "windows") -> Iterator[TruthRow]:
    """Flatten one resolution (e.g. "10s") of a truth document into rows with all their dimensions.

    `section` is "windows" for everything produced, or "late" for the late events only.
    """
    node = truth[section] if section == "windows" else truth[section]["windows"]
    for window in node[resolution]["windows"]:
        start, end = window["start_ms"], window["end_ms"]
        for cell in window["cells"]:
            base = {"country": cell["country"], "device_type": cell["device_type"]}
            for metric, value in cell.items():
                if metric in ("country", "device_type"):
                    continue
                dims_names = NESTED_DIMS.get(metric, ())
                yield from _flatten(metric, start, end, base, dims_names, value)


def _flatten(
    metric: str, start: int, end: int, dims: dict[str, str], names: tuple[str, ...], value: Any
) -> Iterator[TruthRow]:
    if not names:
        yield TruthRow(metric, start, end, dims, value)
        return
    for key, sub in value.items():
        yield from _flatten(metric, start, end, {**dims, names[0]: key}, names[1:], sub)
