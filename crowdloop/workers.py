"""Per-worker accounting: what each worker did, how well, and what they earned per hour.

Built from the store alone (label log, pay and aggregate records), so ``crowdloop workers``
and the per-round Prefect artifact show the same numbers the payments were made with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.engine.project import Project
from crowdloop.engine.quality import blocked_in
from crowdloop.pay import hourly_wage

WORKER_FIELDS = ("worker_id", "judgments", "gold_answers", "gold_accuracy", "reviewed_answers", "reviewer_agreement",
                 "skill", "approved", "rejected", "paid", "work_seconds", "hourly_wage", "blocked")


def worker_accounts(p: Project, *, through_round: int | None = None) -> dict[str, Any]:
    """Rows per worker (sorted by id) and the overall median effective hourly wage."""
    rounds = [r for r in p.rounds() if through_round is None or r <= through_round]
    rejected: set[str] = set()
    bonus_of_batch: dict[str, float] = {}
    paid_rounds: set[int] = set()
    skills: dict[str, float] = {}
    blocked: set[str] = set()
    reviewed: dict[str, dict[str, int]] = {}
    for r in rounds:
        pay = p.record(r, keys.PAY, default=None)
        if pay is not None:
            paid_rounds.add(r)
            bonus_of_batch[p.batch_id(r)] = pay.get("bonus_per_assignment", 0.0)
            for rej in pay.get("rejections", []):
                rejected.update(rej["assignment_ids"])
        agg = p.record(r, keys.AGGREGATE, default=None)
        if agg is not None:
            skills = agg.get("worker_skill", skills)
            blocked = blocked_in(agg)
            # answers on items a reviewer corrected, as the last aggregation saw them (never a reason to block)
            reviewed = agg.get("reviewed", reviewed)
    gold = p.gold_set
    rows: dict[str, dict[str, Any]] = {}
    for a in p.annotations():
        if a.round not in paid_rounds:
            continue
        row = rows.setdefault(a.worker_id, {"worker_id": a.worker_id, "judgments": 0, "gold_answers": 0, "gold_correct": 0,
                                            "approved": 0, "rejected": 0, "paid": 0.0, "work_seconds": 0.0})
        row["judgments"] += 1
        row["work_seconds"] += a.duration_s
        if a.item_id in gold:
            row["gold_answers"] += 1
            row["gold_correct"] += int(a.label == gold[a.item_id])
        if a.assignment_id in rejected:
            row["rejected"] += 1
        else:
            row["approved"] += 1
            row["paid"] += a.reward + bonus_of_batch.get(a.batch_id, 0.0)
    out = []
    for worker in sorted(rows):
        row = rows[worker]
        wage = hourly_wage(row["paid"], row["work_seconds"])
        rev = reviewed.get(worker, {"n_reviewed": 0, "n_agreed": 0})
        out.append({
            "worker_id": worker, "judgments": row["judgments"], "gold_answers": row["gold_answers"],
            "gold_accuracy": round(row["gold_correct"] / row["gold_answers"], 4) if row["gold_answers"] else None,
            "reviewed_answers": rev["n_reviewed"],
            "reviewer_agreement": round(rev["n_agreed"] / rev["n_reviewed"], 4) if rev["n_reviewed"] else None,
            "skill": skills.get(worker), "approved": row["approved"], "rejected": row["rejected"],
            "paid": round(row["paid"], 2), "work_seconds": round(row["work_seconds"], 1),
            "hourly_wage": None if wage is None else round(wage, 2), "blocked": worker in blocked,
        })
    wages = [r["hourly_wage"] for r in out if r["hourly_wage"] is not None]
    return {
        "project": p.config.project, "currency": p.config.pay.currency, "target_wage": p.config.pay.hourly_wage,
        "median_wage": round(float(np.median(wages)), 2) if wages else None,
        "n_workers": len(out), "n_blocked": sum(r["blocked"] for r in out),
        "n_rejected": sum(r["rejected"] for r in out), "workers": out,
    }
