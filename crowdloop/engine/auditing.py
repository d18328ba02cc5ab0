"""Step ``audit`` (with ``evaluation.method``): the audit items round ``r`` adds to its batch,
and the accuracy estimate of a round's model from the audit labels bought before it.

The audit draws from ``Project.audit_reserve`` (pool items set aside before round 0; samplers
never see them), grows while the estimate's 95 % interval is wider than
``evaluation.target_half_width`` and fewer than ``evaluation.max_items`` items were labeled,
and rides in the round's batch: the same vendor and the same consensus label it, mixed in
unmarked like gold; an audit item whose votes split is asked once more (``reask_plan``).
Aggregation keeps audit labels apart (``audit_labels.jsonl``), so they
never train; their cost is the audit's share of each round's pay. The estimators themselves
are pure functions in ``crowdloop/audit.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.audit import (
    Estimate,
    calibrated,
    draw,
    importance_estimate,
    inclusion_estimate,
    proposal,
    random_estimate,
    split_labels,
)
from crowdloop.config import LoopConfig
from crowdloop.engine.budget import audit_allowance
from crowdloop.engine.project import Project, write_once
from crowdloop.records import AuditLabel
from crowdloop.rows import dense_rows
from crowdloop.vendor import EXCLUDES_WORKERS_PER_ITEM

STREAM_AUDIT_DRAW = 0xA0D1
STREAM_SURROGATE = 0xA0D2


def audit(p: Project, r: int) -> dict[str, Any]:
    """Round ``r``'s audit draws (``audit.json``): none once the interval is narrow enough or the
    audit has ``max_items`` items; else up to ``batch_size`` more, by the configured method."""
    done = p.record(r, keys.AUDIT, default=None)
    if done is not None:
        return done
    metrics = p.require(r, keys.METRICS, step="audit")
    ev = p.config.evaluation
    reserve = list(p.audit_reserve)
    sent = audit_items(p, r)
    room = ev.max_items - len(sent)
    half = None if metrics.get("ci_low") is None else (metrics["ci_high"] - metrics["ci_low"]) / 2
    record: dict[str, Any] = {"round": r, "method": ev.method, "reserve_size": len(reserve), "draws": [], "item_ids": [],
                              "reask": reask_plan(p, r)}
    per_item = audit_redundancy(p.config)
    allowance = audit_allowance(p, r, p.require(r, keys.SELECTION, step="audit"), per_item)
    held_back = False
    if allowance is not None:  # the audit takes only what the budget leaves after the round's batch
        judgments, budget = allowance
        per_reask = max(per_item - 1, 1)
        fitting = record["reask"][: judgments // per_reask]
        affordable = (judgments - per_reask * len(fitting)) // per_item
        if len(fitting) < len(record["reask"]) or affordable < min(ev.batch_size, room):
            record["budget"] = f"{budget}: {judgments} judgment(s) left for the audit after the round's batch"
        record["reask"] = fitting
        held_back = room > 0 and affordable <= 0
        room = min(room, affordable)
    if held_back:
        record["reason"] = record["budget"]
    elif room <= 0:
        record["reason"] = f"max_items={ev.max_items} audit items labeled"
    elif half is not None and half <= ev.target_half_width:
        record["reason"] = f"interval half-width {half:.4f} <= target {ev.target_half_width}"
    elif not reserve:
        record["reason"] = "no audit reserve"
    else:
        n = min(ev.batch_size, room)  # each draw adds at most one new item, so max_items holds
        if ev.method == "random":
            new = [item for item in reserve if item not in sent][:n]
            record.update(draws=new, item_ids=new)
        else:
            model = p.load_model(r)
            pi = loss_probability(p, r, model, reserve) if model is not None else np.zeros(len(reserve))
            q = proposal(pi, ev.uniform_share, ev.proposal_tilt)
            picked = draw(q, n, p.rng(r, STREAM_AUDIT_DRAW))
            draws = [reserve[k] for k in picked]
            record.update(draws=draws, q=[float(q[k]) for k in picked], proposal=q.tolist(), tilt=ev.proposal_tilt,
                          proposal_from="uniform" if model is None else f"model of round {r}",
                          item_ids=list(dict.fromkeys(d for d in draws if d not in sent)))
        record["reason"] = ("first audit draws" if half is None
                            else f"interval half-width {half:.4f} > target {ev.target_half_width}")
        record["item_ids"], followers = ask_once(p, record["item_ids"], before_round=r)
        if followers:
            record["copied_from"] = followers
    write_once(p.store, keys.round_key(r, keys.AUDIT), record)
    return p.record(r, keys.AUDIT)


AUDIT_JUDGMENTS = 5


def reask_plan(p: Project, r: int) -> list[dict[str, Any]]:
    """Audit items whose votes split (``evaluation.reask_below``), to ask once more in round ``r``
    with ``audit_redundancy - 1`` judgments from workers who have not answered them (an odd total,
    so the vote cannot tie); none with ``reask_below`` 0, or from a vendor that cannot keep a task
    from the workers who answered its item (``excludes_workers_per_item``: MTurk with several
    items per HIT), where asking again could reach the same workers."""
    ev = p.config.evaluation
    if ev.reask_below <= 0 or r == 0 or EXCLUDES_WORKERS_PER_ITEM not in p.capabilities:
        return []
    reserve = set(p.audit_reserve)
    votes: dict[str, list[str]] = {}
    workers: dict[str, list[str]] = {}
    for a in p.annotations():
        if a.round < r and a.item_id in reserve:
            votes.setdefault(a.item_id, []).append(a.label)
            workers.setdefault(a.item_id, []).append(a.worker_id)
    labels = {item: label.label for item, label in audit_labels(p, r).items()}
    items = split_labels(votes, labels, first=audit_redundancy(p.config), agreement=ev.reask_below)
    return [{"item_id": item, "exclude_workers": sorted(set(workers[item]))} for item in items]


def audit_redundancy(config: LoopConfig) -> int:
    """Judgments per audit item: ``evaluation.redundancy``, else 5 or the most any item may get.

    An audit label is the yardstick the model is measured with: each wrong one turns a right
    prediction into an error, so the estimate sits below the truth by about the labels' error
    rate. On the benchmark's crowd, 3 judgments left 3 % of audit labels wrong and the estimate
    3 points low; 5 left almost none (``BENCHMARKS.md``).
    """
    return config.evaluation.redundancy or max(AUDIT_JUDGMENTS, config.consensus.most_judgments)


def audit_records(p: Project, before_round: int) -> list[dict[str, Any]]:
    """The ``audit.json`` records of the rounds before ``before_round`` (rounds without one left out)."""
    return [rec for q in range(before_round) if (rec := p.record(q, keys.AUDIT, default=None))]


def audit_items(p: Project, before_round: int) -> set[str]:
    """Audit items drawn before round ``before_round``: sent to the vendor, or labeled by the copy
    that was (``ask_once``)."""
    return {item for rec in audit_records(p, before_round) for item in (*rec["item_ids"], *rec.get("copied_from", {}))}


def audit_followers(p: Project, through_round: int) -> dict[str, str]:
    """Audit items labeled without being asked -> the item showing the same thing that was asked."""
    return {item: asked for rec in audit_records(p, through_round + 1) for item, asked in rec.get("copied_from", {}).items()}


def ask_once(p: Project, items: list[str], *, before_round: int) -> tuple[list[str], dict[str, str]]:
    """``items`` (new audit items, in order) split into those to ask and those that show what an
    audit item asked before or earlier in the list shows (``pool.duplicates: ask_once``) -> that
    item. A copy stays in the audit — a ticket that comes fifty times weighs fifty times in the
    estimate — but asking people about it again would pay twice for one answer."""
    copies = p.copies
    if not copies:
        return items, {}
    asked: dict[str, str] = {}  # a content group (its pool-first item) -> the audit item asked about it
    for rec in audit_records(p, before_round):
        for item in rec["item_ids"]:
            asked.setdefault(copies.get(item, item), item)
    to_ask, followers = [], {}
    for item in items:
        group = copies.get(item, item)
        if group in asked:
            followers[item] = asked[group]
        else:
            asked[group] = item
            to_ask.append(item)
    return to_ask, followers


def audit_labels(p: Project, before_round: int) -> dict[str, AuditLabel]:
    """The latest aggregated audit labels written before round ``before_round``."""
    for q in range(before_round - 1, -1, -1):
        key = keys.round_key(q, keys.AUDIT_LABELS)
        if p.store.exists(key):
            return {a.item_id: a for a in (AuditLabel.model_validate_json(line)
                                           for line in p.store.read_bytes(key).splitlines() if line.strip())}
    return {}


def loss_probability(p: Project, r: int, model: Any, reserve: list[str]) -> np.ndarray:
    """``_loss_probability`` once per round (the estimate and the audit's draws both use it; it
    depends only on records finished before round ``r``)."""
    cached = p.cache.get(("loss_probability", r))
    if cached is None:
        cached = p.cache[("loss_probability", r)] = _loss_probability(p, r, model, reserve)
    return cached


def _loss_probability(p: Project, r: int, model: Any, reserve: list[str]) -> np.ndarray:
    """How likely round ``r``'s model is wrong on each reserve item, as the active audit's proposal sees it.

    A surrogate (``evaluation.surrogate``, trained on the training labels only) gives the
    probability that the model's prediction is not the true class; Platt scaling on the audit
    labels bought so far calibrates it. A model's own confidence ranks its errors poorly (it is
    badly calibrated with few labels, and blind where it is confidently wrong); a different
    model's disagreement, calibrated on real outcomes, ranks them better. Without a surrogate
    (fewer than two classes labeled) the model's own ``1 - max probability`` is used.
    """
    X = p.pool.X[p.rows_of(reserve)]
    predicted = model.predict(X).astype(str)
    raw = 1.0 - model.predict_proba(X).max(axis=1)
    labels = sorted(p.known_labels(before_round=r), key=lambda label: label.item_id)
    if len({label.label for label in labels}) >= 2:
        from crowdloop.models.sklearn import build_model

        surrogate = build_model(p.config.evaluation.surrogate)
        # seeded wherever it sits (a bare estimator, or inside the scaler's pipeline or the text
        # wrapper), so a redone round draws the same items
        seeds = [name for name in surrogate.get_params() if name == "random_state" or name.endswith("__random_state")]
        if seeds:
            seed = int(p.rng(r, STREAM_SURROGATE).integers(2**31))
            surrogate.set_params(**dict.fromkeys(seeds, seed))
        surrogate.fit(_surrogate_rows(p, p.pool.X[p.rows_of([label.item_id for label in labels])]),
                      np.array([label.label for label in labels], dtype=object))
        proba = surrogate.predict_proba(_surrogate_rows(p, X))
        column = {str(c): k for k, c in enumerate(surrogate.classes_)}
        raw = np.array([1.0 - (proba[k, column[c]] if c in column else 0.0) for k, c in enumerate(predicted)])
    found = audit_labels(p, r)
    fit = [k for k, item in enumerate(reserve) if item in found]
    observed = np.array([float(predicted[k] != found[reserve[k]].label) for k in fit])
    return calibrated(raw, raw[fit], observed) if fit else raw


def _surrogate_rows(p: Project, rows: Any) -> Any:
    """What the surrogate is fitted on and scores: a text pool's dense view (its TF-IDF's SVD or
    its embeddings), unless ``evaluation.surrogate.features`` asks for the text features
    themselves; any other pool's rows as they are. The default surrogate, extra trees, cannot
    take text rows at all, and trees split poorly on thousands of sparse TF-IDF columns."""
    if hasattr(rows, "dense") and p.config.evaluation.surrogate.features is None:
        return dense_rows(rows)
    return rows


def estimate(p: Project, r: int, model: Any) -> Estimate | None:
    """Round ``r``'s model's accuracy estimated from the audit labels aggregated before round ``r``
    (None without a model or audit labels). Draws whose item got no label (the collect deadline
    passed) are left out."""
    if model is None:
        return None
    labels = audit_labels(p, r)
    if not labels:
        return None
    ev = p.config.evaluation
    records = [rec for rec in audit_records(p, r) if rec["draws"]]
    items = sorted(labels)
    proba = model.predict_proba(p.pool.X[p.rows_of(items)])
    classes = [str(c) for c in model.classes_]
    predicted = [classes[k] for k in proba.argmax(axis=1)]
    # Agreement with the consensus label. (Weighting by the consensus posterior instead was
    # 1.5-3 points lower on simulated crowds: Dawid-Skene posteriors there are underconfident.)
    right = {item: float(labels[item].label == pred) for item, pred in zip(items, predicted, strict=True)}
    if ev.method == "random":
        return random_estimate(np.array([right[i] for i in items]))
    # draws whose item got no label are left out, with their share of the proposal mixture
    reserve = list(p.audit_reserve)
    position = {item: k for k, item in enumerate(reserve)}
    drawn = [item for rec in records for item in rec["draws"] if item in right]
    if not drawn:
        return None
    proposals = [(np.asarray(rec["proposal"]), k) for rec in records
                 if (k := sum(1 for d in rec["draws"] if d in right))]
    # ``evaluation.control_variate``: the surrogate's calibrated loss probability on every reserve
    # item as a control variate (narrower, but it held the truth less often on the synthetic set)
    expected = loss_probability(p, r, model, reserve) if ev.control_variate else None
    # ``evaluation.estimator``: each distinct labeled item once (inclusion), or each draw (draws)
    counted = list(dict.fromkeys(drawn)) if ev.estimator == "inclusion" else drawn
    loss = np.array([1.0 - right[item] for item in counted])
    at = np.array([position[item] for item in counted])
    if ev.estimator == "inclusion":
        return inclusion_estimate(loss, at, proposals, expected_loss=expected)
    return importance_estimate(loss, at, proposals, n_labels=len(set(drawn)), expected_loss=expected)


def audit_spend(p: Project, before_round: int) -> tuple[int, float]:
    """Judgments on audit items before round ``before_round`` and their share of the money paid."""
    reserve = set(p.audit_reserve)
    judgments = 0
    money = 0.0
    by_batch: dict[str, list[bool]] = {}
    for a in p.annotations():
        if a.round < before_round:
            by_batch.setdefault(a.batch_id, []).append(a.item_id in reserve)
    for q in range(before_round):
        pay = p.record(q, keys.PAY, default=None)
        flags = by_batch.get(p.batch_id(q), [])
        n_audit = sum(flags)
        judgments += n_audit
        if pay and flags:
            money += pay["total"] * n_audit / len(flags)  # one reward per judgment in a batch: the audit's share
    return judgments, round(money, 2)
