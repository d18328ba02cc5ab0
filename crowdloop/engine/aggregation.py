"""Step ``aggregate``: every human judgment so far into one label per item (a snapshot per round).

Gold items measure workers and are never labels; audit items (``evaluation``) measure models
and are written apart, with their posteriors, to ``audit_labels.jsonl``. Besides the labels, the
round's summary records each worker's skill, gold accuracy, the rings of colluders the consensus
model found (with their evidence) and the workers the quality policy stops sending tasks to (on
gold evidence, low agreement, or ring membership with ``consensus.block_rings``); the next
dispatch reads them from here.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from crowdloop import corrections, keys
from crowdloop.consensus.adaptive import gold_stats, low_agreement_workers, workers_to_block
from crowdloop.consensus.collusion import find_rings
from crowdloop.engine.auditing import audit_followers
from crowdloop.engine.project import Project, write_once, write_once_digest
from crowdloop.engine.quality import annotation_table
from crowdloop.records import AggregatedLabel, AuditLabel, to_jsonl


def aggregate(p: Project, r: int) -> dict[str, Any]:
    """Aggregate the label log up to round ``r``; ``labels.jsonl`` and ``aggregate.json``."""
    done = p.record(r, keys.AGGREGATE, default=None)
    if done is not None and p.has(r, keys.LABELS):
        return done
    p.require(r, keys.COLLECTED, step="aggregate")
    anns = [a for a in p.annotations() if a.round <= r]
    method = p.config.consensus.method
    labels: list[AggregatedLabel] = []
    skills: dict[str, float] = {}
    gold = p.gold_set
    extra: dict[str, Any] = {}
    audit = set(p.audit_reserve)
    # a reviewer's corrections win over the consensus (crowdloop/corrections.py); gold is refused when recorded
    read_from, in_force = corrections.read(p)
    fixes = {item: c for item, c in in_force.items() if item not in gold}
    counts: pd.Series = pd.Series(dtype=int)
    if anns:
        table = annotation_table(anns)
        taught = fixes if p.config.consensus.learn_from_corrections else {}
        agg = p.aggregator().fit(table, true_labels=known_truths(table, gold, taught))
        counts = table["task"].value_counts()
        labels = [
            AggregatedLabel(item_id=str(item), label=str(label), confidence=round(float(agg.confidence_[item]), 6),
                            n_annotations=int(counts[item]), method=method, source="human", round=r)
            # gold measures workers; audit items measure models (audit_labels.jsonl): neither trains
            for item, label in agg.labels_.items() if item not in gold and item not in audit
        ]
        if p.config.evaluation.enabled:
            audited = [AuditLabel(item_id=str(item), label=str(agg.labels_[item]), n_annotations=int(counts[item]), round=r,
                                  proba={str(c): round(float(v), 6) for c, v in agg.probas_.loc[item].items()})
                       if item not in fixes else
                       _reviewed_audit_label(str(item), fixes[item], int(counts[item]), r, p.classes)
                       # an audit item counts once drawn and judged; its correction waits until then
                       for item in agg.labels_.index if item in audit]
            audited += _followers(audited, audit_followers(p, r), fixes, r)
            extra["audit_labels_sha256"] = write_once_digest(p.store, keys.round_key(r, keys.AUDIT_LABELS), to_jsonl(audited))
        skills = {str(w): round(float(s), 4) for w, s in agg.skills_.items()}
        if fixes:  # how each worker's answers fared against the reviewers (crowdloop workers shows it)
            reviewed = gold_stats(table, {item: c.label for item, c in fixes.items()})
            extra["reviewed"] = {str(w): {"n_reviewed": int(row.n_gold), "n_agreed": int(row.n_correct)}
                                 for w, row in reviewed.iterrows()}
        if gold:
            stats = gold_stats(table, gold)
            g = p.config.gold
            extra["gold"] = {str(w): {"n_gold": int(row.n_gold), "n_correct": int(row.n_correct)} for w, row in stats.iterrows()}
            extra["blocked_workers"] = workers_to_block(stats, min_answers=g.min_answers, min_accuracy=g.min_accuracy,
                                                        level=g.evidence_level)
        c = p.config.consensus
        if c.block_below_agreement is not None:
            # items a reviewer corrected are left out: they are the disputed ones, hard by selection, and a
            # correction is never a reason to block (the consensus holds them as truth, so they would count)
            judged = table[~table["task"].isin(list(fixes))] if fixes else table
            low = low_agreement_workers(judged, agg.probas_, min_judgments=c.block_min_judgments,
                                        min_agreement=c.block_below_agreement)
            extra["blocked_on_agreement"] = {w: v for w, v in sorted(low.items()) if w not in extra.get("blocked_workers", [])}
        rings = getattr(agg, "rings_", None)
        if rings is None and c.block_rings:  # an aggregator without ring detection: look with the default model
            rings = find_rings(table)
        if rings:  # the evidence, always; blocking on it only when asked
            extra["rings"] = [ring.as_record() for ring in rings]
            if c.block_rings:
                extra["blocked_in_rings"] = sorted(w for ring in rings for w in ring.workers)
    if fixes:
        judged_audit = {a.item_id for a in anns} & audit
        labels, extra["n_corrected"] = _corrected(labels, fixes, audit, counts, r, judged_audit=judged_audit)
    if read_from:  # what verify checks is still there (crowdloop/engine/verify.py)
        extra["corrections_read"] = read_from
    digest = write_once_digest(p.store, keys.round_key(r, keys.LABELS), to_jsonl(labels))
    # what this snapshot vouches for: the label log held n_judgments answers up to round r
    summary = {"round": r, "n_items": len(labels), "method": method, "worker_skill": skills,
               "n_judgments": len(anns), "labels_sha256": digest, **extra}
    write_once(p.store, keys.round_key(r, keys.AGGREGATE), summary)
    return summary


def known_truths(table: pd.DataFrame, gold: dict[str, str], fixes: dict[str, Any]) -> pd.Series | None:
    """Items whose true label the consensus model holds fixed while it estimates workers: gold, and
    the items a reviewer corrected (``consensus.learn_from_corrections``). A reviewer's label is
    evidence about every worker who answered that item, so a pair of classes one worker confuses,
    once a reviewer has shown it, moves that worker's votes on items nobody reviewed."""
    asked = set(table["task"].unique())
    known = {i: gold[i] for i in asked if i in gold}
    known.update({i: c.label for i, c in fixes.items() if i in asked})
    return pd.Series(known, dtype=object) if known else None


