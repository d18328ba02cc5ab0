"""Approval before real money: the forecast a person approves, and the approvals on record.

A vendor that spends real money (``vendor.real_money``: MTurk production, never its sandbox,
the simulated crowd or the local app) needs a person's yes before a run's first dispatch. The
person sees what the next rounds would cost at today's reward and approves a money budget;
that budget becomes ``stopping.money_budget``, so the stop rule (``engine/budget.py``) is what
holds the run to it. Approvals are create-only records under ``approvals/``: a later run whose
budget is within the latest approval goes on without asking again (a scheduled run at 06:00
does not wait for somebody to click), and one that asks for more asks again.

Who asks is the caller's business: the flow pauses for a form in the Prefect UI
(``crowdloop.flows.approval``), ``crowdloop run`` asks on the terminal or takes ``--yes``.
"""

from __future__ import annotations

import math
from typing import Any

from crowdloop import keys
from crowdloop.engine.budget import expected_task_seconds, next_batch_size, worst_judgment_cost
from crowdloop.engine.project import Project, _utc_stamp, write_once
from crowdloop.pay import fee_function, reward_for
from crowdloop.records import utcnow
from crowdloop.storage import read_json

# Rounds forecast when the config sets no max_rounds (the stop rule may end the run sooner).
HORIZON_ROUNDS = 5


def spends_real_money(p: Project) -> bool:
    """Whether ``p``'s vendor moves real money (it says so itself; unknown vendors: no)."""
    return bool(getattr(p.vendor, "real_money", False))


def forecast_spend(p: Project, r: int) -> dict[str, Any]:
    """What rounds ``r``, ``r+1``, ... would cost at today's reward, until a budget or the horizon.

    Per round: new items, their judgments (gold questions added at ``gold.share``) and money
    with the vendor's fee. An estimate to approve, not a bill: re-asks of adaptive redundancy
    and wage top-ups come on top when they happen, and the money budget caps them all.
    """
    cfg = p.config
    stop = cfg.stopping
    last = stop.max_rounds if stop.max_rounds is not None else r + HORIZON_ROUNDS
    seconds = expected_task_seconds(p, r)
    reward = reward_for(seconds, cfg.pay.hourly_wage)
    replicas = cfg.consensus.first_judgments
    fee = p.fee_for(reward, replicas)  # the vendor's own rule, minimums included: what the ledger will book
    fee_rule = fee_function(cfg.pay, cfg.vendor.name, p.vendor_class)[1]
    dispatched = len(p.dispatched_items(before_round=r))
    items_left = len(p.pool) - len(p.gold_set) - dispatched
    if stop.label_budget is not None:
        items_left = min(items_left, stop.label_budget - dispatched)
    spent = p.spent(r)
    money_left = math.inf if stop.money_budget is None else stop.money_budget - spent
    rounds: list[dict[str, Any]] = []
    total = 0.0
    worst = 0.0  # every judgment with its largest top-up bonus: what the budget planner reserves
    for k in range(r, last):
        size = min(p.initial_size if k == 0 else cfg.sampler.batch_size, items_left)
        if size <= 0:
            break
        judgments = size * replicas
        if cfg.gold.enabled:
            judgments = math.ceil(judgments / (1 - cfg.gold.share))
        money = round(judgments * (reward + fee), 2)
        capped = total + money > money_left
        if capped:
            money = round(max(money_left - total, 0.0), 2)
        rounds.append({"round": k, "items": size, "judgments": judgments, "money": money, "capped": capped})
        total += money
        worst += judgments * worst_judgment_cost(p, reward, replicas)
        items_left -= size
        if capped:
            break
    worst_case = math.ceil(min(worst, money_left) * 100 - 1e-6) / 100
    return {"round": r, "rounds": rounds, "total": round(total, 2), "worst_case": worst_case,
            "reward": reward, "estimated_seconds": seconds,
            "fee": round(fee, 4), "fee_rule": fee_rule,
            "spent": spent, "money_budget": stop.money_budget, "currency": cfg.pay.currency,
            "vendor": cfg.vendor.name}


def forecast_markdown(forecast: dict[str, Any]) -> str:
    """The forecast as the Markdown a person reads before approving."""
    cur = forecast["currency"]
    budget = forecast["money_budget"]
    lines = [
        f"**Vendor `{forecast['vendor']}` spends real money.** Forecast from round {forecast['round']}: "
        f"**{forecast['total']:.2f} {cur}** expected, at most **{forecast['worst_case']:.2f} {cur}** if every "
        f"judgment earns its largest top-up bonus (what the money budget reserves: a budget below it sends "
        f"fewer items) (reward {forecast['reward']:.2f} {cur} per judgment for "
        f"~{forecast['estimated_seconds']:.0f} s of work, fee {forecast['fee']:.3f} {cur} per judgment "
        f"from {forecast['fee_rule']}; "
        f"spent so far {forecast['spent']:.2f} {cur}; money budget "
        f"{'none' if budget is None else f'{budget:g} {cur}'}).",
        "",
        "| round | items | judgments | money |",
        "|---:|---:|---:|---:|",
    ]
    for row in forecast["rounds"]:
        cap = " (budget reached)" if row["capped"] else ""
        lines.append(f"| {row['round']} | {row['items']} | {row['judgments']} | {row['money']:.2f} {cur}{cap} |")
    lines += ["", "Approve to dispatch; the money budget you approve becomes `stopping.money_budget`, "
              "and the run stops before spending more."]
    return "\n".join(lines)


def latest_approval(p: Project) -> dict[str, Any] | None:
    """The most recent approval on record (None: never approved)."""
    found = p.store.list(keys.APPROVALS)
    return read_json(p.store, found[-1]) if found else None


def covered(p: Project) -> bool:
    """Whether the latest approval covers the project's money budget (none set: the approved one applies)."""
    approved = latest_approval(p)
    budget = p.config.stopping.money_budget
    return approved is not None and (budget is None or budget <= approved["money_budget"] + 1e-9)


def approval_needed(p: Project, r: int) -> dict[str, Any] | None:
    """The forecast to approve before round ``r``'s dispatch, or None when nothing needs approving.

    Nothing does when the vendor spends no real money, round ``r`` is dispatched already or will
    not dispatch (a stop rule holds), or the project's money budget is within the latest
    approval. A project without a money budget of its own runs within the approved one.
    """
    if not spends_real_money(p) or p.has(r, keys.DISPATCH):
        return None
    size, reason = next_batch_size(p, r)
    if reason or size == 0:
        return None
    return None if covered(p) else forecast_spend(p, r)


def record_approval(p: Project, money_budget: float, *, by: str, forecast: dict[str, Any]) -> dict[str, Any]:
    """Write an approval of ``money_budget`` (create-only, one record per approval)."""
    record = {"money_budget": money_budget, "by": by, "at": utcnow().isoformat(), "forecast_total": forecast["total"],
              "round": forecast["round"], "currency": forecast["currency"]}
    write_once(p.store, f"{keys.APPROVALS}{_utc_stamp()}.json", record)
    return record

