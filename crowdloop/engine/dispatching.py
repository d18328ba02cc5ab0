"""Step ``dispatch``: send round ``r``'s batch to the vendor, exactly once.

The intent (``dispatch.json``: tasks, reward, workers to block and why) is written before the
vendor is called and the vendor's references (``refs.json``) after. Blocks and the submit are
idempotent (per worker, per batch id), so a crash anywhere between the two — also between a
block decision and its call — resends the same intent and never creates a second task; a rerun
that finds ``refs.json`` does nothing. Blocking is planned by the vendor's capabilities
(``crowdloop.vendor``); a config that needs it on a vendor without it never gets here.
"""

from __future__ import annotations

import time
from typing import Any

from crowdloop import keys
from crowdloop.consensus.policy import agreement_block_reason, gold_block_reason
from crowdloop.engine import hooks
from crowdloop.engine.auditing import audit_redundancy
from crowdloop.engine.budget import expected_task_seconds
from crowdloop.engine.project import STREAM_MIX, Project, write_once
from crowdloop.engine.quality import block_decisions, blocked_workers, rings_found, workers_left
from crowdloop.errors import ConfigError
from crowdloop.pay import reward_for
from crowdloop.records import Task
from crowdloop.vendor import BLOCKS_WORKERS


def dispatch(p: Project, r: int) -> dict[str, Any]:
    """Send round ``r``'s selection to the vendor: intent first, then the idempotent call, then refs."""
    done = p.record(r, keys.REFS, default=None)
    if done is not None:
        return done
    intent = p.record(r, keys.DISPATCH, default=None)
    if intent is None:
        write_once(p.store, keys.round_key(r, keys.DISPATCH), _intent(p, r, p.require(r, keys.SELECTION, step="dispatch")))
        intent = p.record(r, keys.DISPATCH)
    hooks.point("dispatch:before_submit", r)
    vendor = p.vendor
    reasons = _block_reasons(p, intent)
    if reasons and BLOCKS_WORKERS not in p.capabilities:  # check_capabilities refuses such a config before round 0
        raise ConfigError(f"vendor.name: vendor {p.config.vendor.name!r} cannot block workers, but round {r} "
                          f"must block {len(reasons)}")
    for worker, reason in sorted(reasons.items()):  # idempotent per worker: a rerun after a crash repeats them
        vendor.block_workers([worker], reason=reason)
    tasks = [Task.model_validate(t) for t in intent["tasks"]]
    refs = vendor.submit(tasks, batch_id=intent["batch_id"])
    hooks.point("dispatch:after_submit", r)
    sent = {"batch_id": intent["batch_id"], "refs": refs, "dispatched_at": time.time()}
    if intent.get("fitted_to_workforce"):  # said in the step's log line: the team is too small for the plan
        sent["n_fitted_to_workforce"] = len(intent["fitted_to_workforce"])
    write_once(p.store, keys.round_key(r, keys.REFS), sent)
    return p.record(r, keys.REFS)