def _followers(audited: list[AuditLabel], followers: dict[str, str], fixes: dict[str, Any], r: int) -> list[AuditLabel]:
    """Audit labels of the audit items that show what an asked one shows (``auditing.ask_once``):
    its label and posterior, no judgment of their own; a reviewer's correction of one wins."""
    by_item = {a.item_id: a for a in audited}
    out = []
    for item, asked in sorted(followers.items()):
        if asked not in by_item:
            continue  # not judged yet
        if item in fixes:
            out.append(_reviewed_audit_label(item, fixes[item], 0, r, tuple(by_item[asked].proba)))
        else:
            out.append(by_item[asked].model_copy(update={"item_id": item, "n_annotations": 0, "round": r,
                                                         "source": "copied"}))
    return out


def _reviewed_audit_label(item: str, fix: Any, n_annotations: int, r: int, classes: tuple[str, ...]) -> AuditLabel:
    """An audit item's label as a reviewer corrected it: certain."""
    return AuditLabel(item_id=item, label=fix.label, n_annotations=n_annotations, round=r, source="reviewed",
                      proba={c: float(c == fix.label) for c in classes})


def _corrected(labels: list[AggregatedLabel], fixes: dict[str, Any], audit: set[str], counts: pd.Series, r: int, *,
               judged_audit: set[str]) -> tuple[list[AggregatedLabel], int]:
    """``labels`` with each correction of a training item in place of the consensus (or added, for an
    item nobody was asked about); how many corrections the round applied, audit items included."""
    by_item = {label.item_id: label for label in labels}
    for item, c in fixes.items():
        if item in audit:
            continue  # its audit label carries it (audit_labels.jsonl)
        by_item[item] = AggregatedLabel(item_id=item, label=c.label, confidence=1.0, n_annotations=int(counts.get(item, 0)),
                                        method="review", source="reviewed", round=r)
    applied = sum(1 for item in fixes if item not in audit) + len(judged_audit & set(fixes))
    return list(by_item.values()), applied
