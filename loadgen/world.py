"""The static world the load generator simulates: countries, devices, CDNs, plans, codes, the catalogue.

Every enum (device types, channels, plans, payment methods, failure reasons)
comes from the contract in `schemas/`. This module only attaches simulation
parameters to those values: a parameter for a value the contract does not
have is an error at import (the contract and the generator would have drifted
apart), and a value the contract has but no parameter names still gets
generated with a default weight, so a new enum value shows up in the traffic
without touching this file.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass
from itertools import accumulate

from schemas.contract import enum_values, families


def _check_known(field: str, params: dict[str, object]) -> tuple[str, ...]:
    values = enum_values(field)
    unknown = sorted(set(params) - set(values))
    if unknown:
        raise RuntimeError(f"loadgen parameters name {field} values {unknown} that contract v1 does not have")
    return values


def _weights(field: str, weights: dict[str, float], default: float) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Every contract value of `field` with its weight (default for values the table does not name)."""
    values = _check_known(field, dict(weights))
    return values, tuple(weights.get(v, default) for v in values)


class Choice:
    """A weighted choice over fixed values from one uniform draw (cheaper than random.choices)."""

    __slots__ = ("_cum", "_total", "values")

    def __init__(self, values: tuple[str, ...], weights: tuple[float, ...]) -> None:
        if len(values) != len(weights) or not values:
            raise ValueError("a choice needs one positive weight per value")
        self.values = values
        self._cum = list(accumulate(weights))
        self._total = self._cum[-1]

    def index(self, u: float) -> int:
        """Index of the value that the uniform draw `u` in [0, 1) selects."""
        i = bisect.bisect_right(self._cum, u * self._total)
        return i if i < len(self.values) else len(self.values) - 1

    def pick(self, u: float) -> str:
        """The value that the uniform draw `u` in [0, 1) selects."""
        return self.values[self.index(u)]


# --- playback -------------------------------------------------------------------------------------

DEVICE_TYPES, DEVICE_WEIGHTS = _weights(
    "device_type", {"tv": 0.42, "mobile": 0.26, "tablet": 0.08, "web": 0.14, "console": 0.06, "other": 0.04}, 0.03
)


@dataclass(frozen=True)
class DeviceProfile:
    """How one device type behaves: startup time, reliability, bitrate ladder."""

    startup_median_ms: float
    startup_sigma: float
    failure_factor: float
    rebuffer_factor: float
    ladder: tuple[int, ...]


_LADDER_TV = (1050, 1750, 2350, 3000, 4300, 5800, 8000, 16000)
_LADDER_MOBILE = (235, 375, 560, 750, 1050, 1750, 2350)
_LADDER_MID = (375, 560, 750, 1050, 1750, 2350, 3000, 4300)
_DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "tv": DeviceProfile(2200, 0.50, 0.8, 0.7, _LADDER_TV),
    "console": DeviceProfile(1900, 0.45, 0.7, 0.7, _LADDER_TV),
    "mobile": DeviceProfile(1400, 0.60, 1.3, 1.6, _LADDER_MOBILE),
    "tablet": DeviceProfile(1500, 0.55, 1.1, 1.3, _LADDER_MID),
    "web": DeviceProfile(1800, 0.55, 1.1, 1.0, (*_LADDER_MID[1:], 5800)),
}
_check_known("device_type", dict(_DEVICE_PROFILES))
_DEFAULT_PROFILE = DeviceProfile(2500, 0.65, 1.5, 1.4, _LADDER_MID)
DEVICE_PROFILES: tuple[DeviceProfile, ...] = tuple(_DEVICE_PROFILES.get(d, _DEFAULT_PROFILE) for d in DEVICE_TYPES)

CDNS: tuple[str, ...] = ("c1", "c2", "c3", "c4")
_CDN_WEIGHTS_DEFAULT = (0.45, 0.30, 0.20, 0.05)

START_FAILURE_CODES = Choice(
    ("SF_NETWORK_TIMEOUT", "SF_MANIFEST_ERROR", "SF_DRM_LICENSE", "SF_CDN_UNREACHABLE", "SF_PLAYER_INIT"),
    (0.35, 0.20, 0.20, 0.15, 0.10),
)
PLAY_ERROR_CODES = Choice(
    ("PE_NETWORK_LOST", "PE_CDN_5XX", "PE_DECODER", "PE_DRM_EXPIRED"),
    (0.40, 0.25, 0.20, 0.15),
)


@dataclass(frozen=True)
class Country:
    """One market: its local time, its share of subscribers, its money and CDN mix."""

    code: str
    utc_offset_min: int
    weight: float
    currency: str
    price_factor: float  # local price units per USD of list price
    cdn_weights: tuple[float, ...] = _CDN_WEIGHTS_DEFAULT
    carrier_billing_factor: float = 1.0


# Fixed UTC offsets (no DST): close enough for a diurnal curve.
COUNTRIES: tuple[Country, ...] = (
    Country("US", -300, 0.27, "USD", 1.0),
    Country("CA", -300, 0.04, "CAD", 1.35),
    Country("MX", -360, 0.05, "MXN", 10.0, (0.40, 0.35, 0.20, 0.05), 2.0),
    Country("BR", -180, 0.09, "BRL", 3.0, (0.35, 0.40, 0.20, 0.05), 2.0),
    Country("GB", 0, 0.07, "GBP", 0.8),
    Country("DE", 60, 0.07, "EUR", 0.95),
    Country("FR", 60, 0.05, "EUR", 0.95),
    Country("ES", 60, 0.04, "EUR", 0.9),
    Country("IT", 60, 0.03, "EUR", 0.9),
    Country("IN", 330, 0.08, "INR", 25.0, (0.30, 0.30, 0.30, 0.10), 6.0),
    Country("JP", 540, 0.05, "JPY", 120.0),
    Country("KR", 540, 0.03, "KRW", 1100.0),
    Country("AU", 600, 0.04, "AUD", 1.4),
    Country("ZA", 120, 0.02, "ZAR", 9.0, (0.50, 0.30, 0.15, 0.05), 3.0),
)


