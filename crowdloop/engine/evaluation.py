"""Step ``evaluate`` (round ``r``'s model on the test split, with what was spent so far) and the
once-per-project ``reference`` (the same model trained on the whole pool with true labels)."""

from __future__ import annotations

from typing import Any

from crowdloop import keys
from crowdloop.engine.project import Project, write_once
from crowdloop.storage import read_json


def evaluate(p: Project, r: int) -> dict[str, Any]:
    """Test accuracy of round ``r``'s model, with the labels, judgments and money spent so far."""
    done = p.record(r, keys.METRICS, default=None)
    if done is not None:
        return done
    trained = p.require(r, keys.TRAIN, step="evaluate")
    model = p.load_model(r)
    accuracy = None
    if model is not None and p.test is not None:
        accuracy = float(model.score(p.test.X, p.test.y.astype(str)))
    metrics = {
        "round": r,
        "n_labeled": trained["n_labeled"],
        "n_judgments": sum(1 for a in p.annotations() if a.round < r),
        "cost": p.spent(r),
        "accuracy": accuracy,
    }
    write_once(p.store, keys.round_key(r, keys.METRICS), metrics)
    return metrics


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