def _intent(p: Project, r: int, selection: dict[str, Any]) -> dict[str, Any]:
    """The dispatch record: every task of the batch (new items, re-asks, gold and audit items mixed in unmarked)."""
    seconds = expected_task_seconds(p, r)
    reward = reward_for(seconds, p.config.pay.hourly_wage)
    bid = p.batch_id(r)
    first = p.config.consensus.first_judgments
    tasks = [Task(item_id=item, round=r, batch_id=bid, replicas=first, reward=reward) for item in selection["item_ids"]]
    tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=1, reward=reward,
                   exclude_workers=tuple(t["exclude_workers"])) for t in selection.get("reask", [])]
    tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=first, reward=reward, is_gold=True,
                   exclude_workers=tuple(t["exclude_workers"])) for t in selection.get("gold", [])]
    audit = p.record(r, keys.AUDIT, default=None) if p.config.evaluation.enabled else None
    if audit:  # the accuracy audit rides in the batch, labeled like any item (engine/auditing.py)
        tasks += [Task(item_id=item, round=r, batch_id=bid, replicas=audit_redundancy(p.config), reward=reward)
                  for item in audit["item_ids"]]
        tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=max(audit_redundancy(p.config) - 1, 1),
                       reward=reward, exclude_workers=tuple(t["exclude_workers"])) for t in audit.get("reask", [])]
    record: dict[str, Any] = {"batch_id": bid, "vendor": p.config.vendor.name, "reward": reward,
                              "estimated_seconds": seconds}
    if len(tasks) > len(selection["item_ids"]):  # gold or re-asks: mix them in unmarked (order never reveals gold)
        order = p.rng(r, STREAM_MIX).permutation(len(tasks))
        tasks = [tasks[i] for i in order]
    if p.config.gold.enabled:
        record["blocked_workers"] = blocked_workers(p, r)
    if p.config.consensus.block_below_agreement is not None:
        record["blocked_on_agreement"] = blocked_workers(p, r, on="blocked_on_agreement")
    if p.config.consensus.block_rings:  # the evidence behind ring members' block_reasons
        record["blocked_rings"] = rings_found(p, r)
    record["block_reasons"] = block_decisions(p, r)
    tasks, fitted = _fit_to_workforce(tasks, getattr(p.vendor, "workforce", None), set(record["block_reasons"]))
    if fitted:
        record["fitted_to_workforce"] = fitted
    record["tasks"] = [t.model_dump(mode="json") for t in _with_predictions(p, r, tasks)]
    return record


def _fit_to_workforce(tasks: list[Task], workforce: int | None, blocked: set[str]) -> tuple[list[Task], list[dict[str, Any]]]:
    """The tasks as a vendor's known workforce can answer them, and what was cut.

    Each judgment of an item comes from another worker, and blocked workers get none. With a
    vendor whose workers are a known, finite group (``workforce``: the simulated crowd, the local
    app's annotators) a task gets at most as many replicas as there are workers who have neither
    answered the item (its ``exclude_workers``) nor been blocked, and a task with none left is not
    sent. Without this, a small team that blocked a member left every later item a judgment short:
    the simulated crowd failed the dispatch, the local app's round waited for ``collect.timeout_s``.
    A vendor of unknown workforce (a marketplace) gets every task as planned.
    """
    if workforce is None:
        return tasks, []
    kept: list[Task] = []
    fitted: list[dict[str, Any]] = []
    for task in tasks:
        fresh = workers_left(workforce, task.exclude_workers, blocked)
        if fresh >= task.replicas:
            kept.append(task)
            continue
        fitted.append({"item_id": task.item_id, "replicas": task.replicas, "sent": max(fresh, 0)})
        if fresh > 0:
            kept.append(task.model_copy(update={"replicas": fresh}))
    return kept, fitted


def _block_reasons(p: Project, intent: dict[str, Any]) -> dict[str, str]:
    """Worker -> reason of the intent (an intent written before reasons were recorded: the bare rule)."""
    if "block_reasons" in intent:
        return dict(intent["block_reasons"])
    out = {w: gold_block_reason(p.config.gold.min_accuracy) for w in intent.get("blocked_workers", [])}
    for w in intent.get("blocked_on_agreement", []):
        out.setdefault(w, agreement_block_reason(p.config.consensus.block_below_agreement or 0.0))
    return out


def _with_predictions(p: Project, r: int, tasks: list[Task]) -> list[Task]:
    """Attach round ``r``'s model prediction (label, score) to every task, for vendors that
    pre-annotate (Label Studio) or suggest (the local app, never on gold items). Every task gets
    one, gold included, so its presence never tells a worker which items are gold; accuracy-audit
    items get none, as a suggestion would pull their labels towards the model they measure."""
    model = p.load_model(r)
    if model is None or not tasks:
        return tasks
    audit = set(p.audit_reserve)
    proba = model.predict_proba(p.pool.X[p.rows_of([t.item_id for t in tasks])])
    best = proba.argmax(axis=1)
    return [t if t.item_id in audit else t.model_copy(update={"payload": {**t.payload, "prediction": {
                "label": str(model.classes_[b]), "score": round(float(row[b]), 4)}}})
            for t, b, row in zip(tasks, best, proba, strict=True)]
