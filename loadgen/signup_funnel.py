"""A sign-up funnel's arrival: started -> plan selected -> payment submitted -> completed or failed.

Every step may be the last (drop-off); an abandoned funnel is reported as
`signup_failed(abandoned)` half the time, later, and otherwise just stops.
After the payment the outcome is a decline (the country's rate for the
method, raised by incidents in scope), fraud, a technical error or a
completed sign-up. Like a playback arrival, a funnel draws a fixed set of
values from its stream whatever happens to it.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from loadgen.diurnal import MINUTE_MS
from loadgen.incident_effects import multiplier
from loadgen.world import (
    CHANNEL_WEIGHTS,
    CHANNELS,
    COUNTRIES,
    DECLINE_RATES,
    DEVICE_TYPES,
    DEVICE_WEIGHTS,
    PLAN_WEIGHTS,
    PLANS,
    REASON_ABANDONED,
    REASON_DECLINED,
    REASON_FRAUD,
    REASON_TECHNICAL,
    Choice,
    payment_method_choice,
    plan_price_cents,
)
from schemas.contract import SCHEMA_VERSION

if TYPE_CHECKING:
    from loadgen.model import Model

# Probability of moving on from each step, and of an abandoned funnel being reported.
FUNNEL_PLAN_RATE = 0.72
FUNNEL_PAYMENT_RATE = 0.80
FUNNEL_ABANDON_REPORTED = 0.5
FRAUD_RATE = 0.01
TECHNICAL_ERROR_RATE = 0.008
_DEVICE_CHOICE = Choice(DEVICE_TYPES, DEVICE_WEIGHTS)  # funnels have no favourite device
_CHANNEL_CHOICE = Choice(CHANNELS, CHANNEL_WEIGHTS)
_PLAN_CHOICE = Choice(PLANS, PLAN_WEIGHTS)
_METHOD_CHOICES = tuple(payment_method_choice(c) for c in COUNTRIES)


def signup_arrival(model: Model, t_float: float, rng: random.Random, warm: bool = False) -> None:
    """One funnel started at `t_float`: push the events of the steps it gets through (`warm`: replayed past)."""
    r = rng.random
    t0 = int(t_float)
    u_country, u_device, u_channel, u_plan, u_method = r(), r(), r(), r(), r()
    u_step1, u_step2, u_outcome, u_report = r(), r(), r(), r()
    z1, z2, z3, z4 = rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0), rng.gauss(0.0, 1.0)
    if warm:
        k = model.warm_funnels
        model.warm_funnels += 1
        fid = f"{model.tag}-g{k:x}"
    else:
        k = model.funnels
        model.funnels += 1
        fid = f"{model.tag}-f{k:x}"
    ci = model.diurnal.country_index(int(t_float // MINUTE_MS) % 1440, u_country)
    country = COUNTRIES[ci]
    plan = _PLAN_CHOICE.pick(u_plan)
    method_choice = _METHOD_CHOICES[ci]
    mi = method_choice.index(u_method)
    method = method_choice.values[mi]
    base = {
        "country": country.code,
        "device_type": DEVICE_TYPES[_DEVICE_CHOICE.index(u_device)],
        "schema_version": SCHEMA_VERSION,
        "signup_id": fid,
        "channel": _CHANNEL_CHOICE.pick(u_channel),
    }
    push = model.push
    push(t0, {"event_id": f"{fid}.0", "event_type": "signup_started", "event_time_ms": t0, **base})
    abandon_after = int(math.exp(math.log(600_000) + 0.5 * z4))
    reported = u_report < FUNNEL_ABANDON_REPORTED
    if u_step1 >= FUNNEL_PLAN_RATE:
        if reported:
            signup_failed(model, t0 + abandon_after, f"{fid}.1", base, REASON_ABANDONED, None, None)
        return
    t1 = t0 + int(math.exp(math.log(40_000) + 0.7 * z1))
    push(t1, {"event_id": f"{fid}.1", "event_type": "plan_selected", "event_time_ms": t1, **base, "plan": plan})
    if u_step2 >= FUNNEL_PAYMENT_RATE:
        if reported:
            signup_failed(model, t1 + abandon_after, f"{fid}.2", base, REASON_ABANDONED, plan, None)
        return
    t2 = t1 + int(math.exp(math.log(90_000) + 0.6 * z2))
    push(
        t2,
        {
            "event_id": f"{fid}.2",
            "event_type": "payment_submitted",
            "event_time_ms": t2,
            **base,
            "plan": plan,
            "payment_method": method,
        },
    )
    t3 = t2 + int(math.exp(math.log(3_000) + 0.5 * z3))
    p_decline = _decline_probability(model, base, plan, method, DECLINE_RATES[mi], t3)
    reason = _failure_reason(u_outcome, p_decline)
    if reason is not None:
        signup_failed(model, t3, f"{fid}.3", base, reason, plan, method)
        return
    push(
        t3,
        {
            "event_id": f"{fid}.3",
            "event_type": "signup_completed",
            "event_time_ms": t3,
            **base,
            "plan": plan,
            "payment_method": method,
            "account_id": f"{model.tag}-n{k:x}" if not warm else f"{model.tag}-m{k:x}",
            "price_cents": plan_price_cents(country, plan),
            "currency": country.currency,
        },
    )


def _decline_probability(
    model: Model, base: dict[str, Any], plan: str, method: str, p_decline: float, t3: int
) -> float:
    """The country's decline rate of the method (`p_decline`), raised by the incidents in scope at `t3`."""
    if model.incidents:
        scope = model.incidents.in_scope(
            {
                "country": base["country"],
                "device_type": base["device_type"],
                "channel": base["channel"],
                "plan": plan,
                "payment_method": method,
            }
        )
        if scope:
            p_decline = min(1.0, p_decline * multiplier(scope, t3, "payment_decline_multiplier"))
    return p_decline


def _failure_reason(u_outcome: float, p_decline: float) -> str | None:
    """Why a submitted payment fails (decline, fraud, technical error), or None: the sign-up completes."""
    if u_outcome < p_decline:
        return REASON_DECLINED
    if u_outcome < p_decline + FRAUD_RATE:
        return REASON_FRAUD
    if u_outcome < p_decline + FRAUD_RATE + TECHNICAL_ERROR_RATE:
        return REASON_TECHNICAL
    return None


def signup_failed(
    model: Model, t: int, eid: str, base: dict[str, Any], reason: str, plan: str | None, method: str | None
) -> None:
    """Push a `signup_failed`, remembering the plan and method it does not carry for the ground truth."""
    if model.hidden is not None and t >= model.visible_from:
        hidden = {}
        if plan is not None:
            hidden["plan"] = plan
        if method is not None:
            hidden["payment_method"] = method
        if hidden:
            model.hidden[eid] = hidden
    model.push(
        t, {"event_id": eid, "event_type": "signup_failed", "event_time_ms": t, **base, "failure_reason": reason}
    )
