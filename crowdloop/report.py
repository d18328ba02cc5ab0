"""Reports over a project store: the ``status`` JSON, metrics files and the learning curve.

``status()`` is read by scripts and checks, so its keys are stable (documented in the
README): ``rounds`` is a list of ``{round, n_labeled, n_judgments, cost, accuracy}`` and
``reference_accuracy`` is the accuracy of the same model on the whole pool with true labels.
Rounds also carry ``n_imported`` (seed labels, never bought), ``estimated_accuracy``,
``ci_low``, ``ci_high``, ``n_eval_labels`` and ``audit_cost`` (the accuracy audit of
``evaluation``, its cost apart from the labels bought for training) and ``stability_kappa``
(``stopping.stabilizing_predictions``); each is null where the project does not use it.
``awaiting_decision`` lists submissions a vendor holds undecided, with the money at stake
(``crowdloop settle``).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from crowdloop import keys
from crowdloop.engine.project import Project
from crowdloop.export import export_labels_manifest
from crowdloop.pay import hourly_wage
from crowdloop.records import to_jsonl
from crowdloop.storage import read_json

ROUND_FIELDS = ("round", "n_labeled", "n_judgments", "cost", "accuracy")
# Added by issue 15 (your own data): imported seed labels, the accuracy audit, prediction stability.
OWN_DATA_FIELDS = ("n_imported", "estimated_accuracy", "ci_low", "ci_high", "n_eval_labels", "audit_judgments",
                   "audit_cost", "stability_kappa")


def _rounds(p: Project) -> list[dict[str, Any]]:
    return [{k: m.get(k) for k in (*ROUND_FIELDS, *OWN_DATA_FIELDS)} for m in p.metrics()]


def totals(p: Project) -> dict[str, Any]:
    rounds = p.rounds()
    paid = work = 0.0
    for r in rounds:
        pay = p.record(r, keys.PAY, default=None)
        if pay:
            paid += pay["rewards"] + pay["bonuses"]
            work += pay["work_seconds"]
    after = (rounds[-1] + 1) if rounds else 0
    labels = p.human_labels(before_round=after)
    audit_judgments, audit_cost = _audit_spend(p, after)
    return {
        "n_labeled": len(labels),
        "n_imported": len(p.seed_labels),
        "n_reviewed": sum(label.source == "reviewed" for label in labels),  # a reviewer's corrections (training items)
        "audit_judgments": audit_judgments,
        "audit_cost": audit_cost,
        "n_judgments": len(p.annotations()),
        "cost": p.spent(rounds[-1] + 1) if rounds else 0.0,
        "paid_to_workers": round(paid, 2),
        "work_seconds": round(work, 1),
        "effective_hourly_wage": None if work == 0 else round(hourly_wage(paid, work), 2),
    }


def status(p: Project) -> dict[str, Any]:
    """The project's state as one JSON-ready dict (see the module docstring for the schema)."""
    ref = read_json(p.store, keys.REFERENCE, default={}) or {}
    stop = read_json(p.store, keys.STOP, default=None)
    baseline = None
    if p.config.baseline.random:
        twin = p.baseline()
        if twin.store.exists(keys.round_key(0, keys.METRICS)):
            baseline = {"strategy": "random", "rounds": _rounds(twin)}
    return {
        "project": p.config.project,
        "store": p.store.url,
        "sampler": p.config.sampler.name,
        "vendor": p.config.vendor.name,
        "consensus": p.config.consensus.method,
        "currency": p.config.pay.currency,
        "rounds": _rounds(p),
        "reference_accuracy": ref.get("accuracy"),
        "finished": stop is not None,
        "stop_reason": None if stop is None else stop["reason"],
        "totals": totals(p),
        "baseline": baseline,
        # Added by crowd-quality features; ``rounds`` keeps counting human-labeled items only.
        "machine_labels": _machine_labels(p),
        "workers": _workers_summary(p),
        # Added by the self-measuring sampler (``sampler.name: auto``): each round's split and its evidence.
        "selection_policy": _selection_policy(p),
        # Added with Prolific's settle: paid work that waits for somebody's decision (money at stake).
        "awaiting_decision": _awaiting_decision(p),
        # Added with the agreement report: how far annotators agree beyond chance, where they split.
        "annotator_agreement": annotator_agreement(p),
        # Added with pools that grow in place: what the figures drawn at the start still cover.
        "pool_growth": pool_growth(p),
    }


