"""Step ``autolabel`` (when ``autolabel.enabled``): machine labels for confident, unlabeled items.

Ground Truth's rule: the threshold is the lowest model confidence at which out-of-fold
predictions on the human-labeled items agree with their human labels at least
``target_accuracy`` of the time; round ``r``'s model then labels every not-yet-dispatched pool
item above it. Each round recomputes this with the new model; the test split is never touched,
and machine labels are reported apart from human ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.engine.project import Project, write_once, write_once_bytes
from crowdloop.engine.quality import oof_proba
from crowdloop.engine.selection import excluded
from crowdloop.records import AggregatedLabel, to_jsonl


def autolabel(p: Project, r: int) -> dict[str, Any]:
    """Round ``r``'s machine labels (``machine_labels.jsonl``) and their threshold (``autolabel.json``)."""
    done = p.record(r, keys.AUTOLABEL, default=None)
    if done is not None:
        return done
    cfg = p.config.autolabel
    selection = p.require(r, keys.SELECTION, step="autolabel")
    info: dict[str, Any] = {"round": r, "threshold": None, "n_validation": 0, "estimated_accuracy": None,
                            "n_machine": 0, "true_accuracy": None}
    model = p.load_model(r)
    oof = oof_proba(p, r)
    machine: list[AggregatedLabel] = []
    if model is not None and oof is not None and len(oof[0]) >= cfg.min_validation:
        ids, proba, classes = oof
        given = {label.item_id: label.label for label in p.human_labels(before_round=r)}
        conf = proba.max(axis=1)
        right = np.array([classes[k] == given[i] for i, k in zip(ids, proba.argmax(axis=1), strict=True)])
        order = np.argsort(-conf, kind="stable")
        cum = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
        ok = np.flatnonzero((cum >= cfg.target_accuracy) & (np.arange(1, len(order) + 1) >= cfg.min_support))
        info["n_validation"] = len(ids)
        if len(ok):
            cut = ok[-1]
            threshold = float(conf[order[cut]])
            info.update(threshold=round(threshold, 6), estimated_accuracy=round(float(cum[cut]), 4))
            machine = _label_confident(p, r, model, threshold, selection["item_ids"])
            info["n_machine"] = len(machine)
            if machine and p.pool.has_ground_truth:  # simulation / evaluation only
                truth = p.pool.y[p.rows_of([m.item_id for m in machine])].astype(str)
                info["true_accuracy"] = round(float(np.mean(truth == np.array([m.label for m in machine]))), 4)
    write_once_bytes(p.store, keys.round_key(r, keys.MACHINE_LABELS), to_jsonl(machine))
    write_once(p.store, keys.round_key(r, keys.AUTOLABEL), info)
    return info


def _label_confident(p: Project, r: int, model: Any, threshold: float, selected: list[str]) -> list[AggregatedLabel]:
    """Machine labels of the pool items no human will see (not dispatched, not gold, not picked now)."""
    taken = excluded(p, r + 1)  # dispatched up to this round, or gold; plus this round's picks
    taken[p.rows_of(selected)] = True
    cand = np.flatnonzero(~taken).astype(np.int64)
    if not len(cand):
        return []
    step = p.config.sampler.chunk_size  # bounded memory on large pools
    pr = np.concatenate([model.predict_proba(p.pool.X[cand[i:i + step]]) for i in range(0, len(cand), step)])
    best = pr.argmax(axis=1)
    top = pr[np.arange(len(cand)), best]
    keep = top >= threshold
    model_classes = [str(c) for c in model.classes_]
    name = f"model:{p.config.model.estimator.rsplit('.', 1)[-1]}"
    return [AggregatedLabel(item_id=str(p.pool.ids[i]), label=model_classes[b], confidence=round(float(c), 6),
                            n_annotations=0, method=name, source="machine", round=r)
            for i, b, c in zip(cand[keep], best[keep], top[keep], strict=True)]
