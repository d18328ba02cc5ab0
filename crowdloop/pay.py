"""Pay policy: reward from a target hourly wage and measured task time.

Reward per task = hourly wage × expected seconds per task / 3600, rounded *up* to the cent,
so rounding never pushes the wage below target. The expectation is a pilot estimate until
durations have been measured, then the median measured duration of previous rounds. When a
batch's measured median exceeds the estimate it was paid for, every assignment of the batch
gets a top-up bonus for the difference (Fair Work style), capped at ``pay.max_top_up`` times
the reward so that no time measurement, however inflated, can make pay unbounded.

Fees: one function per vendor (``fee_function``): the project's own rule for the vendor
(``pay.vendor_fees``), else the vendor's published rule (its ``fee_for``, e.g. MTurk's 20% with a
$0.01 minimum per assignment), else ``pay.fee_rate``. The round ledger, the budget planner and
the vendor's own accounting all use it, so they agree to the cent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdloop.config import PayConfig, VendorFee

FeeFor = Callable[[float, int], float]  # (reward of one assignment or bonus, assignments of its task) -> fee


def ceil_cents(amount: float) -> float:
    """Round up to the cent, ignoring float noise: the amount in cents is first rounded to 5 decimals,
    so 0.07000000000000001 (7 cents plus noise) stays 0.07; anything 1e-5 of a cent over goes up."""
    return math.ceil(round(amount * 100, 5)) / 100


def reward_for(seconds_per_task: float, hourly_wage: float) -> float:
    if seconds_per_task <= 0 or hourly_wage <= 0:
        raise ValueError(f"seconds_per_task={seconds_per_task}, hourly_wage={hourly_wage}: expected positive numbers")
    return max(0.01, ceil_cents(hourly_wage * seconds_per_task / 3600.0))


def expected_seconds(cfg: PayConfig, measured_durations: Iterable[float]) -> float:
    """Median measured duration of earlier work, or the pilot estimate when there is none.

    A duration of 0 is no measurement (a vendor that reports no times, answers posted without
    the item on screen): such answers are left out, so they can neither crash the next
    dispatch with a zero estimate nor push the reward down to nothing.
    """
    values = np.asarray(list(measured_durations), dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if values.size else cfg.pilot_seconds_per_task


@dataclass(frozen=True)
class BatchPay:
    n_assignments: int
    rewards: float
    bonus_per_assignment: float
    bonuses: float
    fees: float
    median_seconds: float
    estimated_seconds: float

    @property
    def total(self) -> float:
        return round(self.rewards + self.bonuses + self.fees, 2)


def top_up_share(cfg: PayConfig) -> float:
    """The most a top-up bonus adds to a reward, as a share of it (0 without top-ups)."""
    return cfg.max_top_up if cfg.top_up_bonus else 0.0


def bonus_cap(reward: float, share: float) -> float:
    """The largest top-up of an assignment paid ``reward``: ``share`` of it, down to the cent. Stated
    once for the budget and for a vendor's funds check (``VendorContext.max_top_up`` is the share)."""
    return math.floor(round(reward * share * 100, 5)) / 100


def max_bonus(cfg: PayConfig, reward: float) -> float:
    """The largest top-up one assignment paid ``reward`` can get (what the budget reserves)."""
    return bonus_cap(reward, top_up_share(cfg))


def settle_batch(cfg: PayConfig, *, reward: float, estimated_seconds: float, durations: list[float],
                 assignments: list[tuple[float, int]] | None = None, fee_for: FeeFor | None = None) -> BatchPay:
    """Money for one collected batch: rewards, the (capped) top-up bonus and vendor fees.

    ``assignments`` gives each approved assignment's ``(reward, assignments of its task)`` (default:
    ``reward`` each, one per task), ``fee_for`` the vendor's fee rule (default ``pay.fee_rate``);
    ``reward`` is the batch's planned reward, which the bonus cap is a share of.
    """
    n = len(durations)
    median = float(np.median(durations)) if n else 0.0
    bonus = 0.0
    if cfg.top_up_bonus and n and median > estimated_seconds:
        bonus = min(ceil_cents(cfg.hourly_wage * (median - estimated_seconds) / 3600.0), max_bonus(cfg, reward))
    paid = assignments if assignments is not None else [(reward, 1)] * n
    rewards = round(sum(r for r, _ in paid), 2)
    bonuses = round(bonus * n, 2)
    fees = fees_due(fee_for or rate_fee(cfg.fee_rate), paid, [bonus] * n if bonus else [])
    return BatchPay(n, rewards, bonus, bonuses, fees, median, estimated_seconds)


def hourly_wage(paid: float, seconds: float) -> float | None:
    """Effective hourly wage of ``paid`` money for ``seconds`` of work."""
    return None if seconds <= 0 else paid * 3600.0 / seconds


def rule_fee(rule: VendorFee) -> FeeFor:
    """``fee_for`` of a configured rule: ``rate`` (+ ``bulk_rate`` from ``bulk_min_assignments``), no minimum."""
    def fee_for(reward: float, n_assignments_per_task: int) -> float:
        rate = rule.rate
        if rule.bulk_min_assignments is not None and n_assignments_per_task >= rule.bulk_min_assignments:
            rate += rule.bulk_rate
        return reward * rate

    return fee_for


def rate_fee(rate: float) -> FeeFor:
    """``fee_for`` of a flat share of rewards and bonuses (``pay.fee_rate``)."""
    return rule_fee(VendorFee(rate=rate))


def fee_function(cfg: PayConfig, vendor_name: str, vendor_cls: Any = None) -> tuple[FeeFor, str]:
    """The one fee rule of a project's vendor and where it comes from.

    The project's own rule for the vendor (``pay.vendor_fees``: a negotiated contract) wins;
    else the vendor's published rule (its ``fee_for``); else ``pay.fee_rate``.
    """
    if vendor_name in cfg.vendor_fees:
        return rule_fee(cfg.vendor_fees[vendor_name]), f"pay.vendor_fees.{vendor_name}"
    own = getattr(vendor_cls, "fee_for", None)
    if callable(own):
        return own, f"vendor {vendor_name!r}"
    return rate_fee(cfg.fee_rate), "pay.fee_rate"


def fees_due(fee_for: FeeFor, rewards: Iterable[tuple[float, int]], bonuses: Iterable[float] = ()) -> float:
    """Fees for assignments given as ``(reward, assignments of its task)`` and for bonus payments
    (each a separate payment: a per-payment minimum applies to each), rounded to the cent once."""
    total = sum(fee_for(reward, n) for reward, n in rewards) + sum(fee_for(amount, 1) for amount in bonuses)
    return round(total + 1e-9, 2)
