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

from crowdloop.config import PayConfig


def ceil_cents(amount: float) -> float:
    """Round up to the cent, ignoring float noise below a thousandth of a cent."""
    return math.ceil(round(amount * 100, 5)) / 100


def reward_for(seconds_per_task: float, hourly_wage: float) -> float:
    if seconds_per_task <= 0 or hourly_wage <= 0:
        raise ValueError(f"seconds_per_task={seconds_per_task}, hourly_wage={hourly_wage}: expected positive numbers")
    return max(0.01, ceil_cents(hourly_wage * seconds_per_task / 3600.0))


def expected_seconds(cfg: PayConfig, measured_durations: Iterable[float]) -> float:
    """Median measured duration of earlier work, or the pilot estimate when there is none."""
    values = np.asarray(list(measured_durations), dtype=np.float64)
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
