"""Random and uncertainty sampling (least-confident, margin, entropy).

The measures are modAL's functions over probability matrices; modAL's ``ActiveLearner`` no
longer works with current scikit-learn, so crowdloop owns the loop and the chunked top-k.
Each uncertainty sampler costs one ``predict_proba`` pass: O(n) time, O(chunk) memory.
"""

from __future__ import annotations

import numpy as np
from modAL.uncertainty import _proba_entropy, _proba_margin, _proba_uncertainty

from crowdloop._validation import check_batch_size
from crowdloop.rows import dense_rows, n_rows
from crowdloop.samplers.scoring import check_rng, score_top_k


def random_sampling(model: object, X: np.ndarray, *, batch_size: int, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Uniform random batch; ignores the model (it may be ``None``). O(n) time."""
    rng = check_rng(rng)
    k = check_batch_size(batch_size, n_rows(X))
    return np.sort(rng.choice(n_rows(X), size=k, replace=False)).astype(np.int64)


def least_confident_sampling(
    model: object, X: np.ndarray, *, batch_size: int, rng: np.random.Generator, chunk_size: int = 8192
) -> np.ndarray:
    """Rows whose top class probability is lowest (1 − max p)."""
    return score_top_k(model, X, _proba_uncertainty, batch_size=batch_size, rng=rng, chunk_size=chunk_size)


def margin_sampling(
    model: object, X: np.ndarray, *, batch_size: int, rng: np.random.Generator, chunk_size: int = 8192
) -> np.ndarray:
    """Rows with the smallest gap between the two most probable classes."""
    return score_top_k(model, X, lambda p: -_proba_margin(p), batch_size=batch_size, rng=rng, chunk_size=chunk_size)


def entropy_sampling(
    model: object, X: np.ndarray, *, batch_size: int, rng: np.random.Generator, chunk_size: int = 8192
) -> np.ndarray:
    """Rows with the highest predictive entropy."""
    return score_top_k(model, X, _proba_entropy, batch_size=batch_size, rng=rng, chunk_size=chunk_size)


def kmeans_cold_start(X: np.ndarray, *, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Round-0 diversity rule: the item nearest to each of ``batch_size`` k-means centres.

    Needs no model. O(n · batch_size · iterations) with mini-batch k-means.
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler

    rng = check_rng(rng)
    k = check_batch_size(batch_size, n_rows(X))
    Z = StandardScaler().fit_transform(dense_rows(X))
    km = MiniBatchKMeans(n_clusters=k, random_state=int(rng.integers(2**31 - 1)), n_init=3).fit(Z)
    dist = ((Z[:, None, :] - km.cluster_centers_[None, :, :]) ** 2).sum(-1) if len(Z) * k <= 4_000_000 else None
    chosen: list[int] = []
    taken = np.zeros(len(Z), dtype=bool)
    for c in range(k):
        d = dist[:, c] if dist is not None else ((Z - km.cluster_centers_[c]) ** 2).sum(1)
        d = np.where(taken, np.inf, d)
        i = int(np.argmin(d))
        taken[i] = True
        chosen.append(i)
    return np.array(chosen, dtype=np.int64)


# Score functions over probability rows (higher = more informative). A sampler carrying one is
# decomposable: top-k over shards then top-k of the union equals top-k over the whole pool, so
# the flow can score shards as parallel tasks (on Dask workers) and merge.
least_confident_sampling.proba_score = _proba_uncertainty  # type: ignore[attr-defined]
margin_sampling.proba_score = lambda p: -_proba_margin(p)  # type: ignore[attr-defined]
entropy_sampling.proba_score = _proba_entropy  # type: ignore[attr-defined]
