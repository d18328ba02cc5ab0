"""Budgets and stopping: how many items round ``r`` may pick, and whether the loop stops.

The stop check runs after ``evaluate`` and is the only step that may end a run. Its answer
depends only on the config's ``stopping`` section and the store, so a resumed run with raised
limits goes on where the old limits stopped it.
"""

from __future__ import annotations

from typing import Any

from crowdloop import keys
from crowdloop.engine.project import Project
from crowdloop.engine.quality import reask_plan
from crowdloop.pay import expected_seconds, reward_for, vendor_fee
from crowdloop.storage import write_json


def expected_task_seconds(p: Project, r: int) -> float:
    """Seconds a task of round ``r`` is expected to take: the median measured before it, or the pilot."""
    return expected_seconds(p.config.pay, [a.duration_s for a in p.annotations() if a.round < r])


def next_batch_size(p: Project, r: int) -> tuple[int, str | None]:
    """Items to pick in round ``r`` and, when it is 0, the stopping reason."""
    cfg = p.config
    stop = cfg.stopping
    if stop.max_rounds is not None and r >= stop.max_rounds:
        return 0, f"max_rounds={stop.max_rounds} reached"
    dispatched = p.dispatched_items(before_round=r)
    n_dispatched = len(dispatched)
    remaining_pool = len(p.pool) - len(dispatched | p.reserved_items())
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
        left = stop.judgment_budget - sum(1 for a in p.annotations() if a.round < r) - reasks
        if left < redundancy and (left < 1 or size > 0 or not reasks):
            return 0, f"judgment_budget={stop.judgment_budget} reached"
        size = min(size, max(left, 0) // redundancy)
    if stop.money_budget is not None:
        fee = vendor_fee(cfg.pay, cfg.vendor.name)
        per_judgment = reward_for(expected_task_seconds(p, r), cfg.pay.hourly_wage) * (1 + fee.rate)
        left = stop.money_budget - p.spent(r) - reasks * per_judgment
        if left < per_judgment * redundancy and (size > 0 or not reasks or left < 0):
            return 0, f"money_budget={stop.money_budget:g} {cfg.pay.currency} reached"
        size = min(size, max(int(left // (per_judgment * redundancy)), 0))
    return size, None


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


def predictions_stable(p: Project, r: int) -> str | None:
    """``stopping.stabilizing_predictions``: Cohen's kappa between consecutive models on the stop
    set at least ``agreement`` in each of the last ``rounds`` rounds (Bloodgood & Vijay-Shanker,
    2009). Reads the kappas the evaluate step recorded."""
    rule = p.config.stopping.stabilizing_predictions
    if rule is None or r + 1 < rule.rounds:
        return None
    kappas = [(p.record(q, keys.METRICS, default=None) or {}).get("stability_kappa") for q in range(r - rule.rounds + 1, r + 1)]
    if any(k is None or k < rule.agreement for k in kappas):
        return None
    shown = ", ".join(f"{k:.4f}" for k in kappas)
    return (f"stabilizing_predictions: Cohen's kappa between consecutive models {shown} >= {rule.agreement} "
            f"for {rule.rounds} rounds on a {len(p.stop_set_rows)}-item stop set")
