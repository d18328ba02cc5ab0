"""Step ``train``: fit round ``r``'s model on the labels aggregated before it.

Human labels always train; machine labels join when the config asks for them (auto-labels
with ``autolabel.use_in_training``, label-spreading labels with ``semi_supervised``), never
over an item a human labeled. The fitted model and what it was trained on are create-only
records, so a rerun finds them and a warm-started model continues from the stored weights.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.engine.project import Project, write_once, write_once_bytes
from crowdloop.records import AggregatedLabel, to_jsonl

_STREAM_SPREAD = 0x5EED


def train(p: Project, r: int) -> dict[str, Any]:
    """Fit a clone of the model (or, with ``warm_start``, the previous round's model) on the
    human labels aggregated before round ``r``; record it in ``train.json`` and ``model.pkl``."""
    done = p.record(r, keys.TRAIN, default=None)
    if done is not None:
        return done
    labels = p.human_labels(before_round=r)
    info: dict[str, Any] = {"round": r, "n_labeled": len(labels), "trained": False, "seconds": 0.0}
    if p.config.autolabel.enabled and p.config.autolabel.use_in_training:
        human = {label.item_id for label in labels}
        machine = [label for label in p.machine_labels(before_round=r) if label.item_id not in human]
        info["n_machine"] = len(machine)
        labels = labels + machine
    if p.config.semi_supervised.enabled:
        spread = spread_labels(p, r, p.human_labels(before_round=r), skip={label.item_id for label in labels})
        info.update(n_spread=len(spread))
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
        write_once_bytes(p.store, keys.round_key(r, keys.MODEL), pickle.dumps(model))
        p.forget_model(r)
    write_once(p.store, keys.round_key(r, keys.TRAIN), info)
    return info


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


def _model_to_fit(p: Project, r: int) -> tuple[Any, int | None]:
    """The estimator round ``r`` fits: a fresh clone, or, for a model with ``warm_start=True``
    (e.g. ``TorchClassifier``), a copy of the latest earlier round's fitted model, so training
    continues from its weights. The copy comes from the store, so a rerun warm-starts alike."""
    from sklearn.base import clone

    template = p.model_template
    if getattr(template, "warm_start", False) is True:
        for prev in range(r - 1, -1, -1):
            key = keys.round_key(prev, keys.MODEL)
            if p.store.exists(key):
                model = pickle.loads(p.store.read_bytes(key))  # a private copy: the cached one stays as stored
                if type(model) is type(template):
                    model.set_params(**template.get_params())
                    return model, prev
                break
    return clone(template), None
