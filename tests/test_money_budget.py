"""Issue 19, points 1 and 2: the top-up bonus is capped, and ``money_budget`` is never exceeded.

These tests use only what ``main`` had before the fix (they fail there and pass here).
"""

from __future__ import annotations

import pytest

from crowdloop import keys
from crowdloop.config import PayConfig
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.crowd_helpers import run_engine


def test_the_top_up_bonus_is_capped_at_a_share_of_the_reward():
    """Issue 19.1: nine answers booked at 600 s each used to get a $2.50 top-up each on a $0.02 reward."""
    from crowdloop.pay import settle_batch

    settled = settle_batch(PayConfig(), reward=0.02, estimated_seconds=5.0, durations=[600.0] * 9)
    assert settled.bonus_per_assignment == pytest.approx(0.02)  # pay.max_top_up = 1: at most the reward again
    assert settled.total <= 9 * 0.02 * 2 + 1e-9
    none = settle_batch(PayConfig(max_top_up=0), reward=0.02, estimated_seconds=5.0, durations=[600.0] * 9)
    assert none.bonus_per_assignment == 0


@pytest.mark.parametrize("budget", [65, 95, 130])
def test_judgment_budget_is_never_exceeded_with_gold(tmp_path, budget):
    """Gold questions are judgments too: the batch planner counted only the items' judgments, so
    the gold mixed into the last batch passed the budget (65 -> 68 judgments, 95 -> 100, 130 -> 132)."""
    cfg = small_config(**{"stopping.judgment_budget": budget, "stopping.max_rounds": 12, "sampler.initial_size": 10,
                          "sampler.batch_size": 10, "consensus.redundancy": 2, "gold.share": 0.2, "gold.n_items": 20})
    p = run_engine(cfg, str(tmp_path / "p"))
    judgments = p.annotations()
    assert budget - 2 * 3 < len(judgments) <= budget  # used up to less than an item and its gold, never passed
    assert any(a.item_id in p.gold_set for a in judgments if a.round == max(x.round for x in judgments))
    from crowdloop.report import status

    assert status(p)["stop_reason"].startswith(f"judgment_budget={budget}")


@pytest.mark.parametrize("budget", [0.50, 2.00])
def test_money_budget_is_never_exceeded_with_top_ups_fees_and_gold(tmp_path, budget):
    """Issue 19.2: the planner ignored top-up bonuses (budget 0.50 -> spent 1.35; 2.00 -> 2.10).

    A slow crowd (median 20 s against a 10 s pilot estimate: every batch is topped up), a 20% fee
    and gold questions mixed in: the total spent, as the status JSON reports it, stays within.
    """
    from crowdloop.report import status

    cfg = small_config(**{"stopping.money_budget": budget, "stopping.max_rounds": 12, "pay.fee_rate": 0.2,
                          "pay.pilot_seconds_per_task": 10, "sampler.initial_size": 10, "sampler.batch_size": 10,
                          "vendor.params.median_seconds": 20.0, "consensus.redundancy": 2,
                          "gold.share": 0.2, "gold.n_items": 20})
    p = run_engine(cfg, str(tmp_path / "p"))
    state = status(p)
    spent = state["totals"]["cost"]
    assert 0 < spent <= budget, f"spent {spent} of a {budget} budget"
    assert state["stop_reason"].startswith(f"money_budget={budget:g}")
    pays = [read_json(p.store, keys.round_key(r, keys.PAY)) for r in p.rounds() if p.has(r, keys.PAY)]
    assert any(x["bonuses"] > 0 for x in pays)  # the top-ups that used to overrun the budget were paid
    assert spent == pytest.approx(sum(x["total"] for x in pays))


def test_a_budget_too_small_for_one_item_says_what_is_left_and_what_an_item_costs(tmp_path):
    """``money_budget: 0.01`` stopped at round 0 with 'money_budget=0.01 USD reached', which reads
    as if it had been spent; nothing was."""
    from crowdloop.report import status

    cfg = small_config(**{"stopping.money_budget": 0.01, "pay.hourly_wage": 12.0, "pay.pilot_seconds_per_task": 8.0})
    p = run_engine(cfg, str(tmp_path / "p"))
    state = status(p)
    assert state["totals"]["cost"] == 0 and not p.annotations()
    # 3 judgments at the $0.03 reward (8 s at $12/h, rounded up), each with a top-up of at most the reward, and a cent
    assert state["stop_reason"] == ("money_budget=0.01 USD reached: 0.01 USD left, one more item costs up to 0.19 USD")
