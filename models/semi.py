"""Semi-supervised use of the unlabeled pool: machine labels from label spreading.

Active learning picks which items humans label; the rest of the pool still says where the
classes lie. Label spreading (Zhou et al. 2004; scikit-learn's ``LabelSpreading`` over a k-nearest
neighbour graph of the standardised features, or of a text pool's dense view as it is) carries the
human labels along that graph, and
the pool items it labels with confidence ``>= min_confidence`` join the training set as
*machine* labels: recorded as such, never counted as human labels, and always overruled by a
human label of the same item. Its errors differ from the model's own (a graph over the pool
rather than the model's decision function), which is why it helps where self-training on the
model's confident predictions did not (BENCHMARKS.md, "Label efficiency").

Cost: a k-NN graph over at most ``max_items`` rows (every human-labeled row plus a seeded random
sample of the rest): O(m·log m·d) with a tree index, memory O(m·k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdloop.errors import ConfigError
from crowdloop.rows import dense_rows, n_rows, take


@dataclass(frozen=True)
class SpreadLabels:
    """Machine labels for pool rows ``index`` (never a human-labeled row)."""

    index: np.ndarray  # int64 pool row numbers
    labels: np.ndarray  # object array of class labels
    confidence: np.ndarray  # float64 in [min_confidence, 1]


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"semi_supervised.{name}={value!r}: expected {expected}")


def spread_labels(
    X: Any,
    labeled: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator,
    n_neighbors: int = 10,
    alpha: float = 0.2,
    min_confidence: float = 0.9,
    max_items: int = 50_000,
    max_iter: int = 50,
) -> SpreadLabels:
    """Label spreading from the human-labeled rows ``labeled`` (with labels ``y``) over ``X``.

    Returns the unlabeled rows whose spread label distribution peaks at ``>= min_confidence``.
    With more than ``max_items`` rows, the graph holds every labeled row plus a random sample
    (from ``rng``) of the others, so memory stays bounded on large pools.
    """
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import LabelSpreading

    _check("n_neighbors", n_neighbors, isinstance(n_neighbors, (int, np.integer)) and not isinstance(n_neighbors, bool)
           and n_neighbors >= 1, "a positive integer")
    _check("alpha", alpha, isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0, "a number in (0, 1)")
    _check("min_confidence", min_confidence, isinstance(min_confidence, (int, float)) and 0.0 < float(min_confidence) <= 1.0,
           "a number in (0, 1]")
    labeled = np.asarray(labeled, dtype=np.int64)
    y = np.asarray(y, dtype=object)
    n = n_rows(X)
    _check("max_items", max_items, isinstance(max_items, (int, np.integer)) and max_items > len(labeled),
           f"an integer above the {len(labeled)} human-labeled rows")
    if len(labeled) != len(y):
        raise ConfigError(f"spread_labels: {len(labeled)} labeled rows but {len(y)} labels: expected equal")
    empty = SpreadLabels(np.empty(0, dtype=np.int64), np.empty(0, dtype=object), np.empty(0))
    if len(labeled) == 0 or len(set(y.tolist())) < 2 or len(labeled) >= n:
        return empty
    others = np.setdiff1d(np.arange(n, dtype=np.int64), labeled)
    if len(labeled) + len(others) > max_items:
        others = np.sort(rng.choice(others, size=int(max_items) - len(labeled), replace=False))
    rows = np.concatenate([labeled, others])
    classes, codes = np.unique(y.astype(str), return_inverse=True)
    originals = {str(v): v for v in y.tolist()}
    target = np.concatenate([codes, np.full(len(others), -1)])
    picked = take(X, rows)
    # text rows: their dense view (unit-length SVD or embedding) is the metric already
    Z = dense_rows(picked) if hasattr(picked, "dense") else StandardScaler().fit_transform(dense_rows(picked))
    k = int(min(n_neighbors, len(rows) - 1))
    model = LabelSpreading(kernel="knn", n_neighbors=k, alpha=float(alpha), max_iter=int(max_iter))
    dist = model.fit(Z, target).label_distributions_[len(labeled):]
    with np.errstate(invalid="ignore"):
        dist = dist / dist.sum(axis=1, keepdims=True)  # isolated rows get NaN: no label
    conf = np.nan_to_num(dist.max(axis=1), nan=0.0)
    keep = conf >= float(min_confidence)
    picked = dist[keep].argmax(axis=1)
    labels = np.array([originals[classes[model.classes_[c]]] for c in picked], dtype=object)
    return SpreadLabels(others[keep], labels, conf[keep].astype(np.float64))


def spreading_helps(template: Any, X: Any, labeled: np.ndarray, y: np.ndarray, audit: np.ndarray, *,
                    rng: np.random.Generator, **spread_params: Any) -> tuple[bool, dict[str, Any]]:
    """Whether machine labels from :func:`spread_labels` make ``template`` more accurate, judged on
    the audit: ``audit`` (positions into ``labeled``) are uniformly drawn human-labeled rows. Each
    half of the audit is scored by a model trained without it, once on the other human labels
    alone and once with the labels spread from them too. Ties keep spreading (it needs most
    labels where it helps, at the start). Label spreading helps on clustered pools (digits,
    Fashion-MNIST) and hurts on small noisy tables; this check lets the data say which.
    Returns (use it?, evidence record). Cost: 2 spreads and 4 fits.
    """
    from sklearn.base import clone

    labeled = np.asarray(labeled, dtype=np.int64)
    y = np.asarray(y).astype(str)  # one label type for fits, spread labels and comparisons
    audit = np.asarray(audit, dtype=np.int64)
    record: dict[str, Any] = {"n_audit": len(audit), "without": None, "with": None}
    if len(audit) < 4:
        return True, record
    right = {"without": 0, "with": 0}
    halves = np.array_split(rng.permutation(audit), 2)
    for test in halves:
        train = np.setdiff1d(np.arange(len(labeled)), test)
        if len(set(y[train].tolist())) < 2:
            return True, record
        truth = y[test].astype(str)
        plain = clone(template).fit(X[labeled[train]], y[train])
        right["without"] += int((np.asarray(plain.predict(X[labeled[test]])).astype(str) == truth).sum())
        found = spread_labels(X, labeled[train], y[train], rng=rng, **spread_params)
        if len(found.index):
            X_fit = X[np.concatenate([labeled[train], found.index])]  # one pool: rows by index (dense, sparse or text)
            y_fit = np.concatenate([y[train], found.labels.astype(str)])
            spread = clone(template).fit(X_fit, y_fit)
        else:
            spread = plain
        right["with"] += int((np.asarray(spread.predict(X[labeled[test]])).astype(str) == truth).sum())
    record.update({k: round(v / len(audit), 4) for k, v in right.items()})
    return right["with"] >= right["without"], record
