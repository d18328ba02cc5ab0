"""The pay policy's arithmetic, edge by edge (issue 21: these kill the mutants of ``crowdloop/pay.py``
the money tests let through). Every expected figure follows from the rule in ``pay.py``'s docstring:
reward = wage × seconds / 3600 rounded *up* to the cent (at least a cent), a top-up bonus for the
measured extra time, also rounded up and capped at ``max_top_up`` × reward, fees per payment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crowdloop.config import PayConfig, VendorFee
from crowdloop.pay import (
    ceil_cents,
    expected_seconds,
    fees_due,
    hourly_wage,
    max_bonus,
    rate_fee,
    reward_for,
    rule_fee,
    settle_batch,
)
from crowdloop.vendors.mturk import MTurkVendor


def test_ceil_cents_rounds_up_to_the_cent_and_ignores_float_noise():
    assert ceil_cents(0.12) == 0.12
    assert ceil_cents(0.121) == 0.13  # a tenth of a cent more is a cent more
    assert ceil_cents(0.1201) == 0.13
    assert ceil_cents(1.00) == 1.00
    assert ceil_cents(0.07 * 3) == 0.21  # 0.21000000000000002: float noise, not a cent
    assert ceil_cents(0.12 + 2e-8) == 0.12  # two millionths of a cent: noise (below a thousandth of a cent)
    assert ceil_cents(0.12 - 2e-8) == 0.12


def test_reward_is_the_wage_for_the_time_rounded_up_never_below_it():
    assert reward_for(30, 12.0) == 0.10
    assert reward_for(10, 12.0) == 0.04  # 0.0333 -> up to 0.04
    assert reward_for(0.5, 12.0) == 0.01  # sub-second tasks are paid, at least a cent
    assert reward_for(10, 0.5) == 0.01
    # 12/h for 300.03 s is 1.0001: a hundredth of a cent above a dollar is rounded up, not away
    assert reward_for(300.03, 12.0) == 1.01
    for seconds in np.linspace(0.5, 600, 97):
        for wage in (7.25, 12.0, 15.5, 30.0):
            owed = wage * seconds / 3600
            reward = reward_for(float(seconds), wage)
            assert owed - 1e-9 <= reward < max(owed, 0.01) + 0.01, (seconds, wage)


@pytest.mark.parametrize(("seconds", "wage"), [(0, 12.0), (-1, 12.0), (10, 0), (10, -3.0), (0, 0)])
def test_reward_refuses_non_positive_time_or_wage(seconds, wage):
    with pytest.raises(ValueError, match=f"seconds_per_task={seconds}, hourly_wage={wage}: expected positive numbers"):
        reward_for(seconds, wage)


def test_expected_seconds_is_the_median_of_real_measurements_else_the_pilot():
    cfg = PayConfig(pilot_seconds_per_task=10.0)
    assert expected_seconds(cfg, []) == 10.0
    assert expected_seconds(cfg, [20.0]) == 20.0
    assert expected_seconds(cfg, [0.0, 0.0, 30.0]) == 30.0  # 0 s is no measurement
    assert expected_seconds(cfg, [0.0, 0.0]) == 10.0
    assert expected_seconds(cfg, [0.5, 0.5, 4.0]) == 0.5  # a half-second answer is a measurement
    assert expected_seconds(cfg, [math.inf, 10.0, 20.0, math.nan]) == 15.0  # non-finite: no measurement
    assert expected_seconds(cfg, (d for d in [12.0, 14.0])) == 13.0  # any iterable


def test_max_bonus_is_the_share_of_the_reward_rounded_down_and_zero_without_top_ups():
    assert max_bonus(PayConfig(max_top_up=1.0), 1.00) == 1.00
    assert max_bonus(PayConfig(max_top_up=0.5), 0.27) == 0.13  # 0.135 -> down: never above the share
    assert max_bonus(PayConfig(max_top_up=2.0), 0.04) == 0.08
    assert max_bonus(PayConfig(max_top_up=1.0), 0.12 - 2e-8) == 0.12  # float noise is not a missing cent
    assert max_bonus(PayConfig(max_top_up=1.0, top_up_bonus=False), 0.27) == 0.0
    assert max_bonus(PayConfig(max_top_up=0.0), 0.27) == 0.0


def test_no_top_up_when_work_took_no_longer_than_paid_for():
    cfg = PayConfig(hourly_wage=12.0, max_top_up=10.0)
    for durations in ([5.0, 5.0], [10.0, 10.0, 10.0]):  # faster than, and exactly, the estimate
        batch = settle_batch(cfg, reward=0.04, estimated_seconds=10.0, durations=durations)
        assert batch.bonus_per_assignment == 0.0 and batch.bonuses == 0.0
        assert batch.n_assignments == len(durations)
        assert batch.rewards == round(0.04 * len(durations), 2) and batch.total == batch.rewards


def test_the_top_up_is_the_wage_for_the_extra_median_time_rounded_up_and_capped():
    cfg = PayConfig(hourly_wage=12.0, max_top_up=10.0)
    batch = settle_batch(cfg, reward=0.04, estimated_seconds=10.0, durations=[25.0, 30.0, 40.0])
    assert batch.median_seconds == 30.0 and batch.estimated_seconds == 10.0
    assert batch.bonus_per_assignment == 0.07  # 12/h × 20 s = 0.0667 -> 0.07
    assert batch.bonuses == 0.21 and batch.n_assignments == 3
    assert batch.total == round(0.12 + 0.21, 2)
    # the extra time worth a hundredth of a cent more than 0.10 is paid 0.11, never short
    batch = settle_batch(cfg, reward=0.04, estimated_seconds=10.0, durations=[40.003])
    assert batch.bonus_per_assignment == 0.11
    capped = settle_batch(PayConfig(hourly_wage=12.0, max_top_up=1.0), reward=0.04, estimated_seconds=10.0,
                          durations=[3600.0])
    assert capped.bonus_per_assignment == 0.04  # at most max_top_up × reward, however long the time


def test_no_top_up_when_the_policy_is_off():
    cfg = PayConfig(hourly_wage=12.0, top_up_bonus=False)
    batch = settle_batch(cfg, reward=0.04, estimated_seconds=10.0, durations=[30.0, 30.0])
    assert batch.bonus_per_assignment == 0.0 and batch.bonuses == 0.0 and batch.fees == 0.0


def test_an_empty_batch_costs_nothing_and_has_no_median():
    batch = settle_batch(PayConfig(), reward=0.04, estimated_seconds=10.0, durations=[])
    assert (batch.n_assignments, batch.rewards, batch.bonuses, batch.fees, batch.median_seconds) == (0, 0.0, 0.0, 0.0, 0.0)
    assert batch.bonus_per_assignment == 0.0 and batch.total == 0.0


def test_settle_pays_each_assignment_its_own_reward_and_fees_on_rewards_and_bonuses():
    cfg = PayConfig(hourly_wage=12.0, max_top_up=10.0, fee_rate=0.1)
    batch = settle_batch(cfg, reward=0.04, estimated_seconds=10.0, durations=[30.0, 30.0],
                         assignments=[(0.04, 1), (0.10, 1)])
    assert batch.rewards == 0.14
    assert batch.bonus_per_assignment == 0.07 and batch.bonuses == 0.14
    assert batch.fees == round(0.1 * (0.14 + 0.14), 2)  # 10% of rewards and of bonuses
    # default assignments: one per task, so a bulk rule from 2 assignments per task does not apply
    bulk = rule_fee(VendorFee(rate=0.1, bulk_rate=0.4, bulk_min_assignments=2))
    plain = settle_batch(PayConfig(top_up_bonus=False), reward=0.10, estimated_seconds=10.0, durations=[5.0] * 3,
                         fee_for=bulk)
    assert plain.fees == 0.03


def test_no_bonus_means_no_bonus_fees_even_with_a_per_payment_minimum():
    mturk = MTurkVendor.fee_for  # $0.01 at least per assignment and per bonus
    batch = settle_batch(PayConfig(hourly_wage=12.0), reward=0.04, estimated_seconds=10.0, durations=[5.0] * 4,
                         fee_for=mturk)
    assert batch.fees == 0.04  # four assignment fees of a cent, no bonus payments


def test_a_bonus_is_one_payment_to_one_worker_for_the_fee_rule():
    rule = rule_fee(VendorFee(rate=0.1, bulk_rate=0.1, bulk_min_assignments=2))
    assert fees_due(rule, [], [1.0]) == 0.10
    assert fees_due(rule, [(1.0, 2)], []) == 0.20


def test_fees_round_once_and_half_a_cent_rounds_up():
    assert fees_due(rate_fee(0.1), [(0.15, 1)]) == 0.02  # 0.015
    assert fees_due(rate_fee(0.1), [(0.05, 1)] * 3) == 0.02  # 3 × 0.005, rounded once
    assert fees_due(rate_fee(0.1), [(0.04, 1)]) == 0.0  # 0.004 is less than half a cent


def test_hourly_wage_of_paid_time_and_none_without_time():
    assert hourly_wage(0.05, 15.0) == pytest.approx(12.0, rel=1e-12)
    assert hourly_wage(0.01, 1.0) == pytest.approx(36.0, rel=1e-12)
    assert hourly_wage(0.01, 0.5) == pytest.approx(72.0, rel=1e-12)
    assert hourly_wage(1.0, 0.0) is None
    assert hourly_wage(1.0, -2.0) is None
