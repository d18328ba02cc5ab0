"""Row access shared by samplers and models, whatever holds a pool's features.

A pool's ``X`` is a dense NumPy array, a SciPy sparse matrix (e.g. TF-IDF), or a lazy row
object with ``take_view`` (``models.sharded.ShardedRows``: rows read shard by shard;
``models.text.TextRows``: rows featurized from texts, which also carry a dense view). These
helpers let one sampler serve all of them without densifying a sparse pool: ``len()`` is
ambiguous on a SciPy matrix and ``np.asarray`` of one is a 0-d object array, so the samplers
ask here instead.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# Sparse rows with at most this many columns are densified exactly; wider ones are projected.
EXACT_DENSE_COLUMNS = 256
PROJECTED_DIM = 128


def is_sparse(X: Any) -> bool:
    import scipy.sparse as sp

    return sp.issparse(X)


def n_rows(X: Any) -> int:
    """Number of rows: ``shape[0]`` when there is one (SciPy refuses ``len``), else ``len``."""
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else len(X)


def n_columns(X: Any) -> int:
    """Number of feature columns (1 for a 1-D array)."""
    shape = getattr(X, "shape", None)
    if shape is not None:
        return int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return int(np.asarray(X).reshape(n_rows(X), -1).shape[1])


def take(X: Any, index: Any) -> Any:
    """Rows ``index`` of ``X`` in its own kind: an array, a sparse matrix, or, for text rows, a
    lazy view that featurizes nothing yet and keeps the rows' dense view (sharded rows are read,
    as before: a NumPy array)."""
    if hasattr(X, "take_view") and hasattr(X, "dense"):
        return X.take_view(np.asarray(index))
    if is_sparse(X):
        return X[np.asarray(index)]
    return np.asarray(X[index])


def row_range(X: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` as a model takes them: sparse and text rows stay what they are."""
    if is_sparse(X) or hasattr(X, "dense"):
        return X[start:stop]
    return np.asarray(X[start:stop])


def feature_rows(X: Any) -> Any:
    """What an estimator is fitted on: the features themselves (sparse stays sparse)."""
    if hasattr(X, "features"):
        return X.features()
    if is_sparse(X):
        return X.tocsr()
    return np.asarray(X)


@functools.lru_cache(maxsize=8)
def _projection(n_features: int, n_components: int):
    """A sparse random projection (Johnson-Lindenstrauss) that depends only on the column count,
    so every call projects labeled and unlabeled rows into the same space."""
    import scipy.sparse as sp
    from sklearn.random_projection import SparseRandomProjection

    return SparseRandomProjection(n_components=n_components, random_state=0).fit(sp.csr_matrix((1, n_features)))


def dense_rows(X: Any) -> np.ndarray:
    """A dense float64 (n, d) view of ``X`` for distances (k-means, core-set, k-NN graphs).

    Text rows give their own dense view (TruncatedSVD of TF-IDF, the embeddings, ...); a sparse
    matrix is densified exactly when narrow and otherwise projected to ``PROJECTED_DIM``
    columns by a fixed sparse random projection, so the whole pool is never densified."""
    if hasattr(X, "dense"):
        return np.asarray(X.dense(), dtype=np.float64)
    if is_sparse(X):
        if X.shape[1] <= EXACT_DENSE_COLUMNS:
            return np.asarray(X.toarray(), dtype=np.float64)
        projected = _projection(int(X.shape[1]), PROJECTED_DIM).transform(X)
        return np.asarray(projected.toarray() if is_sparse(projected) else projected, dtype=np.float64)
    return np.asarray(X, dtype=np.float64).reshape(n_rows(X), -1)
