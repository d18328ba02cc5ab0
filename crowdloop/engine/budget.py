"""Budgets and stopping: how many items round ``r`` may pick, and whether the loop stops.

The stop check runs after ``evaluate`` and is the only step that may end a run. Its answer
depends only on the config's ``stopping`` section and the store, so a resumed run with raised
limits goes on where the old limits stopped it.

``money_budget`` is never exceeded: a batch is planned at its worst case — every judgment at its
reward plus the largest top-up bonus (``pay.max_top_up``), the vendor's real fee on both (its own
``fee_for``, minimums included), the gold questions mixed in, and a cent for rounding — so the
last batch shrinks instead of overrunning; the accuracy audit, which rides in that batch, takes
only what is left (``audit_allowance``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from crowdloop import keys
from crowdloop.engine.project import Project
from crowdloop.engine.quality import reask_plan
from crowdloop.pay import expected_seconds, max_bonus, reward_for
from crowdloop.storage import write_json

ROUNDING_SLACK = 0.01  # a round's fees are rounded to the cent once: at most half a cent more


def expected_task_seconds(p: Project, r: int) -> float:
    """Seconds a task of round ``r`` is expected to take: the median measured before it, or the pilot."""
    return expected_seconds(p.config.pay, [a.duration_s for a in p.annotations() if a.round < r])


def judgments_before(p: Project, r: int) -> int:
    """Human judgments bought before round ``r``, gold and audit included (what ``judgment_budget`` counts)."""
    return sum(1 for a in p.annotations() if a.round < r)


def next_batch_size(p: Project, r: int) -> tuple[int, str | None]:
    """Items to pick in round ``r`` and, when it is 0, the stopping reason."""
    cfg = p.config
    stop = cfg.stopping
    if stop.max_rounds is not None and r >= stop.max_rounds:
        return 0, f"max_rounds={stop.max_rounds} reached"
    dispatched = p.dispatched_items(before_round=r)
    n_dispatched = len(dispatched)
    remaining_pool = len(p.pool) - len(dispatched | p.reserved_items() | p.reviewed_items())
    size = min(p.initial_size if r == 0 else cfg.sampler.batch_size, remaining_pool)
    # Adaptive redundancy: re-asks of earlier items go on after the item budget is spent.
    reasks = len(reask_plan(p, r)) if cfg.consensus.adaptive and r > 0 else 0
    drain = None
    if remaining_pool == 0:
        drain = "pool exhausted: every item has been dispatched"
    elif stop.label_budget is not None:
        left = stop.label_budget - n_dispatched
        if left <= 0:
            drain = f"label_budget={stop.label_budget} items reached"
        size = min(size, max(left, 0))
    if drain:
        if not reasks:
            return 0, drain
        size = 0
    redundancy = cfg.consensus.first_judgments
    if stop.judgment_budget is not None:
        left = stop.judgment_budget - judgments_before(p, r) - reasks
        # ``left`` already counts this round's re-asks: 0 left means they fit exactly (a budget may be
        # used up, never passed, as a whole item may take the last ``redundancy`` judgments)
        if left < 0:
            return 0, f"judgment_budget={stop.judgment_budget} reached"
        wanted = size > 0
        size = min(size, left // redundancy)
        # gold questions mixed into the batch are judgments too (``redundancy`` each), as the money
        # branch counts them: shrink until items and gold fit what is left
        while size > 0 and (size + _gold_tasks(p, size + reasks)) * redundancy > left:
            size -= 1
        # not one wanted item fits (or nothing is left to ask): reached; else a re-ask-only round
        if size == 0 and (wanted or not reasks):
            need = (1 + _gold_tasks(p, 1 + reasks)) * redundancy
            return 0, (f"judgment_budget={stop.judgment_budget} reached: {left} judgment(s) left, one more item "
                       f"takes {need}")
    if stop.money_budget is not None:
        left = stop.money_budget - p.spent(r)
        costs = _round_costs(p, r)
        affordable = _affordable_items(p, costs, size, reasks, left)
        if affordable is None or (affordable == 0 and (size > 0 or not reasks)):
            # say what is left and what the next step costs: a budget too small for one item stops
            # before anything is spent, and "reached" alone reads as if it had been spent
            cur = cfg.pay.currency
            what = (f"this round's {reasks} re-ask(s) cost up to {_batch_cost(p, costs, 0, reasks):.2f} {cur}"
                    if affordable is None else f"one more item costs up to {_batch_cost(p, costs, 1, reasks):.2f} {cur}")
            return 0, f"money_budget={stop.money_budget:g} {cur} reached: {max(left, 0):.2f} {cur} left, {what}"
        size = affordable
    return size, None


def worst_judgment_cost(p: Project, reward: float, n_assignments_per_task: int) -> float:
    """The most one judgment paid ``reward`` can cost: the reward, the largest top-up bonus and the
    vendor's fee on each (its own rule: MTurk charges at least $0.01 per assignment and per bonus).
    A vendor that pays a judgment more than the task's reward (Prolific pays whole minutes) says so
    with ``price_for(reward, hourly_wage)``; the step ``pay`` tops up against that price and the
    time it pays for (``engine/payment.py``)."""
    paid = p.judgment_price(reward)
    bonus = max_bonus(p.config.pay, paid)
    return paid + p.fee_for(paid, n_assignments_per_task) + (bonus + p.fee_for(bonus, 1) if bonus else 0.0)


def _gold_tasks(p: Project, n_tasks: int) -> int:
    """The most gold tasks ``plan_gold`` mixes into a batch of ``n_tasks`` other tasks."""
    share = p.config.gold.share
    if share <= 0 or n_tasks == 0:
        return 0
    return min(len(p.gold_set), math.ceil(share * n_tasks / (1 - share)))


@dataclass(frozen=True)
class _RoundCosts:
    """Round ``r``'s reward and the worst cost of one judgment of a new item and of a re-ask; found
    once per plan (it reads every annotation and the earlier dispatch records)."""

    reward: float
    new: float
    reask: float


def _round_costs(p: Project, r: int) -> _RoundCosts:
    reward = reward_for(expected_task_seconds(p, r), p.config.pay.hourly_wage)
    # A re-ask may be added to the item's earlier task (MTurk: more assignments on its HIT) and be paid that task's reward.
    earlier = [d["reward"] for q in range(r) if (d := p.record(q, keys.DISPATCH, default=None))]
    return _RoundCosts(reward, worst_judgment_cost(p, reward, p.config.consensus.first_judgments),
                       worst_judgment_cost(p, max([reward, *earlier]), 1))


def _batch_cost(p: Project, costs: _RoundCosts, n_items: int, reasks: int) -> float:
    """The most a batch of ``n_items`` new items and ``reasks`` re-asks can cost, gold questions
    and a cent of rounding included."""
    first = p.config.consensus.first_judgments
    return (n_items * first * costs.new + reasks * costs.reask + _gold_tasks(p, n_items + reasks) * first * costs.new
            + ROUNDING_SLACK)


def _affordable_items(p: Project, costs: _RoundCosts, size: int, reasks: int, left: float) -> int | None:
    """The most new items (at most ``size``) a round at ``costs`` can send with ``reasks`` re-asks
    without spending more than ``left`` at worst; None when the re-asks alone do not fit."""
    if _batch_cost(p, costs, 0, reasks) > left and reasks:
        return None
    n = size
    while n > 0 and _batch_cost(p, costs, n, reasks) > left:
        n -= 1
    return n


def audit_allowance(p: Project, r: int, selection: dict[str, Any], judgments_per_task: int) -> tuple[int, str] | None:
    """The most judgments the accuracy audit may add to round ``r``'s batch, and why, when a
    ``judgment_budget`` or ``money_budget`` is set (None: no such budget).

    The audit rides in the batch the selection planned (``engine/auditing.py``), after the batch
    was sized to the budget; without this cap its items would be bought on top, and a budget
    could be passed by the audit's share of the last round. The selection's batch is counted at
    its worst case first, so the audit only takes what is left."""
    stop = p.config.stopping
    first = p.config.consensus.first_judgments
    n_items, reasks = len(selection["item_ids"]), len(selection.get("reask", []))
    allowance: tuple[int, str] | None = None
    if stop.judgment_budget is not None:
        planned = (n_items + len(selection.get("gold", []))) * first + reasks
        left = stop.judgment_budget - judgments_before(p, r) - planned
        allowance = (max(left, 0), f"judgment_budget={stop.judgment_budget}")
    if stop.money_budget is not None:
        costs = _round_costs(p, r)
        left_money = stop.money_budget - p.spent(r) - _batch_cost(p, costs, n_items, reasks)
        # a judgment costs at least its reward, and a reward at least a cent (pay.reward_for)
        affordable = max(math.floor(left_money / worst_judgment_cost(p, costs.reward, judgments_per_task)), 0)
        if allowance is None or affordable < allowance[0]:
            allowance = (affordable, f"money_budget={stop.money_budget:g} {p.config.pay.currency}")
    return allowance


def stop_reason(p: Project, r: int, metrics: dict[str, Any]) -> str | None:
    """Why the loop stops after evaluating round ``r`` with ``metrics`` (None: go on); the reason
    names the rule and its figure.

    Recorded in ``stop.json``; a resumed run whose raised limits let it go on deletes it.
    """
    reason = target_reached(p, metrics) or predictions_stable(p, r)
    if reason is None:
        _, reason = next_batch_size(p, r)
    if reason:
        write_json(p.store, keys.STOP, {"round": r, "reason": reason})
    else:
        p.store.delete(keys.STOP)
    return reason


def check_stop(p: Project, r: int) -> dict[str, Any]:
    """The stop step: reads round ``r``'s metrics record; ``{"round", "stop_reason"}``."""
    metrics = p.require(r, keys.METRICS, step="stop")
    return {"round": r, "stop_reason": stop_reason(p, r, metrics)}


