"""Conformance checks for samplers, importable by third parties::

    from crowdloop.samplers.testing import check_sampler
    check_sampler(my_sampler)            # raises AssertionError naming the broken property

Properties (hypothesis draws pool size, batch size, seed, class count and whether the rows are
a dense array or a SciPy CSR matrix, as text features are): exactly ``batch_size`` indices,
all unique, all valid rows of the candidates passed in (so a sampler that is handed only
unlabeled rows can only pick unlabeled rows), the same picks for the same rng state, and an
error (not a silent cut) when ``batch_size`` exceeds the pool. Samplers whose signature names
``X_labeled`` / ``y_labeled`` also get a labeled set (sparse with sparse rows). Needs
``hypothesis`` (in the ``test`` extra).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=32)
def _fitted_model(n_classes: int, n_features: int, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """A small fitted pipeline and its labeled set; cached (samplers never mutate the model)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, n_features))
    y = np.arange(40) % n_classes
    X = centres[y] + rng.normal(size=(40, n_features))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y)
    return model, X, y


SPARSE_FEATURES = 300  # wider than crowdloop.rows.EXACT_DENSE_COLUMNS: distances go through a projection


def _sparse_rows(columns: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Any:
    """Nonnegative sparse rows like TF-IDF: each class draws mostly from its own block of columns."""
    import scipy.sparse as sp

    n, d = len(y), SPARSE_FEATURES
    cols = np.where(rng.random((n, 6)) < 0.7, columns[y], rng.integers(0, d, size=(n, 6)))
    data = rng.random((n, 6)) + 0.1
    return sp.csr_matrix((data.ravel(), (np.repeat(np.arange(n), 6), cols.ravel().astype(np.int64))), shape=(n, d))


def _class_columns(n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(SPARSE_FEATURES, size=6, replace=False) for _ in range(n_classes)])


@functools.lru_cache(maxsize=32)
def _fitted_sparse_model(n_classes: int, seed: int) -> tuple[Any, Any, np.ndarray]:
    """A pipeline fitted on sparse rows (the scaler keeps them sparse) and its sparse labeled set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.arange(40) % n_classes
    X = _sparse_rows(_class_columns(n_classes, seed), y, np.random.default_rng(seed))
    model = make_pipeline(StandardScaler(with_mean=False), LogisticRegression(max_iter=200)).fit(X, y)
    return model, X, y


def _call(sampler: Callable[..., Any], model: Any, X: np.ndarray, batch_size: int, rng: np.random.Generator,
          X_l: np.ndarray, y_l: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    accepts = inspect.signature(sampler).parameters
    kw = dict(params)
    if "X_labeled" in accepts:
        kw["X_labeled"] = X_l
    if "y_labeled" in accepts:
        kw["y_labeled"] = y_l
    return np.asarray(sampler(model, X, batch_size=batch_size, rng=rng, **kw))


def _check_once(sampler: Callable[..., Any], model: Any, X: Any, n: int, frac: float, seed: int, X_l: Any,
                y_l: np.ndarray, params: dict[str, Any], error: Any, kind: str) -> None:
    k = max(1, round(frac * n))
    a = _call(sampler, model, X, k, np.random.default_rng(seed), X_l, y_l, params)
    b = _call(sampler, model, X, k, np.random.default_rng(seed), X_l, y_l, params)
    assert a.ndim == 1 and len(a) == k, f"{kind} rows: expected exactly batch_size={k} indices, got shape {a.shape}"
    assert np.issubdtype(a.dtype, np.integer), f"{kind} rows: expected integer indices, got dtype {a.dtype}"
    assert len(np.unique(a)) == k, f"{kind} rows: indices are not unique: {sorted(a.tolist())}"
    assert a.min() >= 0 and a.max() < n, f"{kind} rows: indices outside the {n} candidate rows: {a.min()}..{a.max()}"
    assert np.array_equal(a, b), f"{kind} rows: same rng state gave different picks"
    try:
        _call(sampler, model, X, n + 1, np.random.default_rng(seed), X_l, y_l, params)
    except error:
        pass
    else:
        raise AssertionError(f"{kind} rows: batch_size={n + 1} > pool of {n} rows did not raise {error}")


def check_sampler(
    sampler: Callable[..., Any],
    *,
    params: dict[str, Any] | None = None,
    max_examples: int = 15,
    max_pool: int = 120,
    error: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    fitted_model: Callable[[int, int, int], tuple[Any, np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Run the contract properties against ``sampler`` (called with ``params`` as keywords).

    ``error`` is the exception type expected when the batch is larger than the pool
    (crowdloop's samplers raise ``crowdloop.errors.SamplerError``). ``fitted_model(n_classes,
    n_features, seed)`` returns ``(model, X_labeled, y_labeled)`` to test the sampler with
    another model (e.g. a torch classifier with MC dropout); default a scikit-learn pipeline.
    """
    if fitted_model is not None:
        fitted_model = functools.lru_cache(maxsize=32)(fitted_model)
    make = fitted_model or _fitted_model
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    params = dict(params or {})

    # No shrinking phase: a failure is reported at once, with the drawn example.
    @settings(max_examples=max_examples, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow])
    @given(
        n=st.integers(min_value=1, max_value=max_pool),
        frac=st.floats(min_value=0.0, max_value=1.0),
        n_classes=st.integers(min_value=2, max_value=5),
        seed=st.integers(min_value=0, max_value=2**31 - 1),
        duplicates=st.booleans(),
    )
    def contract(n: int, frac: float, n_classes: int, seed: int, duplicates: bool) -> None:
        # every draw runs on dense rows and, unless a custom model is given, on sparse rows too
        for sparse in (False, True) if fitted_model is None else (False,):
            data = np.random.default_rng(seed)
            if sparse:
                model, X_l, y_l = _fitted_sparse_model(n_classes, seed % 3)
                X = _sparse_rows(_class_columns(n_classes, seed % 3), data.integers(0, n_classes, size=n), data)
            else:
                model, X_l, y_l = make(n_classes, 4, seed % 3)
                X = data.normal(scale=3.0, size=(n, 4))
            if duplicates:  # repeated rows: ties everywhere, distances of zero
                X = X[data.integers(0, max(1, n // 3), size=n)]
            _check_once(sampler, model, X, n, frac, seed, X_l, y_l, params, error, "sparse" if sparse else "dense")

    contract()
