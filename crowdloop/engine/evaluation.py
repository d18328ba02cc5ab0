"""Step ``evaluate`` (round ``r``'s model on the test split and, with ``evaluation``, on the
human-labeled audit, with what was spent so far) and the once-per-project ``reference`` (the
same model trained on the whole pool with true labels)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.engine.auditing import audit_spend, estimate
from crowdloop.engine.project import Project, write_once
from crowdloop.storage import read_json


def evaluate(p: Project, r: int) -> dict[str, Any]:
    """Round ``r``'s model: test accuracy (when the pool has ground truth), accuracy estimated
    from the audit labels with a 95 % interval (with ``evaluation``), agreement with the previous
    model on the stop set (with ``stopping.stabilizing_predictions``), and the labels,
    judgments and money spent so far."""
    done = p.record(r, keys.METRICS, default=None)
    if done is not None:
        return done
    trained = p.require(r, keys.TRAIN, step="evaluate")
    model = p.load_model(r)
    accuracy = None
    if model is not None and p.test is not None:
        accuracy = float(model.score(p.test.X, p.test.y.astype(str)))
    metrics: dict[str, Any] = {
        "round": r,
        "n_labeled": trained["n_labeled"],
        "n_judgments": sum(1 for a in p.annotations() if a.round < r),
        "cost": p.spent(r),
        "accuracy": accuracy,
    }
    if p.config.pool.seed_labels is not None:
        metrics["n_imported"] = trained.get("n_imported", 0)
    if p.config.evaluation.enabled:
        found = estimate(p, r, model)
        judgments, money = audit_spend(p, r)
        metrics.update(estimated_accuracy=None if found is None else round(found.accuracy, 6),
                       ci_low=None if found is None else round(found.ci_low, 6),
                       ci_high=None if found is None else round(found.ci_high, 6),
                       n_eval_labels=0 if found is None else found.n_labels,
                       n_eval_draws=0 if found is None else found.n_draws,
                       audit_judgments=judgments, audit_cost=money)
    if p.config.stopping.stabilizing_predictions is not None:
        metrics["stability_kappa"] = stability_kappa(p, r, model)
        metrics["stop_set_size"] = len(p.stop_set_rows)
    write_once(p.store, keys.round_key(r, keys.METRICS), metrics)
    return metrics


def stability_kappa(p: Project, r: int, model: Any) -> float | None:
    """Cohen's kappa between the predictions of round ``r``'s model and the latest earlier model
    on the stop set (Bloodgood & Vijay-Shanker, 2009); None without two models. Identical
    predictions count as 1 (kappa itself is undefined when one class is predicted throughout)."""
    from sklearn.metrics import cohen_kappa_score

    if model is None:
        return None
    previous = next((m for q in range(r - 1, -1, -1) if (m := p.load_model(q)) is not None), None)
    if previous is None:
        return None
    X = p.pool.X[p.stop_set_rows]
    now, before = model.predict(X).astype(str), previous.predict(X).astype(str)
    if np.array_equal(now, before):
        return 1.0
    return round(float(cohen_kappa_score(now, before, labels=list(p.classes))), 6)


def reference(p: Project, r: int = 0) -> dict[str, Any]:
    """Accuracy of the same model trained on the whole pool with true labels (once per project).

    ``r`` is unused: it keeps the signature of a step so the round walker can run it first.
    """
    from sklearn.base import clone

    done = read_json(p.store, keys.REFERENCE, default=None)
    if done is not None:
        return done
    if p.test is None or not p.pool.has_ground_truth:
        info = {"accuracy": None, "reason": "the pool has no ground truth"}
    else:
        model = clone(p.model_template).fit(p.pool.X, p.pool.y.astype(str))
        info = {"accuracy": float(model.score(p.test.X, p.test.y.astype(str))), "n_train": len(p.pool), "n_test": len(p.test)}
    write_once(p.store, keys.REFERENCE, info)
    return info
