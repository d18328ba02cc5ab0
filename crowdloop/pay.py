"""Pay policy: reward from a target hourly wage and measured task time.

Reward per task = hourly wage × expected seconds per task / 3600, rounded *up* to the cent,
so rounding never pushes the wage below target. The expectation is a pilot estimate until
durations have been measured, then the median measured duration of previous rounds. When a
batch's measured median exceeds the estimate it was paid for, every assignment of the batch
gets a top-up bonus for the difference (Fair Work style).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from crowdloop.config import PayConfig, VendorFee

# Published vendor commissions; a project's ``pay.vendor_fees`` overrides them.
# MTurk: 20% on rewards and bonuses, plus 20% on tasks (HITs) with 10 or more assignments.
BUILTIN_FEES: dict[str, VendorFee] = {
    "mturk": VendorFee(rate=0.20, bulk_rate=0.20, bulk_min_assignments=10),
}


def ceil_cents(amount: float) -> float:
    """Round up to the cent, ignoring float noise below a thousandth of a cent."""
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


def settle_batch(cfg: PayConfig, *, reward: float, estimated_seconds: float, durations: list[float]) -> BatchPay:
    """Money for one collected batch: rewards, top-up bonus and vendor fees."""
    n = len(durations)
    median = float(np.median(durations)) if n else 0.0
    bonus = 0.0
    if cfg.top_up_bonus and n and median > estimated_seconds:
        bonus = ceil_cents(cfg.hourly_wage * (median - estimated_seconds) / 3600.0)
    rewards = round(reward * n, 2)
    bonuses = round(bonus * n, 2)
    fees = round(cfg.fee_rate * (rewards + bonuses), 2)
    return BatchPay(n, rewards, bonus, bonuses, fees, median, estimated_seconds)


def hourly_wage(paid: float, seconds: float) -> float | None:
    """Effective hourly wage of ``paid`` money for ``seconds`` of work."""
    return None if seconds <= 0 else paid * 3600.0 / seconds


def vendor_fee(cfg: PayConfig, vendor: str) -> VendorFee:
    """The fee rule for ``vendor``: the project's own, else the built-in one, else ``fee_rate``."""
    if vendor in cfg.vendor_fees:
        return cfg.vendor_fees[vendor]
    if vendor in BUILTIN_FEES:
        return BUILTIN_FEES[vendor]
    return VendorFee(rate=cfg.fee_rate)


def fees_for(rule: VendorFee, rewards: Iterable[tuple[float, int]], bonuses: float) -> float:
    """Vendor fees for approved assignments given as ``(reward, assignments of its task)`` and bonuses."""
    total = 0.0
    for reward, n_assignments in rewards:
        rate = rule.rate
        if rule.bulk_min_assignments is not None and n_assignments >= rule.bulk_min_assignments:
            rate += rule.bulk_rate
        total += reward * rate
    return round(total + bonuses * rule.rate, 2)
