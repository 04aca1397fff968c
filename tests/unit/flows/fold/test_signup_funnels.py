"""Sign-up funnels: counts per step, declines attributed to the funnel's payment method, memory freed."""

from __future__ import annotations

from types import SimpleNamespace

from flows.fold.signup import UNKNOWN, SignupFolder
from flows.partials import Partials

W = 1_700_000_000_000


def ev(kind: str, signup: str, t: int = W, **fields: object) -> SimpleNamespace:
    return SimpleNamespace(
        event_type=kind, signup_id=signup, event_time_ms=t, country="DE", device_type="web", channel="social", **fields
    )


def fold_all(folder: SignupFolder, events: list[SimpleNamespace]) -> Partials:
    acc: Partials = {}
    row = [0] * len(folder.row_layout)
    for e in events:
        folder.handlers[e.event_type](e, W, row, {}, acc, True)
    return acc


def test_declines_are_attributed_to_the_payment_method_of_the_same_funnel() -> None:
    folder = SignupFolder(signup_timeout_ms=3_600_000)
    acc = fold_all(
        folder,
        [
            ev("signup_started", "a"),
            ev("plan_selected", "a", plan="premium"),
            ev("payment_submitted", "a", plan="premium", payment_method="paypal"),
            ev("signup_failed", "a", failure_reason="payment_declined"),
            ev("signup_started", "b"),
            ev("payment_submitted", "b", plan="basic", payment_method="card"),
            ev(
                "signup_completed",
                "b",
                plan="basic",
                payment_method="card",
                account_id="x",
                price_cents=999,
                currency="EUR",
            ),
            ev("signup_failed", "never-seen", failure_reason="payment_declined"),
        ],
    )
    assert acc[(W, "payment_declines", "DE", "web", "social", "premium", "paypal")] == 1
    assert acc[(W, "payment_declines", "DE", "web", "social", UNKNOWN, UNKNOWN)] == 1
    assert acc[(W, "payments_submitted", "DE", "web", "social", "basic", "card")] == 1
    assert acc[(W, "signups_completed", "DE", "web", "social", "basic", "card")] == 1
    assert acc[(W, "new_subscription_value_cents", "DE", "web", "basic", "EUR")] == 999
    assert acc[(W, "signups_started", "DE", "web", "social")] == 2
    assert acc[(W, "signups_failed", "DE", "web", "social", "premium", "payment_declined")] == 1
    assert folder.open_funnels == 0, "completed and failed funnels are freed"


def test_abandoned_funnels_are_forgotten_after_the_timeout() -> None:
    folder = SignupFolder(signup_timeout_ms=60_000)
    fold_all(folder, [ev("signup_started", "a", W), ev("plan_selected", "a", W + 1000, plan="ads")])
    folder.forget(W + 30_000)
    assert folder.open_funnels == 1
    folder.forget(W + 1000 + 60_001)
    assert folder.open_funnels == 0


def test_a_failure_after_the_timeout_is_unknown_whether_or_not_its_funnel_was_freed_yet() -> None:
    """Attribution depends on the events only, not on when `forget` happened to run (batch timing)."""
    late_failure = ev("signup_failed", "a", W + 1000 + 60_001, failure_reason="payment_declined")
    submitted = ev("payment_submitted", "a", W + 1000, plan="ads", payment_method="card")
    for forget_first in (False, True):
        folder = SignupFolder(signup_timeout_ms=60_000)
        fold_all(folder, [submitted])
        if forget_first:
            folder.forget(W + 1000 + 60_001)
        acc = fold_all(folder, [late_failure])
        assert acc == {
            (W, "signups_failed", "DE", "web", "social", UNKNOWN, "payment_declined"): 1,
            (W, "payment_declines", "DE", "web", "social", UNKNOWN, UNKNOWN): 1,
        }
