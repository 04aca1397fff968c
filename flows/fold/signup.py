"""How sign-up events add to the partial aggregates of their window.

A sign-up's events share its `signup_id` key, hence a partition: the plan
and payment method of a funnel are remembered here from `plan_selected` and
`payment_submitted`, so a `signup_failed` (which carries neither) is
attributed to them — that is what the payment failure rate by
`payment_method` needs. A funnel's memory is freed when it completes or
fails, or after `signup_timeout_ms` of event time without news. A failure
whose funnel we never saw is attributed to `unknown`.
"""

from __future__ import annotations

from typing import Any

from flows.fold.partition_aggregator import Handler
from flows.partials import Partials, RowLayout, Rows

UNKNOWN = "unknown"

EVENT_TYPES = ("signup_started", "plan_selected", "payment_submitted", "signup_completed", "signup_failed")
# Every sign-up aggregate has a dimension beyond country and device: rows only count events by type.
ROW_LAYOUT: RowLayout = tuple((("events", (t,)),) for t in EVENT_TYPES)

# A funnel in memory: [plan, payment_method, last event time].
Funnel = list[Any]


class SignupFolder:
    """Folds one partition's sign-up events; holds its open funnels."""

    def __init__(self, signup_timeout_ms: int) -> None:
        self.row_layout = ROW_LAYOUT
        self.event_slots = {t: i for i, t in enumerate(EVENT_TYPES)}
        self._timeout_ms = signup_timeout_ms
        self._funnels: dict[str, Funnel] = {}
        self.handlers: dict[str, Handler] = {
            "signup_started": self._started,
            "plan_selected": self._plan_selected,
            "payment_submitted": self._payment_submitted,
            "signup_completed": self._completed,
            "signup_failed": self._failed,
        }

    @staticmethod
    def _add(acc: Partials, key: tuple[int | str, ...], value: int) -> None:
        acc[key] = acc.get(key, 0) + value

    def _funnel(self, e: Any) -> Funnel:
        funnel = self._funnels.get(e.signup_id)
        if funnel is None or funnel[2] < e.event_time_ms - self._timeout_ms:
            funnel = self._funnels[e.signup_id] = [UNKNOWN, UNKNOWN, e.event_time_ms]
        funnel[2] = max(funnel[2], e.event_time_ms)
        return funnel

    def _started(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        self._add(acc, (w, "signups_started", e.country, e.device_type, e.channel), 1)
        self._funnel(e)

    def _plan_selected(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        self._add(acc, (w, "plans_selected", e.country, e.device_type, e.channel, e.plan), 1)
        self._funnel(e)[0] = e.plan

    def _payment_submitted(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        key = (w, "payments_submitted", e.country, e.device_type, e.channel, e.plan, e.payment_method)
        self._add(acc, key, 1)
        funnel = self._funnel(e)
        funnel[0], funnel[1] = e.plan, e.payment_method

    def _completed(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        country, device = e.country, e.device_type
        self._add(acc, (w, "signups_completed", country, device, e.channel, e.plan, e.payment_method), 1)
        self._add(acc, (w, "new_subscription_value_cents", country, device, e.plan, e.currency), e.price_cents)
        self._funnels.pop(e.signup_id, None)

    def _failed(self, e: Any, w: int, row: list[int], rows: Rows, acc: Partials, on_time: bool) -> None:
        funnel = self._funnels.pop(e.signup_id, None)
        if funnel is not None and funnel[2] < e.event_time_ms - self._timeout_ms:
            funnel = None  # expired: whether `forget` has freed it yet depends on batch timing, not on the events
        plan, method = (funnel[0], funnel[1]) if funnel is not None else (UNKNOWN, UNKNOWN)
        country, device = e.country, e.device_type
        self._add(acc, (w, "signups_failed", country, device, e.channel, plan, e.failure_reason), 1)
        if e.failure_reason == "payment_declined":
            self._add(acc, (w, "payment_declines", country, device, e.channel, plan, method), 1)

    def snapshot(self) -> dict[str, Funnel]:
        """The open funnels, copied."""
        return {signup_id: list(funnel) for signup_id, funnel in self._funnels.items()}

    def restore(self, state: dict[str, Funnel]) -> None:
        """Take back what `snapshot` returned."""
        self._funnels = state

    def close(self, high_ms: int, everything: bool, fine_rows: Rows) -> None:
        """Nothing is sent late: a funnel's events count in their own windows."""

    def forget(self, horizon_ms: int) -> None:
        """Free funnels without news for the sign-up timeout before `horizon_ms`."""
        cutoff = horizon_ms - self._timeout_ms
        for signup_id in [s for s, funnel in self._funnels.items() if funnel[2] < cutoff]:
            del self._funnels[signup_id]

    @property
    def open_funnels(self) -> int:
        """Funnels held in memory."""
        return len(self._funnels)

    keys_held = open_funnels


class IgnoreFolder:
    """Folds nothing: a family left out of `--metric-set stream_starts`."""

    def __init__(self) -> None:
        self.row_layout: RowLayout = ()
        self.event_slots: dict[str, int] = {}
        self.handlers: dict[str, Handler] = {}

    def snapshot(self) -> None:
        """Nothing is held."""

    def restore(self, state: None) -> None:
        """Nothing is held."""

    def close(self, high_ms: int, everything: bool, fine_rows: Rows) -> None:
        """Nothing is held."""

    def forget(self, horizon_ms: int) -> None:
        """Nothing is held."""

    keys_held = 0
