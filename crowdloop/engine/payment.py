"""Step ``pay``: approve round ``r``'s work, top up slow tasks to the target wage, account the money.

The pay policy itself lives in ``crowdloop/pay.py``; rejections only ever come with gold
evidence (``consensus/policy.py``). Vendor calls are idempotent (decisions and bonuses are
keyed by assignment ids and a token), and ``pay.json`` is written last, so a crash anywhere
in between re-runs the step without paying twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crowdloop import keys
from crowdloop.engine.project import Project, write_once
from crowdloop.engine.quality import gold_rejections
from crowdloop.pay import fee_function, fees_due, settle_batch
from crowdloop.records import Annotation, utcnow


def pay(p: Project, r: int) -> dict[str, Any]:
    """Approve round ``r``'s assignments, top up when work took longer than paid for, account money."""
    done = p.record(r, keys.PAY, default=None)
    if done is not None:
        return done
    intent = p.require(r, keys.DISPATCH, step="pay")
    p.require(r, keys.COLLECTED, step="pay")
    batch = [a for a in p.annotations() if a.batch_id == intent["batch_id"]]
    deadline_s = p.config.pay.approval_deadline_h * 3600.0
    now = utcnow()
    vendor = p.vendor
    rejections, withheld = _rejections_in_time(p, r, batch, now, deadline_s, getattr(vendor, "auto_approval_s", None))
    rejected_ids = {aid for rej in rejections for aid in rej["assignment_ids"]}
    mine = [a for a in batch if a.assignment_id not in rejected_ids]
    replicas = {t["item_id"]: t["replicas"] for t in intent["tasks"]}
    fee_for, fee_source = fee_function(p.config.pay, intent["vendor"], p.vendor_class)
    # Each assignment at the reward it carries (a re-ask added to an earlier task keeps that task's reward).
    paid = [(a.reward, replicas.get(a.item_id, 1)) for a in mine]
    # A vendor may pay a judgment more than its reward (Prolific: whole minutes); the top-up then
    # covers only time beyond what that price pays for at the wage (without such a rule: the estimate).
    reward = p.judgment_price(intent["reward"])
    covered = intent["estimated_seconds"]
    if p.prices_judgments:
        covered = max(covered, reward * 3600.0 / p.config.pay.hourly_wage)
    settled = settle_batch(p.config.pay, reward=reward, estimated_seconds=covered,
                           durations=[a.duration_s for a in mine], fee_for=fee_for, assignments=paid)
    vendor.acknowledge(mine, accept=True)
    for rej in rejections:  # only ever with gold evidence, and the reason names the missed gold items
        vendor.acknowledge([a for a in batch if a.assignment_id in set(rej["assignment_ids"])], accept=False,
                           reason=rej["reason"])
    bonus_paid = 0.0
    if settled.bonus_per_assignment > 0 and callable(getattr(vendor, "bonus", None)):
        vendor.bonus(
            mine, amount=settled.bonus_per_assignment, token=f"{intent['batch_id']}-topup",
            reason=(f"Top-up: these tasks took a median {settled.median_seconds:.0f}s, more than the "
                    f"{settled.estimated_seconds:.0f}s we paid for; this brings your pay to the target wage."),
        )
        bonus_paid = settled.bonuses
    # One fee per assignment and one per bonus payment, by the vendor's own rule (MTurk: $0.01 at least).
    fees = fees_due(fee_for, paid, [settled.bonus_per_assignment] * len(mine) if bonus_paid else [])
    record = {
        "round": r, "n_approved": len(mine), "n_rejected": len(rejected_ids), "reward": intent["reward"],
        "rewards": settled.rewards, "bonus_per_assignment": settled.bonus_per_assignment if bonus_paid else 0.0,
        "bonuses": bonus_paid, "fees": fees, "total": round(settled.rewards + bonus_paid + fees, 2),
        "median_seconds": round(settled.median_seconds, 3), "estimated_seconds": settled.estimated_seconds,
        "work_seconds": round(sum(a.duration_s for a in mine), 3),
        "approval_deadline_h": p.config.pay.approval_deadline_h,
        "n_late": sum(1 for a in batch if (now - a.submitted_at).total_seconds() > deadline_s),
        "fee_rule": fee_source,
    }
    if rejections:
        record["rejections"] = rejections
    if withheld:
        record["late_rejections_withheld"] = withheld
    write_once(p.store, keys.round_key(r, keys.PAY), record)
    return record


def _rejections_in_time(p: Project, r: int, batch: list[Annotation], now: datetime, deadline_s: float,
                        auto_approval_s: float | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Round ``r``'s gold rejections, split into those still due and those withheld as too late.

    Work is approved or rejected within ``pay.approval_deadline_h`` of its submission (sooner if
    the vendor approves unreviewed work on its own, MTurk's auto-approval: a rejection then
    fails). Past that the only decision left is to approve: a rejection touching any such work
    is withheld, the worker's work in the batch approved and paid, and ``pay.json`` lists it
    with its evidence. Lateness only grows, so a rerun never rejects what a run withheld (the
    converse, a rejection sent just before a crash and a rerun past the deadline, leaves the
    vendor's rejection standing: a vendor never decides an assignment twice).
    """
    limit = deadline_s if auto_approval_s is None else min(deadline_s, auto_approval_s)
    too_late = {a.assignment_id for a in batch if (now - a.submitted_at).total_seconds() > limit}
    due: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    for rejection in gold_rejections(p, r, batch):
        (withheld if too_late.intersection(rejection["assignment_ids"]) else due).append(rejection)
    return due, withheld
