"""The crowd-quality policy (``consensus/policy.py``) applied to a project's store.

These functions gather what the pure policy needs — the label log, the gold set, the latest
aggregated labels, out-of-fold model probabilities — for round ``r`` from records finished
before it, so their answers never change once round ``r`` has started.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from crowdloop import keys
from crowdloop.consensus.adaptive import answered_by, gold_stats
from crowdloop.consensus.collusion import Ring, ring_reason
from crowdloop.consensus.policy import agreement_block_reason, gold_block_reason, plan_gold, reask_items
from crowdloop.consensus.policy import gold_rejections as rejections_for
from crowdloop.engine.project import STREAM_CV, STREAM_GOLD, Project
from crowdloop.records import Annotation


def annotation_table(anns: list[Annotation]) -> pd.DataFrame:
    """The ``task, worker, label`` table aggregators and policies work on."""
    return pd.DataFrame({"task": [a.item_id for a in anns], "worker": [a.worker_id for a in anns],
                         "label": [a.label for a in anns]})


def last_aggregate(p: Project, r: int) -> dict[str, Any]:
    """The summary of the last aggregation before round ``r`` (empty before the first)."""
    for q in range(r - 1, -1, -1):
        summary = p.record(q, keys.AGGREGATE, default=None)
        if summary is not None:
            return summary
    return {}


def blocked_in(summary: dict[str, Any]) -> set[str]:
    """Every worker an aggregation summary blocks: on gold evidence, on low agreement, in a ring."""
    return (set(summary.get("blocked_workers", [])) | set(summary.get("blocked_on_agreement", {}))
            | set(summary.get("blocked_in_rings", [])))


def blocked_workers(p: Project, r: int, *, on: str = "blocked_workers") -> list[str]:
    """Workers blocked as of the last aggregation before round ``r``: on gold evidence
    (``blocked_workers``) or on low agreement with the aggregated truth (``blocked_on_agreement``)."""
    return sorted(last_aggregate(p, r).get(on, []))


def rings_found(p: Project, r: int) -> list[dict[str, Any]]:
    """Rings of colluders the last aggregation before round ``r`` found, as evidence records
    (members, shared items, agreements, the agreements the model predicted)."""
    return list(last_aggregate(p, r).get("rings", []))


def block_decisions(p: Project, r: int) -> dict[str, str]:
    """Workers to block before round ``r`` is sent, each with the reason they are told: the
    evidence from the last aggregation (their gold answers, their agreement with the consensus,
    or — with ``consensus.block_rings`` — their ring's agreements against the model's prediction)."""
    summary = last_aggregate(p, r)
    out: dict[str, str] = {}
    if p.config.gold.enabled:
        gold = summary.get("gold", {})
        for worker in sorted(summary.get("blocked_workers", [])):
            stats = gold.get(worker, {})
            out[worker] = gold_block_reason(p.config.gold.min_accuracy, n_gold=stats.get("n_gold"),
                                            n_correct=stats.get("n_correct"))
    threshold = p.config.consensus.block_below_agreement
    if threshold is not None:
        for worker, agreement in sorted(summary.get("blocked_on_agreement", {}).items()):
            out.setdefault(worker, agreement_block_reason(threshold, agreement=agreement))
    if p.config.consensus.block_rings:
        for ring in summary.get("rings", []):
            reason = ring_reason(Ring.from_record(ring))
            for worker in ring["workers"]:
                out.setdefault(worker, reason)
    return out


def workers_left(workforce: int, answered: Iterable[str], blocked: set[str]) -> int:
    """How many of a known workforce can still judge an item: each judgment of an item comes
    from another worker, and a blocked worker gets no task."""
    return workforce - len(set(answered) | blocked)


def gold_plan(p: Project, r: int, n_tasks: int) -> list[dict[str, Any]]:
    """Round ``r``'s gold tasks for a batch of ``n_tasks`` other tasks.

    A gold item goes only to workers who have not answered it, so it wears out: with a vendor of
    known ``workforce`` (a small in-house team, the simulated crowd), an item left with fewer such
    workers, blocked ones aside, than a task's judgments is not asked again (before, its task
    could never be answered: the local app's round waited for ``collect.timeout_s``, the simulated
    crowd failed the dispatch). With every item worn out the batch goes without gold.
    """
    rng = p.rng(r, STREAM_GOLD)
    items = sorted(p.gold_set)
    anns = [a for a in p.annotations() if a.round < r and a.item_id in p.gold_set]
    answered = answered_by(annotation_table(anns), items) if anns else {}
    first = p.config.consensus.first_judgments
    limit = getattr(p.vendor, "max_judgments_per_item", None)  # MTurk: a HIT is never extended to 10 assignments
    if limit is not None:
        items = [i for i in items if len(answered.get(i, ())) + first <= limit]
    workforce = getattr(p.vendor, "workforce", None)
    if workforce is not None:
        blocked = set(block_decisions(p, r))
        items = [i for i in items if workers_left(workforce, answered.get(i, ()), blocked) >= first]
    return plan_gold(items, answered, n_tasks=n_tasks, share=p.config.gold.share, rng=rng)


def oof_proba(p: Project, r: int) -> tuple[list[str], np.ndarray, list[str]] | None:
    """Out-of-fold class probabilities of the human-labeled items before round ``r``.

    Each item's probability comes from a model that never saw its (noisy) label, as
    CROWDLAB and Ground Truth's calibration need. Deterministic from (seed, r, store).
    Returns (item ids, probabilities, class order), or None with too few labels.
    """
    if ("oof", r) in p.cache:
        return p.cache[("oof", r)]
    from sklearn.base import clone
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    labels = sorted(p.human_labels(before_round=r), key=lambda label: label.item_id)
    y = np.array([label.label for label in labels], dtype=object)
    result = None
    classes, counts = np.unique(y, return_counts=True) if len(y) else (np.array([]), np.array([]))
    folds = min(p.config.autolabel.folds, len(y))
    if len(classes) >= 2 and folds >= 2:
        idx = p.rows_of([label.item_id for label in labels])
        seed = int(p.rng(r, STREAM_CV).integers(2**31))
        cv = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.min() >= folds
              else KFold(folds, shuffle=True, random_state=seed))
        proba = cross_val_predict(clone(p.model_template), p.pool.X[idx], y, cv=cv, method="predict_proba")
        result = ([label.item_id for label in labels], proba, [str(c) for c in classes])
    p.cache[("oof", r)] = result
    return result


def reask_plan(p: Project, r: int) -> list[dict[str, Any]]:
    """Items that get one more judgment in round ``r`` (adaptive redundancy), with who to avoid."""
    if ("reask", r) in p.cache:
        return p.cache[("reask", r)]
    cfg = p.config.consensus
    # a reviewer's correction is final: such an item is never asked again (crowdloop/corrections.py)
    labels = sorted((label for label in p.human_labels(before_round=r) if label.source != "reviewed"),
                    key=lambda label: label.item_id)
    plan: list[dict[str, Any]] = []
    if labels:
        model_proba = None
        if cfg.model_weight > 0:
            oof = oof_proba(p, r)
            if oof is not None:
                ids, proba, classes = oof
                row = {i: k for k, i in enumerate(ids)}
                col = {c: k for k, c in enumerate(classes)}
                model_proba = np.array([proba[row[lab.item_id], col[lab.label]] if lab.label in col else 0.0
                                        for lab in labels])
        items = reask_items([lab.item_id for lab in labels], np.array([lab.confidence for lab in labels]),
                            np.array([lab.n_annotations for lab in labels]), threshold=cfg.confidence_threshold,
                            max_judgments=cfg.most_judgments, n_classes=len(p.classes), model_weight=cfg.model_weight,
                            model_proba_of_label=model_proba)
        if items:
            seen = answered_by(annotation_table([a for a in p.annotations() if a.round < r]), items)
            plan = [{"item_id": i, "exclude_workers": seen[i]} for i in items]
    p.cache[("reask", r)] = plan
    return plan


def gold_rejections(p: Project, r: int, batch: list[Annotation]) -> list[dict[str, Any]]:
    """Round ``r``'s rejections (only with ``gold.reject_below`` set and gold evidence in ``batch``)."""
    g = p.config.gold
    if g.reject_below is None or not p.gold_set:
        return []
    overall = gold_stats(annotation_table([a for a in p.annotations() if a.round <= r]), p.gold_set)
    return rejections_for(batch, overall, p.gold_set, reject_below=g.reject_below, min_answers=g.min_answers,
                          level=g.evidence_level)
