"""Batch-aware query strategies: committee disagreement, ranked batch, core-set, BADGE,
cluster-margin, weighted k-means over uncertain items, typicality cold start, and a
pre-filter wrapper that makes any of them affordable on million-row pools.

Every sampler keeps the package contract ``(model, X, *, batch_size, rng, **params) ->
indices`` (exactly ``batch_size`` unique rows of ``X``, same picks for the same ``rng``
state, an error when ``batch_size > len(X)``). Strategies that need the labeled set take
``X_labeled=`` (and QBC ``y_labeled=``); ``engine.select`` passes them only to samplers whose
signature names them. Every sampler accepts ``chunk_size`` (the engine passes it to all).

Notation for the complexities: n pool rows, d feature (embedding) dimension, C classes,
k = batch_size, L labeled rows, M pre-filtered candidates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from modAL.disagreement import KL_max_disagreement, consensus_entropy
from modAL.uncertainty import _proba_entropy, _proba_margin, _proba_uncertainty

from crowdloop._validation import check_batch_size
from crowdloop.errors import SamplerError
from crowdloop.rows import dense_rows, is_sparse, n_columns, n_rows, row_range, take
from crowdloop.samplers.scoring import check_rng, score_top_k

# Uncertainty measures by name (higher = more informative), shared by several strategies.
MEASURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "least_confident": _proba_uncertainty,
    "margin": lambda p: -_proba_margin(p),
    "entropy": _proba_entropy,
}


def _measure(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name not in MEASURES:
        raise SamplerError(f"measure={name!r}: expected one of {sorted(MEASURES)}")
    return MEASURES[name]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SamplerError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def embed(model: object, X: np.ndarray, *, chunk_size: int = 8192) -> np.ndarray:
    """Feature space for distances: ``model.embed`` when the model has one (penultimate layer,
    or a text pool's dense view), a text pool's dense view, the input of the final estimator
    for a scikit-learn ``Pipeline`` (e.g. scaled features), else ``X`` itself; sparse rows are
    made dense by ``crowdloop.rows.dense_rows`` (a fixed projection when wide). Computed in
    chunks; returns float64 (n, d)."""
    from sklearn.pipeline import Pipeline

    n = n_rows(X)
    if model is not None and hasattr(model, "embed"):
        fn: Callable[[Any], Any] = model.embed
    elif isinstance(model, Pipeline) and len(model.steps) > 1 and not hasattr(X, "dense"):
        fn = model[:-1].transform
    else:
        fn = lambda rows: rows  # noqa: E731 - the rows themselves (their dense view)
    parts = [dense_rows(fn(row_range(X, s, s + chunk_size))) for s in range(0, n, chunk_size)]
    return np.concatenate(parts).reshape(n, -1) if parts else np.empty((0, 0))


def _predict_proba(model: object, X: np.ndarray, chunk_size: int) -> np.ndarray:
    parts = [np.asarray(model.predict_proba(row_range(X, s, s + chunk_size))) for s in range(0, n_rows(X), chunk_size)]
    return np.concatenate(parts)


def _sq_dist_to(F: np.ndarray, sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances from every row of ``F`` (squared norms ``sq``) to ``c``."""
    return np.maximum(sq - 2.0 * (F @ c) + float(c @ c), 0.0)


def _min_sq_dist(F: np.ndarray, sq: np.ndarray, G: np.ndarray, block: int = 1024) -> np.ndarray:
    """Squared distance from each row of ``F`` to its nearest row of ``G``; O(n·|G|·d) time,
    O(n·block) memory."""
    best = np.full(len(F), np.inf)
    gsq = np.einsum("ij,ij->i", G, G)
    for s in range(0, len(G), block):
        d = sq[:, None] - 2.0 * (F @ G[s : s + block].T) + gsq[None, s : s + block]
        best = np.minimum(best, d.min(axis=1))
    return np.maximum(best, 0.0)


def _argmax_tiebreak(scores: np.ndarray, keys: np.ndarray) -> int:
    """Index of the highest score; exact ties go to the lowest random key."""
    top = np.flatnonzero(scores == scores.max())
    return int(top[np.argmin(keys[top])]) if len(top) > 1 else int(top[0])


def _check_labeled(X_labeled: Any, n_features: int) -> Any:
    """The labeled rows (array, sparse or text rows) when there are any, else None."""
    if X_labeled is None:
        return None
    if not (is_sparse(X_labeled) or hasattr(X_labeled, "dense")):
        X_labeled = np.asarray(X_labeled)
    shape = tuple(X_labeled.shape)
    if len(shape) != 2 or (shape[0] and shape[1] != n_features):
        raise SamplerError(f"X_labeled has shape {shape}: expected (n_labeled, {n_features})")
    return X_labeled if shape[0] else None


# -- query by committee -------------------------------------------------------------------


class BaggingCommittee:
    """A bagging committee with the attributes modAL's disagreement measures read
    (``len``, iteration, ``classes_``, ``vote``, ``vote_proba``, ``predict_proba``).

    Members are clones of the model fitted on bootstrap resamples of the labeled set; the
    model itself is never fitted or mutated. Columns are aligned to ``model.classes_`` when a
    bootstrap sample misses a class.
    """

    def __init__(self, model: object, X_labeled: np.ndarray, y_labeled: np.ndarray, *, n_members: int,
                 rng: np.random.Generator) -> None:
        from sklearn.base import clone

        self.classes_ = np.asarray(getattr(model, "classes_", np.unique(y_labeled)))
        self.members: list[Any] = []
        n = len(y_labeled)
        for _ in range(n_members):
            for _attempt in range(20):  # a bootstrap needs two classes to fit
                idx = rng.integers(0, n, size=n)
                if len(np.unique(y_labeled[idx])) >= 2:
                    break
            else:
                idx = np.arange(n)
            self.members.append(clone(model).fit(X_labeled[idx], y_labeled[idx]))

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def vote_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, n_members, n_classes) probabilities, columns in ``classes_`` order."""
        out = np.zeros((n_rows(X), len(self.members), len(self.classes_)))
        for j, member in enumerate(self.members):
            cols = np.searchsorted(self.classes_, member.classes_)
            out[:, j, cols] = member.predict_proba(X)
        return out

    def vote(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.vote_proba(X).argmax(axis=2)]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.vote_proba(X).mean(axis=1)


def vote_entropy(committee: BaggingCommittee, X: np.ndarray) -> np.ndarray:
    """Entropy of the members' hard votes; a vectorised twin of ``modAL.disagreement.vote_entropy``
    (which loops over rows in Python), checked equal to it in the tests."""
    votes = committee.vote_proba(X).argmax(axis=2)
    counts = np.stack([(votes == c).sum(axis=1) for c in range(len(committee.classes_))], axis=1)
    p = counts / len(committee)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


DISAGREEMENTS: dict[str, Callable[[Any, np.ndarray], np.ndarray]] = {
    "vote_entropy": vote_entropy,
    "consensus_entropy": consensus_entropy,  # modAL
    "kl_max": KL_max_disagreement,  # modAL
}


def qbc_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    X_labeled: np.ndarray | None = None,
    y_labeled: np.ndarray | None = None,
    disagreement: str = "vote_entropy",
    n_members: int = 5,
    chunk_size: int = 8192,
) -> np.ndarray:
    """Query by committee: the rows a bagging committee disagrees on most.

    Needs the labeled set (``X_labeled``, ``y_labeled``) to fit ``n_members`` clones on
    bootstrap resamples. Time O(n_members · (fit(L) + n · cost(predict_proba))), memory
    O(chunk_size · n_members · C + k).
    """
    rng = check_rng(rng)
    check_batch_size(batch_size, n_rows(X))
    n_members = _positive_int("n_members", n_members)
    if disagreement not in DISAGREEMENTS:
        raise SamplerError(f"disagreement={disagreement!r}: expected one of {sorted(DISAGREEMENTS)}")
    if X_labeled is None or y_labeled is None or n_rows(X_labeled) == 0:
        raise SamplerError("qbc needs the labeled set: pass X_labeled= and y_labeled= (engine.select does)")
    if not (is_sparse(X_labeled) or hasattr(X_labeled, "dense")):
        X_labeled = np.asarray(X_labeled)
    y_labeled = np.asarray(y_labeled)
    if n_rows(X_labeled) != len(y_labeled):
        raise SamplerError(f"X_labeled has {n_rows(X_labeled)} rows but y_labeled has {len(y_labeled)}: expected equal")
    committee = BaggingCommittee(model, X_labeled, y_labeled, n_members=n_members, rng=rng)
    measure = DISAGREEMENTS[disagreement]

    class _Scorer:  # score_top_k calls predict_proba per chunk; route it through the committee
        def predict_proba(self, chunk: np.ndarray) -> np.ndarray:
            return np.asarray(measure(committee, chunk), dtype=np.float64)[:, None]

    return score_top_k(_Scorer(), X, lambda s: s[:, 0], batch_size=batch_size, rng=rng, chunk_size=chunk_size)


# -- ranked batch (Cardoso et al. 2017) -----------------------------------------------------


def ranked_batch_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    X_labeled: np.ndarray | None = None,
    measure: str = "least_confident",
    chunk_size: int = 8192,
) -> np.ndarray:
    """Ranked batch-mode sampling (Cardoso et al., Inf. Sci. 2017), as in modAL's
    ``uncertainty_batch_sampling``: repeatedly take the row maximising
    ``α·(1 − 1/(1 + d_min)) + (1 − α)·uncertainty`` with ``α = |U| / (|U| + |L|)``, where
    ``d_min`` is the Euclidean distance to the labeled rows and those already picked.

    modAL recomputes every distance to the whole labeled set at each step (O(k·n·(L+k)·d));
    this keeps a running minimum: O(n·(L + k)·d) time, O(n) memory. Without labels the first
    row is the one with the smallest mean distance to the pool (modAL's cold start), found in
    O(n·d) through the centroid identity.
    """
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    unc = _measure(measure)
    proba = _predict_proba(model, X, chunk_size)
    uncertainty = np.asarray(unc(proba), dtype=np.float64)
    F = embed(model, X, chunk_size=chunk_size)
    sq = np.einsum("ij,ij->i", F, F)
    L = _check_labeled(X_labeled, n_columns(X) if n else 0)
    keys = rng.random(n)
    chosen: list[int] = []
    if L is not None:
        d_min = np.sqrt(_min_sq_dist(F, sq, embed(model, L, chunk_size=chunk_size)))
        n_labeled = n_rows(L)
    else:  # modAL's cold start: the row closest on average to all others (squared distances)
        mean_sq = sq - 2.0 * F @ F.mean(axis=0) + sq.mean()
        first = _argmax_tiebreak(-mean_sq, keys)
        chosen.append(first)
        d_min = np.sqrt(_sq_dist_to(F, sq, F[first]))
        n_labeled = 1
    available = np.ones(n, dtype=bool)
    available[chosen] = False
    while len(chosen) < k:
        n_unlabeled = int(available.sum())
        alpha = n_unlabeled / (n_unlabeled + n_labeled + len(chosen) - (0 if L is not None else 1))
        scores = alpha * (1.0 - 1.0 / (1.0 + d_min)) + (1.0 - alpha) * uncertainty
        scores = np.where(available, scores, -np.inf)
        i = _argmax_tiebreak(scores, keys)
        chosen.append(i)
        available[i] = False
        d_min = np.minimum(d_min, np.sqrt(_sq_dist_to(F, sq, F[i])))
    return np.asarray(chosen, dtype=np.int64)


# -- core-set (Sener & Savarese 2018) -------------------------------------------------------


def coreset_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    X_labeled: np.ndarray | None = None,
    chunk_size: int = 8192,
) -> np.ndarray:
    """Core-set by k-center greedy: repeatedly the row farthest from the labeled rows and the
    rows already picked, in the model's embedding (see :func:`embed`). Without labels the first
    centre is random. Time O(n·(L + k)·d), memory O(n·d) for the embedding.
    """
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    F = embed(model, X, chunk_size=chunk_size)
    sq = np.einsum("ij,ij->i", F, F)
    keys = rng.random(n)
    L = _check_labeled(X_labeled, n_columns(X) if n else 0)
    chosen: list[int] = []
    if L is not None:
        d = _min_sq_dist(F, sq, embed(model, L, chunk_size=chunk_size))
    else:
        first = int(rng.integers(n))
        chosen.append(first)
        d = _sq_dist_to(F, sq, F[first])
    available = np.ones(n, dtype=bool)
    available[chosen] = False
    while len(chosen) < k:
        i = _argmax_tiebreak(np.where(available, d, -np.inf), keys)
        chosen.append(i)
        available[i] = False
        d = np.minimum(d, _sq_dist_to(F, sq, F[i]))
    return np.asarray(chosen, dtype=np.int64)


# -- BADGE (Ash et al. 2020) ----------------------------------------------------------------


def badge_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    chunk_size: int = 8192,
) -> np.ndarray:
    """BADGE: k-means++ seeding over gradient embeddings g = (p − onehot(argmax p)) ⊗ [h, 1],
    the gradient of the cross-entropy at the predicted label w.r.t. the last linear layer; h is
    ``model.embed(X)`` when present, else the final estimator's input (closed form for linear
    models). The outer product is never built: ⟨g_i, g_j⟩ = ⟨a_i, a_j⟩·⟨h_i, h_j⟩.
    Time O(n·k·(C + d)), memory O(n·(C + d)).
    """
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    P = _predict_proba(model, X, chunk_size)
    A = P.copy()
    A[np.arange(n), P.argmax(axis=1)] -= 1.0
    H = embed(model, X, chunk_size=chunk_size)
    H = np.hstack([H, np.ones((n, 1))])
    a_sq = np.einsum("ij,ij->i", A, A)
    h_sq = np.einsum("ij,ij->i", H, H)
    g_sq = a_sq * h_sq
    keys = rng.random(n)

    def sq_dist(i: int) -> np.ndarray:
        return np.maximum(g_sq + g_sq[i] - 2.0 * (A @ A[i]) * (H @ H[i]), 0.0)

    first = _argmax_tiebreak(g_sq, keys)  # the original starts from the largest gradient
    chosen = [first]
    available = np.ones(n, dtype=bool)
    available[first] = False
    d = sq_dist(first)
    while len(chosen) < k:
        w = np.where(available, d, 0.0)
        total = w.sum()
        # when every remaining row duplicates a centre (total 0), any of them
        i = int(rng.choice(n, p=w / total)) if total > 0 else int(rng.choice(np.flatnonzero(available)))
        chosen.append(i)
        available[i] = False
        d = np.minimum(d, sq_dist(i))
    return np.asarray(chosen, dtype=np.int64)


# -- diversity among the most uncertain -----------------------------------------------------


def cluster_margin_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    candidates_factor: int = 10,
    n_clusters: int | None = None,
    chunk_size: int = 8192,
) -> np.ndarray:
    """Cluster-margin (Citovsky et al. 2021): the ``candidates_factor·k`` lowest-margin rows are
    clustered by average-linkage agglomerative clustering in the embedding; the batch is drawn
    round-robin over clusters, smallest first, random within a cluster.
    Time O(n·cost(predict_proba) + M²·d) with M = min(n, candidates_factor·k), memory O(M²).
    """
    from sklearn.cluster import AgglomerativeClustering

    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    m = min(n, _positive_int("candidates_factor", candidates_factor) * k)
    cand = score_top_k(model, X, MEASURES["margin"], batch_size=m, rng=rng, chunk_size=chunk_size)
    if m == k:
        return cand
    n_clusters = k if n_clusters is None else min(_positive_int("n_clusters", n_clusters), m)
    cand = np.sort(cand)
    F = embed(model, take(X, cand), chunk_size=chunk_size)
    labels = AgglomerativeClustering(n_clusters=n_clusters, linkage="average").fit_predict(F)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(n_clusters)]
    queues.sort(key=len)
    chosen: list[int] = []
    while len(chosen) < k:
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(int(cand[q.pop()]))
    return np.asarray(chosen, dtype=np.int64)


def kmeans_uncertain_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    measure: str = "margin",
    candidates_factor: int = 10,
    chunk_size: int = 8192,
) -> np.ndarray:
    """Diverse mini-batch AL (Zhdanov 2019): k-means with k = batch_size over the
    ``candidates_factor·k`` most uncertain rows, weighted by uncertainty; the row nearest each
    centre is picked. Time O(n·cost(predict_proba) + M·k·d·iters), memory O(M·d).
    """
    from sklearn.cluster import KMeans

    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    score = _measure(measure)
    m = min(n, _positive_int("candidates_factor", candidates_factor) * k)
    cand = np.sort(score_top_k(model, X, score, batch_size=m, rng=rng, chunk_size=chunk_size))
    if m == k:
        return cand
    Xc = take(X, cand)
    s = np.asarray(score(np.asarray(model.predict_proba(Xc))), dtype=np.float64)
    w = np.maximum(s + 1.0 if measure == "margin" else s, 1e-6)  # margin score is −margin: weight 1 − margin
    F = embed(model, Xc, chunk_size=chunk_size)
    km = KMeans(n_clusters=k, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(F, sample_weight=w)
    sq = np.einsum("ij,ij->i", F, F)
    available = np.ones(m, dtype=bool)
    chosen: list[int] = []
    for c in km.cluster_centers_:
        d = np.where(available, _sq_dist_to(F, sq, c), np.inf)
        i = int(np.argmin(d))
        available[i] = False
        chosen.append(int(cand[i]))
    return np.asarray(chosen, dtype=np.int64)


# -- typicality cold start (TypiClust, Hacohen et al. 2022) ---------------------------------


def typiclust_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    X_labeled: np.ndarray | None = None,
    n_neighbors: int = 20,
    max_clusters: int = 500,
    chunk_size: int = 8192,
) -> np.ndarray:
    """TypiClust: k-means into |L| + k clusters (at most ``max_clusters``); from the largest
    clusters that hold no labeled row, the most typical row (inverse mean distance to its
    ``n_neighbors`` nearest neighbours in the cluster). Works without a model (round 0): the
    features are then standardised ``X``. Time O(n·(L+k)·d·iters + Σ_c n_c²·d), memory
    O(n·d + max n_c²).
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler

    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    n_neighbors = _positive_int("n_neighbors", n_neighbors)
    max_clusters = _positive_int("max_clusters", max_clusters)
    L = _check_labeled(X_labeled, n_columns(X) if n else 0)
    if model is None:
        scaler = StandardScaler().fit(dense_rows(X))
        F = scaler.transform(dense_rows(X))
        FL = scaler.transform(dense_rows(L)) if L is not None else None
    else:
        F = embed(model, X, chunk_size=chunk_size)
        FL = embed(model, L, chunk_size=chunk_size) if L is not None else None
    n_l = 0 if FL is None else len(FL)
    n_clusters = max(k, min(n_l + k, max_clusters, n))
    seed = int(rng.integers(2**31 - 1))
    # exact k-means while it is cheap; mini-batch k-means on large pools
    km = (KMeans(n_clusters=n_clusters, n_init=1, max_iter=100, random_state=seed) if n <= 50_000
          else MiniBatchKMeans(n_clusters=n_clusters, n_init=1, random_state=seed))
    km.fit(F if FL is None else np.vstack([F, FL]))
    labels = km.predict(F)
    covered = np.zeros(n_clusters, dtype=bool)
    if FL is not None:
        covered[km.predict(FL)] = True
    sizes = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    keys = rng.random(n_clusters)
    row_keys = rng.random(n)
    taken = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    while len(chosen) < k:
        open_ = ~covered & (sizes > 0)
        if not open_.any():  # every cluster has a label: start another pass over them
            covered[:] = False
            open_ = sizes > 0
        c = _argmax_tiebreak(np.where(open_, sizes, -np.inf), keys)
        members = np.flatnonzero((labels == c) & ~taken)
        covered[c] = True
        if len(members) == 0:
            sizes[c] = 0
            continue
        G = F[members]
        gsq = np.einsum("ij,ij->i", G, G)
        D = np.sqrt(np.maximum(gsq[:, None] - 2.0 * G @ G.T + gsq[None, :], 0.0))
        nn = min(n_neighbors, len(members) - 1)
        if nn > 0:
            mean_d = np.sort(D, axis=1)[:, 1 : nn + 1].mean(axis=1)
            typicality = 1.0 / (mean_d + 1e-12)
        else:
            typicality = np.ones(len(members))
        i = int(members[_argmax_tiebreak(typicality, row_keys[members])])
        taken[i] = True
        sizes[c] -= 1
        chosen.append(i)
    return np.asarray(chosen, dtype=np.int64)