def pool_growth(p: Project) -> dict[str, Any] | None:
    """None unless the pool grew since the project started; else the pool items then and now.
    The audit reserve, the stop set and the whole-pool reference were drawn over the items it
    started with, so the accuracy estimate speaks for those (docs/own_data.md, 'When the pool grows')."""
    if len(p.pool) <= p.items_at_start:
        return None
    return {"items_at_start": p.items_at_start, "items_now": len(p.pool),
            "estimate_covers": "items_at_start" if p.config.evaluation.enabled else None}


def annotator_agreement(p: Project) -> dict[str, Any] | None:
    """Krippendorff's alpha of every item's first ask (``crowdloop.consensus.agreement``), the class
    pairs annotators split between, and alpha per round; None while no item got two judgments at once
    (redundancy 1, or adaptive redundancy starting from one)."""
    from crowdloop.consensus.agreement import agreement_by_round, first_asked, krippendorff_alpha
    from crowdloop.engine.quality import annotation_table, blocked_in, last_aggregate

    anns = p.annotations()
    if not anns:
        return None
    table = annotation_table(anns).assign(round=[a.round for a in anns])
    first = first_asked(table)
    overall = krippendorff_alpha(first)
    if overall is None:
        return None
    out = {**overall.as_record(), "basis": "first ask", "rounds": agreement_by_round(table)}
    # the same without the workers the quality policy blocked: careless workers, or the task itself?
    rounds = p.rounds()
    last = last_aggregate(p, rounds[-1] + 1) if rounds else {}
    blocked = blocked_in(last) & set(first["worker"])
    if blocked:
        rest = krippendorff_alpha(first[~first["worker"].isin(blocked)], top_splits=0)
        out["without_blocked"] = {"n_blocked": len(blocked),
                                  "alpha": None if rest is None or rest.alpha is None else round(rest.alpha, 4)}
    return out


def _awaiting_decision(p: Project) -> list[dict[str, Any]]:
    """Submissions the vendor holds undecided (Prolific: came back without an answer in the app),
    each with ``at_stake`` (reward + fee) and the day the platform would approve it on its own;
    ``crowdloop settle --unmatched`` decides them. Empty for vendors that have none."""
    if not callable(getattr(p.vendor_class, "unmatched_pending", None)):
        return []
    keep = ("submission_id", "participant_id", "batch_id", "problem", "at_stake", "auto_approval_after")
    return [{k: w.get(k) for k in keep} for w in p.vendor.unmatched_pending()]


def round_table(p: Project) -> list[dict[str, Any]]:
    """Per-round rows for dashboards: the status fields plus that round's workers' wage. Columns
    of features the project does not use (seed labels, the audit, prediction stability) are left out."""
    used = _used_fields(p)
    rows = []
    for row in _rounds(p):
        pay = p.record(row["round"] - 1, keys.PAY, default=None) if row["round"] else None
        wage = None
        if pay and pay["work_seconds"] > 0:
            wage = round(hourly_wage(pay["rewards"] + pay["bonuses"], pay["work_seconds"]), 2)
        shown = {k: v for k, v in row.items() if k in ROUND_FIELDS or k in used}
        for k in ("accuracy", "estimated_accuracy", "ci_low", "ci_high", "stability_kappa"):
            if shown.get(k) is not None:
                shown[k] = round(shown[k], 4)
        rows.append({**shown, "wage_per_hour": wage, **_selection_summary(p, row["round"])})
    return rows


def _used_fields(p: Project) -> set[str]:
    """The issue-15 round fields this project fills in."""
    used: set[str] = set()
    if p.config.pool.seed_labels is not None:
        used.add("n_imported")
    if p.config.evaluation.enabled:
        used.update(("estimated_accuracy", "ci_low", "ci_high", "n_eval_labels", "audit_judgments", "audit_cost"))
    if p.config.stopping.stabilizing_predictions is not None:
        used.add("stability_kappa")
    return used


def _audit_spend(p: Project, before_round: int) -> tuple[int, float]:
    from crowdloop.engine.auditing import audit_spend

    return audit_spend(p, before_round) if p.config.evaluation.enabled else (0, 0.0)