def target_reached(p: Project, metrics: dict[str, Any]) -> str | None:
    """``stopping.target_accuracy`` on the test accuracy, or, when the pool has no ground truth,
    on the lower bound of the accuracy estimated from the audit (``evaluation``)."""
    target = p.config.stopping.target_accuracy
    if target is None:
        return None
    if metrics.get("accuracy") is not None:
        if metrics["accuracy"] >= target:
            return f"target_accuracy={target} reached ({metrics['accuracy']:.4f})"
        return None
    low = metrics.get("ci_low")
    if low is not None and low >= target:
        return (f"target_accuracy={target} reached by the estimate's lower bound: {low:.4f} "
                f"(estimated accuracy {metrics['estimated_accuracy']:.4f}, 95% interval {low:.4f}-"
                f"{metrics['ci_high']:.4f}, {metrics['n_eval_labels']} audit labels)")
    return None


# kappas are recorded to 6 decimals; a mean short of the agreement by float rounding alone (three
# kappas of 0.99 average to 0.98999999...) reaches it
KAPPA_SLACK = 1e-9


def predictions_stable(p: Project, r: int) -> str | None:
    """``stopping.stabilizing_predictions``: Cohen's kappa between consecutive models on the stop
    set at least ``agreement`` in each of the last ``rounds`` rounds (Bloodgood & Vijay-Shanker,
    2009), or, with ``average``, their mean at least ``agreement`` (small-text's ``KappaAverage``):
    one round's dip, which a few flipped stop-set items make, then lowers the mean a little
    instead of restarting the count. Reads the kappas the evaluate step recorded."""
    rule = p.config.stopping.stabilizing_predictions
    if rule is None or r + 1 < rule.rounds:
        return None
    kappas = [(p.record(q, keys.METRICS, default=None) or {}).get("stability_kappa") for q in range(r - rule.rounds + 1, r + 1)]
    if any(k is None for k in kappas):
        return None
    shown = ", ".join(f"{k:.4f}" for k in kappas)
    where = f"on a {len(p.stop_set_rows)}-item stop set"
    if rule.average:
        mean = math.fsum(kappas) / len(kappas)
        if mean + KAPPA_SLACK < rule.agreement:
            return None
        return (f"stabilizing_predictions (average): mean Cohen's kappa between consecutive models {mean:.4f} >= "
                f"{rule.agreement} over {rule.rounds} rounds ({shown}) {where}")
    if any(k < rule.agreement for k in kappas):
        return None
    return (f"stabilizing_predictions: Cohen's kappa between consecutive models {shown} >= {rule.agreement} "
            f"for {rule.rounds} rounds {where}")
