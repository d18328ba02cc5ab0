"""Step ``dispatch``: send round ``r``'s batch to the vendor, exactly once.

The intent (``dispatch.json``: tasks, reward, workers to block) is written before the vendor
is called and the vendor's references (``refs.json``) after. The vendor call is idempotent
per batch id, so a crash between the two resends the same intent and never creates a second
task; a rerun that finds ``refs.json`` does nothing.
"""

from __future__ import annotations

import time
from typing import Any

from crowdloop import keys
from crowdloop.consensus.policy import agreement_block_reason, gold_block_reason
from crowdloop.engine import hooks
from crowdloop.engine.budget import expected_task_seconds
from crowdloop.engine.project import STREAM_MIX, Project, write_once
from crowdloop.engine.quality import blocked_workers
from crowdloop.pay import reward_for
from crowdloop.records import Task


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
    if intent.get("blocked_workers") and hasattr(vendor, "block_workers"):
        vendor.block_workers(intent["blocked_workers"], reason=gold_block_reason(p.config.gold.min_accuracy))
    if intent.get("blocked_on_agreement") and hasattr(vendor, "block_workers"):
        vendor.block_workers(intent["blocked_on_agreement"],
                             reason=agreement_block_reason(p.config.consensus.block_below_agreement))
    tasks = [Task.model_validate(t) for t in intent["tasks"]]
    refs = vendor.submit(tasks, batch_id=intent["batch_id"])
    hooks.point("dispatch:after_submit", r)
    sent = {"batch_id": intent["batch_id"], "refs": refs, "dispatched_at": time.time()}
    write_once(p.store, keys.round_key(r, keys.REFS), sent)
    return p.record(r, keys.REFS)


def _intent(p: Project, r: int, selection: dict[str, Any]) -> dict[str, Any]:
    """The dispatch record: every task of the batch (new items, re-asks, gold mixed in unmarked)."""
    seconds = expected_task_seconds(p, r)
    reward = reward_for(seconds, p.config.pay.hourly_wage)
    bid = p.batch_id(r)
    first = p.config.consensus.first_judgments
    tasks = [Task(item_id=item, round=r, batch_id=bid, replicas=first, reward=reward) for item in selection["item_ids"]]
    tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=1, reward=reward,
                   exclude_workers=tuple(t["exclude_workers"])) for t in selection.get("reask", [])]
    tasks += [Task(item_id=t["item_id"], round=r, batch_id=bid, replicas=first, reward=reward, is_gold=True,
                   exclude_workers=tuple(t["exclude_workers"])) for t in selection.get("gold", [])]
    record: dict[str, Any] = {"batch_id": bid, "vendor": p.config.vendor.name, "reward": reward,
                              "estimated_seconds": seconds}
    if len(tasks) > len(selection["item_ids"]):  # gold or re-asks: mix them in unmarked (order never reveals gold)
        order = p.rng(r, STREAM_MIX).permutation(len(tasks))
        tasks = [tasks[i] for i in order]
    if p.config.gold.enabled:
        record["blocked_workers"] = blocked_workers(p, r)
    if p.config.consensus.block_below_agreement is not None:
        record["blocked_on_agreement"] = blocked_workers(p, r, on="blocked_on_agreement")
    record["tasks"] = [t.model_dump(mode="json") for t in _with_predictions(p, r, tasks)]
    return record


def _with_predictions(p: Project, r: int, tasks: list[Task]) -> list[Task]:
    """Attach round ``r``'s model prediction (label, score) to every task, for vendors that
    pre-annotate (Label Studio) or suggest (the local app, never on gold items). Every task gets
    one, gold included, so its presence never tells a worker which items are gold."""
    model = p.load_model(r)
    if model is None or not tasks:
        return tasks
    proba = model.predict_proba(p.pool.X[p.rows_of([t.item_id for t in tasks])])
    best = proba.argmax(axis=1)
    return [t.model_copy(update={"payload": {**t.payload, "prediction": {
                "label": str(model.classes_[b]), "score": round(float(row[b]), 4)}}})
            for t, b, row in zip(tasks, best, proba, strict=True)]