def _selection_summary(p: Project, r: int) -> dict[str, Any]:
    """How round ``r`` chose its items: the strategy and, for a self-measuring sampler, items per
    arm and the evidence behind the split (audit accuracy of each arm's picks)."""
    sel = p.record(r, keys.SELECTION, default=None)
    out: dict[str, Any] = {"strategy": None if sel is None else sel["strategy"]}
    policy = (sel or {}).get("policy")
    if policy is not None or p.config.sampler.name == "auto":  # a table keeps one set of columns
        out["arms"] = out["arm_evidence"] = None
    if policy:  # plain text: the round table is shown as a table (Prefect artifact, CSV)
        out["arms"] = ", ".join(f"{a} {n}" for a, n in policy["slots"].items() if n)
        acc = ", ".join(f"{a} {v:.3f}" for a, v in policy["audit_accuracy"].items() if v is not None)
        out["arm_evidence"] = (f"audit of {policy['n_audit']}: {acc} at {policy['compared_at']} picks each" if acc
                               else f"audit of {policy['n_audit']}: exploring")
    return out


def _selection_policy(p: Project) -> list[dict[str, Any]] | None:
    """Every round's decision of a self-measuring sampler (None for fixed samplers)."""
    rows = [{"round": r, **sel["policy"], "picked": {a: len(ids) for a, ids in sel.get("picked_by", {}).items()}}
            for r in p.rounds() if (sel := p.record(r, keys.SELECTION, default=None)) and sel.get("policy")]
    return rows or None


def _machine_labels(p: Project) -> dict[str, Any] | None:
    """Auto-labeling per round (threshold, count, estimated accuracy), reported apart from human labels."""
    if not p.config.autolabel.enabled:
        return None
    rows = [a for r in p.rounds() if (a := p.record(r, keys.AUTOLABEL, default=None))]
    return {"target_accuracy": p.config.autolabel.target_accuracy, "used_in_training": p.config.autolabel.use_in_training,
            "n_machine_labeled": rows[-1]["n_machine"] if rows else 0, "rounds": rows}


def _workers_summary(p: Project) -> dict[str, Any]:
    from crowdloop.workers import worker_accounts

    acc = worker_accounts(p)
    return {k: acc[k] for k in ("n_workers", "n_blocked", "n_rejected", "median_wage", "target_wage")}


def metrics_csv(rows: list[dict[str, Any]]) -> bytes:
    """The rounds as CSV: the stable fields, then every issue-15 field some round fills in."""
    fields = list(ROUND_FIELDS) + [k for k in OWN_DATA_FIELDS if any(row.get(k) is not None for row in rows)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    return buf.getvalue().encode()


def learning_curve_png(state: dict[str, Any]) -> bytes:
    """Test accuracy against human-labeled items, with the random baseline and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)

    def plot(rows, label, style):
        pts = [(r["n_labeled"], r["accuracy"]) for r in rows if r["accuracy"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label, markersize=4)

    plot(state["rounds"], f"crowdloop ({state['sampler']})", "o-")
    estimated = [r for r in state["rounds"] if r.get("estimated_accuracy") is not None]
    if estimated:  # the audit's estimate and its 95 % interval (issue 15)
        x = [r["n_labeled"] for r in estimated]
        ax.fill_between(x, [r["ci_low"] for r in estimated], [r["ci_high"] for r in estimated], alpha=0.2,
                        color="tab:green", label="95% interval (audit)")
        ax.plot(x, [r["estimated_accuracy"] for r in estimated], "^-", color="tab:green", markersize=4,
                label="estimated from human audit labels")
    if state.get("baseline"):
        plot(state["baseline"]["rounds"], "random sampling (same crowd)", "s--")
    if state.get("reference_accuracy") is not None:
        ax.axhline(state["reference_accuracy"], color="grey", linestyle=":", label="whole pool, true labels")
    imported = (state.get("totals") or {}).get("n_imported") or 0
    ax.set_xlabel("human-labeled items bought" + (f" (plus {imported} imported seed labels)" if imported else ""))
    ax.set_ylabel("accuracy" if estimated else "test accuracy")
    ax.set_title(f"{state['project']}: learning curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(p: Project) -> dict[str, Any]:
    """Write the human-readable outputs next to the records; returns the status."""
    state = status(p)
    p.store.write_bytes(keys.OUT_METRICS, json.dumps(state, indent=1).encode())
    p.store.write_bytes(keys.OUT_METRICS_CSV, metrics_csv(state["rounds"]))
    p.store.write_bytes(keys.OUT_LEARNING_CURVE, learning_curve_png(state))
    p.store.write_bytes(keys.OUT_LABELS, export_labels_manifest(p))
    p.store.write_bytes(keys.OUT_ANNOTATIONS, to_jsonl(p.annotations()))
    return state