# -- scaling and mixing wrappers ------------------------------------------------------------


def _accepted(fn: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that ``fn`` names (all of them if it takes ``**kwargs``)."""
    sig = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
        return params
    return {key: v for key, v in params.items() if key in sig}


def _load(base: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(base):
        return base
    from crowdloop import registry

    return registry.samplers.load(base)


def prefiltered_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    base: str = "badge",
    prefilter: str = "uncertain",
    measure: str = "margin",
    candidates: int | None = None,
    chunk_size: int = 8192,
    X_labeled: np.ndarray | None = None,
    y_labeled: np.ndarray | None = None,
    base_params: dict[str, Any] | None = None,
) -> np.ndarray:
    """Run the expensive ``base`` strategy (a registered sampler name) only on M candidates:
    the top-M by ``measure`` (``prefilter="uncertain"``, one streaming pass) or a uniform
    random subsample (``prefilter="random"``). M defaults to max(10·k, 1000).
    Time O(n·cost(predict_proba)) + cost(base on M); memory O(chunk_size + M·d).
    """
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    if prefilter not in ("uncertain", "random"):
        raise SamplerError(f"prefilter={prefilter!r}: expected 'uncertain' or 'random'")
    m = max(10 * k, 1000) if candidates is None else _positive_int("candidates", candidates)
    m = min(max(m, k), n)
    fn = _load(base)
    params = _accepted(fn, {"chunk_size": chunk_size, "X_labeled": X_labeled, "y_labeled": y_labeled,
                            **(base_params or {})})
    if m == n:
        return np.asarray(fn(model, X, batch_size=k, rng=rng, **params), dtype=np.int64)
    if prefilter == "uncertain":
        cand = np.sort(score_top_k(model, X, _measure(measure), batch_size=m, rng=rng, chunk_size=chunk_size))
    else:
        cand = np.sort(rng.choice(n, size=m, replace=False))
    picked = np.asarray(fn(model, take(X, cand), batch_size=k, rng=rng, **params), dtype=np.int64)
    return cand[picked]


def mixed_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    base: str = "kmeans_margin",
    random_fraction: float = 0.2,
    chunk_size: int = 8192,
    X_labeled: np.ndarray | None = None,
    y_labeled: np.ndarray | None = None,
    base_params: dict[str, Any] | None = None,
) -> np.ndarray:
    """``round(random_fraction·k)`` uniform random rows, the rest from ``base`` over the
    remaining rows. The random share keeps an unbiased view of the pool, so on noisy pools the
    batch cannot collapse onto label noise the way pure uncertainty does (it never does worse
    than random by more than the base's share). Cost: that of ``base`` plus O(n).
    """
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    if not 0.0 <= float(random_fraction) <= 1.0:
        raise SamplerError(f"random_fraction={random_fraction!r}: expected a number in [0, 1]")
    n_random = round(float(random_fraction) * k)
    rand = rng.choice(n, size=n_random, replace=False) if n_random else np.empty(0, dtype=np.int64)
    if n_random == k:
        return np.asarray(rand, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), rand)
    fn = _load(base)
    params = _accepted(fn, {"chunk_size": chunk_size, "X_labeled": X_labeled, "y_labeled": y_labeled,
                            **(base_params or {})})
    picked = np.asarray(fn(model, take(X, rest), batch_size=k - n_random, rng=rng, **params), dtype=np.int64)
    return np.concatenate([rest[picked], rand]).astype(np.int64)


def best_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    chunk_size: int = 8192,
) -> np.ndarray:
    """crowdloop's default sampler: margin-weighted k-means over the 10·k lowest-margin rows
    (:func:`kmeans_uncertain_sampling`), the sampler that needed the fewest labels across the
    benchmark sets; ``crowdloop:best`` in BENCHMARKS.md is this sampler plus
    ``semi_supervised.method: label_spreading``. Cost: one
    streaming ``predict_proba`` pass, O(n), plus k-means on 10·k candidates, O(10·k²·d·iters),
    so it scales to million-row pools."""
    return kmeans_uncertain_sampling(model, X, batch_size=batch_size, rng=rng, measure="margin",
                                     candidates_factor=10, chunk_size=chunk_size)