def _check_countries() -> None:
    common = families()["playback"].event_types["play_attempt"].fields
    pattern = next(f.pattern for f in common if f.name == "country")
    currency_pattern = next(
        f.pattern for f in families()["signup"].event_types["signup_completed"].fields if f.name == "currency"
    )
    for c in COUNTRIES:
        if pattern and not re.match(pattern, c.code):
            raise RuntimeError(f"loadgen country {c.code!r} does not match the contract pattern {pattern}")
        if currency_pattern and not re.match(currency_pattern, c.currency):
            raise RuntimeError(f"loadgen currency {c.currency!r} does not match the contract pattern")
        if len(c.cdn_weights) != len(CDNS):
            raise RuntimeError(f"loadgen country {c.code}: one CDN weight per CDN")


_check_countries()
COUNTRY_CODES: tuple[str, ...] = tuple(c.code for c in COUNTRIES)

# --- sign-up --------------------------------------------------------------------------------------

CHANNELS, CHANNEL_WEIGHTS = _weights(
    "channel", {"organic": 0.40, "paid_search": 0.20, "social": 0.18, "partner": 0.12, "referral": 0.10}, 0.05
)
PLANS, PLAN_WEIGHTS = _weights("plan", {"ads": 0.25, "basic": 0.20, "standard": 0.35, "premium": 0.20}, 0.05)
PAYMENT_METHODS, PAYMENT_METHOD_WEIGHTS = _weights(
    "payment_method", {"card": 0.65, "paypal": 0.20, "gift_card": 0.05, "carrier_billing": 0.10}, 0.05
)
_PLAN_USD_CENTS = {"ads": 699, "basic": 999, "standard": 1549, "premium": 2299}
_check_known("plan", dict(_PLAN_USD_CENTS))
_DECLINE_RATE = {"card": 0.06, "paypal": 0.03, "gift_card": 0.10, "carrier_billing": 0.08}
_check_known("payment_method", dict(_DECLINE_RATE))
DECLINE_RATES: tuple[float, ...] = tuple(_DECLINE_RATE.get(m, 0.05) for m in PAYMENT_METHODS)

# The funnel's failure reasons carry meaning for the simulation, so each must exist in the contract.
_REASONS = set(enum_values("failure_reason"))
for _reason in ("payment_declined", "fraud_suspected", "abandoned", "technical_error"):
    if _reason not in _REASONS:
        raise RuntimeError(f"contract v1 has no failure_reason {_reason!r}; the sign-up funnel model needs it")
REASON_DECLINED = "payment_declined"
REASON_FRAUD = "fraud_suspected"
REASON_ABANDONED = "abandoned"
REASON_TECHNICAL = "technical_error"


def plan_price_cents(country: Country, plan: str) -> int:
    """List price of `plan` in the country's currency, in hundredths, ending in .99 like real price lists."""
    usd = _PLAN_USD_CENTS.get(plan, 1299)
    units = max(1, round(usd * country.price_factor / 100))
    return units * 100 - 1


def payment_method_choice(country: Country) -> Choice:
    """The payment-method mix of a country (carrier billing is bigger where cards are rarer)."""
    weights = tuple(
        w * (country.carrier_billing_factor if m == "carrier_billing" else 1.0)
        for m, w in zip(PAYMENT_METHODS, PAYMENT_METHOD_WEIGHTS, strict=True)
    )
    return Choice(PAYMENT_METHODS, weights)


# --- population and catalogue ---------------------------------------------------------------------


class Catalogue:
    """Titles whose popularity follows a Zipf law: P(rank k) ∝ 1 / k**s."""

    def __init__(self, size: int, s: float, rng: random.Random) -> None:
        # Shuffled ids so that a title's id says nothing about its rank.
        numbers = list(range(1, size + 1))
        rng.shuffle(numbers)
        self.ids: tuple[str, ...] = tuple(f"tt{n:07d}" for n in numbers)
        self._choice = Choice(self.ids, tuple(1.0 / (k**s) for k in range(1, size + 1)))

    def pick(self, u: float) -> str:
        """The title a uniform draw selects (rank order = popularity order)."""
        return self._choice.pick(u)


class Population:
    """Accounts, each living in one country with a favourite device."""

    def __init__(self, size: int, rng: random.Random) -> None:
        numbers = range(size)
        countries = rng.choices(range(len(COUNTRIES)), weights=[c.weight for c in COUNTRIES], k=size)
        devices = rng.choices(range(len(DEVICE_TYPES)), weights=DEVICE_WEIGHTS, k=size)
        self.by_country: list[list[int]] = [[] for _ in COUNTRIES]
        for n, ci in zip(numbers, countries, strict=True):
            self.by_country[ci].append(n)
        for accounts in self.by_country:
            if not accounts:  # tiny populations: every country still needs someone to watch
                accounts.append(len(devices))
                devices.append(0)
        self.favourite_device = devices

    @staticmethod
    def account_id(number: int) -> str:
        """The id of account `number`."""
        return f"acct{number:08d}"
