"""Step ``train``: fit round ``r``'s model on the labels aggregated before it.

Human labels always train; machine labels join when the config asks for them (auto-labels
with ``autolabel.use_in_training``, label-spreading labels with ``semi_supervised``; with
``semi_supervised.method: auto`` only in rounds where the random audit says they help, the
evidence in ``train.json``), never over an item a human labeled. The fitted model and what it was trained on are create-only
records, so a rerun finds them and a warm-started model continues from the stored weights.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.engine.project import Project, write_once, write_once_bytes
from crowdloop.records import AggregatedLabel, to_jsonl

_STREAM_SPREAD = 0x5EED
_STREAM_SPREAD_CHECK = 0x5EEC


def train(p: Project, r: int) -> dict[str, Any]:
    """Fit a clone of the model (or, with ``warm_start``, the previous round's model) on the
    human labels aggregated before round ``r`` and the imported seed labels; record it in
    ``train.json`` and ``model.pkl``."""
    done = p.record(r, keys.TRAIN, default=None)
    if done is not None:
        return done
    human = p.human_labels(before_round=r)
    labels = p.known_labels(before_round=r)  # imported seed labels train from round 0, counted apart
    info: dict[str, Any] = {"round": r, "n_labeled": len(human), "trained": False, "seconds": 0.0}
    if p.seed_labels:
        info["n_imported"] = len(labels) - len(human)
    if p.config.autolabel.enabled and p.config.autolabel.use_in_training:
        human = {label.item_id for label in labels}
        machine = [label for label in p.machine_labels(before_round=r) if label.item_id not in human]
        info["n_machine"] = len(machine)
        labels = labels + machine
    use_spread = p.config.semi_supervised.enabled
    if p.config.semi_supervised.method == "auto":
        use_spread, evidence = spreading_check(p, r, p.known_labels(before_round=r))
        info["spreading"] = {"used": use_spread, **evidence}
    if use_spread:
        spread = spread_labels(p, r, p.known_labels(before_round=r), skip={label.item_id for label in labels})
        info.update(n_spread=len(spread),
                    spread_sha256=hashlib.sha256(p.store.read_bytes(keys.round_key(r, keys.SPREAD_LABELS))).hexdigest())
        if spread and p.pool.has_ground_truth:  # simulation / evaluation only
            truth = p.pool.y[p.rows_of([label.item_id for label in spread])].astype(str)
            info["spread_true_accuracy"] = round(float(np.mean(truth == np.array([label.label for label in spread]))), 4)
        labels = labels + spread
    if len({label.label for label in labels}) >= 2:
        labels = sorted(labels, key=lambda label: label.item_id)
        idx = p.rows_of([label.item_id for label in labels])
        y = np.array([label.label for label in labels], dtype=object)
        start = time.perf_counter()
        model, warm_from = _model_to_fit(p, r)
        model = model.fit(p.pool.X[idx], y)
        info.update(trained=True, seconds=round(time.perf_counter() - start, 4))
        if warm_from is not None:
            info["warm_from_round"] = warm_from
        info["model_sha256"] = _store_model(p, r, pickle.dumps(model))
        p.forget_model(r)
    write_once(p.store, keys.round_key(r, keys.TRAIN), info)
    return info


def _store_model(p: Project, r: int, data: bytes) -> str:
    """Write round ``r``'s model file and return its sha256, which ``train.json`` records.

    A model file without a training record is what a crash between the two writes leaves; its
    bytes were never recorded (nor checked), so it is replaced by this attempt's, whose digest
    is the one recorded: the record names exactly the bytes this process wrote.
    """
    key = keys.round_key(r, keys.MODEL)
    if p.store.exists(key):
        p.store.delete(key)
    p.store.write_bytes(key, data, create_only=True)
    return hashlib.sha256(data).hexdigest()


def spread_labels(p: Project, r: int, labels: list[AggregatedLabel], skip: set[str]) -> list[AggregatedLabel]:
    """Round ``r``'s label-spreading machine labels, spread from the human ``labels``, for pool
    items not in ``skip`` (items that already have a label: human, or auto-labeled when those
    train too). Written once to ``spread_labels.jsonl``, so a rerun trains on the same set."""
    done = p.round_labels(r, keys.SPREAD_LABELS)
    if done is not None:
        return done
    from crowdloop.models.semi import spread_labels as spread

    cfg = p.config.semi_supervised
    given = {label.item_id: label.label for label in labels}
    out: list[AggregatedLabel] = []
    if len(set(given.values())) >= 2:
        found = spread(p.pool.X, p.rows_of(list(given)), np.array(list(given.values()), dtype=object),
                       rng=np.random.default_rng([p.config.seed, r, _STREAM_SPREAD]), n_neighbors=cfg.n_neighbors,
                       alpha=cfg.alpha, min_confidence=cfg.min_confidence, max_items=cfg.max_items)
        out = [AggregatedLabel(item_id=str(p.pool.ids[i]), label=str(lab), confidence=round(float(c), 6), n_annotations=0,
                               method="label_spreading", source="machine", round=r)
               for i, lab, c in zip(found.index, found.labels, found.confidence, strict=True) if str(p.pool.ids[i]) not in skip]
    write_once_bytes(p.store, keys.round_key(r, keys.SPREAD_LABELS), to_jsonl(out))
    return p.round_labels(r, keys.SPREAD_LABELS) or []  # what is stored: another process may have got there first


def spreading_check(p: Project, r: int, labels: list[AggregatedLabel]) -> tuple[bool, dict[str, Any]]:
    """``semi_supervised.method: auto``: whether label spreading makes round ``r``'s model more
    accurate, judged on the audit — the human-labeled items picked uniformly at random (a
    random cold start, the random arm of ``sampler: auto``; ``selection.arm_history``). Spreading
    must win on the audit to be used (a tie or an audit of fewer than 4 items keeps it off): it
    helps on clustered pools and hurts on small noisy tables. Deterministic from (seed, r, store)."""
    from crowdloop.engine.selection import arm_history
    from crowdloop.models.semi import spreading_helps

    labels = sorted(labels, key=lambda label: label.item_id)
    ids = [label.item_id for label in labels]
    audit = np.flatnonzero([arm == "random" for arm in arm_history(p, r, ids)])
    cfg = p.config.semi_supervised
    return spreading_helps(p.model_template, p.pool.X, p.rows_of(ids), np.array([label.label for label in labels], dtype=object),
                           audit, rng=np.random.default_rng([p.config.seed, r, _STREAM_SPREAD_CHECK]),
                           n_neighbors=cfg.n_neighbors, alpha=cfg.alpha, min_confidence=cfg.min_confidence,
                           max_items=cfg.max_items)


def _model_to_fit(p: Project, r: int) -> tuple[Any, int | None]:
    """The estimator round ``r`` fits: a fresh clone, or, for a model with ``warm_start=True``
    (e.g. ``TorchClassifier``), a copy of the latest earlier round's fitted model, so training
    continues from its weights. The copy comes from the store, so a rerun warm-starts alike."""
    from sklearn.base import clone

    template = p.model_template
    if getattr(template, "warm_start", False) is True:
        for prev in range(r - 1, -1, -1):
            data = p.model_bytes(prev)  # checked against that round's training record before unpickling
            if data is not None:
                model = pickle.loads(data)  # a private copy: the cached one stays as stored
                if type(model) is type(template):
                    model.set_params(**template.get_params())
                    return model, prev
                break
    return clone(template), None
