"""Majority vote, weighted vote and Dawid-Skene (full-confusion, one-coin, auto) aggregators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from scipy import sparse

_EPS = 1e-10
REQUIRED_COLUMNS = ("task", "worker", "label")


@dataclass
class _Encoded:
    tasks: np.ndarray
    workers: np.ndarray
    classes: np.ndarray
    t: np.ndarray
    w: np.ndarray
    y: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.tasks), len(self.workers), len(self.classes)


def _encode(data: pd.DataFrame, classes: list | None, extra_labels: list | None = None) -> _Encoded:
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data: expected a pandas DataFrame with columns {REQUIRED_COLUMNS}, got {type(data).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"data: missing column(s) {missing}; expected columns {list(REQUIRED_COLUMNS)}")
    if data[list(REQUIRED_COLUMNS)].isna().any().any():
        raise ValueError("data: task, worker and label must not contain missing values")
    t, tasks = pd.factorize(data["task"], sort=False)
    w, workers = pd.factorize(data["worker"], sort=False)
    seen = pd.unique(pd.concat([data["label"], pd.Series(extra_labels or [], dtype=object)], ignore_index=True))
    if classes is not None:
        unknown = sorted(set(seen.tolist()) - set(classes), key=str)
        if unknown:
            raise ValueError(f"data: label(s) {unknown[:5]} are not in classes={list(classes)}")
        class_index = pd.Index(list(classes))
    else:
        class_index = pd.Index(sorted(seen.tolist(), key=str))
    y = class_index.get_indexer(data["label"])
    return _Encoded(np.asarray(tasks), np.asarray(workers), np.asarray(class_index), t, w, y)


class _Aggregator:
    """Shared result handling; subclasses implement ``_fit_posteriors``."""

    labels_: pd.Series
    probas_: pd.DataFrame
    confidence_: pd.Series
    skills_: pd.Series

    def __init__(self, classes: list | None = None) -> None:
        self.classes = classes

    def fit(self, data: pd.DataFrame, true_labels: pd.Series | None = None) -> _Aggregator:
        """Aggregate; ``true_labels`` (task → label, e.g. gold answers) are held fixed."""
        gold = None if true_labels is None else pd.Series(true_labels)
        enc = _encode(data, self.classes, None if gold is None else gold.tolist())
        T, W, K = enc.shape
        gold_rows = gold_cols = np.empty(0, dtype=np.int64)
        if gold is not None and T:
            pos = pd.Index(enc.tasks).get_indexer(gold.index)
            keep = pos >= 0
            gold_rows = pos[keep]
            gold_cols = pd.Index(enc.classes).get_indexer(gold.to_numpy()[keep])
        post = self._fit_posteriors(enc, gold_rows, gold_cols) if T else np.zeros((0, K))
        self.probas_ = pd.DataFrame(post, index=pd.Index(enc.tasks, name="task"), columns=pd.Index(enc.classes, name="label"))
        best = post.argmax(axis=1) if T else np.empty(0, dtype=np.int64)
        self.labels_ = pd.Series(enc.classes[best] if T else [], index=self.probas_.index, name="agg_label", dtype=object)
        self.confidence_ = pd.Series(post.max(axis=1) if T else [], index=self.probas_.index, name="confidence", dtype=float)
        # Skill: expected share of a worker's answers that match the posterior truth.
        agree = post[enc.t, enc.y] if T else np.empty(0)
        n = np.bincount(enc.w, minlength=W)
        skill = np.bincount(enc.w, weights=agree, minlength=W) / np.maximum(n, 1)
        self.skills_ = pd.Series(skill, index=pd.Index(enc.workers, name="worker"), name="skill")
        return self

    def fit_predict(self, data: pd.DataFrame, true_labels: pd.Series | None = None) -> pd.Series:
        return self.fit(data, true_labels).labels_

    def fit_predict_proba(self, data: pd.DataFrame, true_labels: pd.Series | None = None) -> pd.DataFrame:
        return self.fit(data, true_labels).probas_

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _vote_proba(enc: _Encoded) -> np.ndarray:
    T, _, K = enc.shape
    counts = np.bincount(enc.t * K + enc.y, minlength=T * K).reshape(T, K).astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    # A task without answers (only in a cross-validation fold) starts uniform.
    return np.where(total > 0, counts / np.maximum(total, 1.0), 1.0 / max(K, 1))


def _fix_gold(post: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if len(rows):
        post[rows] = 0.0
        post[rows, cols] = 1.0
    return post


class MajorityVote(_Aggregator):
    """Share of votes per label. Ties go to the first label in class order (as crowd-kit)."""

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        return _fix_gold(_vote_proba(enc), gold_rows, gold_cols)


class WeightedMajorityVote(_Aggregator):
    """Votes weighted by each worker's log-odds of being right (one-coin optimal weights).

    ``weights`` (worker → skill in (0, 1)) may be given, e.g. from gold accuracy; otherwise
    skills are estimated as each worker's agreement with the current weighted vote, a few
    times over (Wawa-style), with gold tasks held at their known answers. The posterior is
    the softmax of the weighted votes, which is the Bayes posterior under a one-coin model.
    """

    def __init__(self, weights: dict | pd.Series | None = None, n_iter: int = 5, classes: list | None = None) -> None:
        super().__init__(classes)
        if n_iter < 1:
            raise ValueError(f"n_iter={n_iter}: expected a positive integer")
        self.weights, self.n_iter = weights, n_iter

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        T, W, K = enc.shape
        post = _fix_gold(_vote_proba(enc), gold_rows, gold_cols)
        n = np.bincount(enc.w, minlength=W).astype(np.float64)
        given = None
        if self.weights is not None:
            given = pd.Series(self.weights, dtype=float).reindex(enc.workers).fillna(1.0 / max(K, 1)).to_numpy()
        for _ in range(1 if given is not None else self.n_iter):
            if given is not None:
                skill = given
            else:
                hard = np.zeros_like(post)
                hard[np.arange(T), post.argmax(axis=1)] = 1.0
                skill = (np.bincount(enc.w, weights=hard[enc.t, enc.y], minlength=W) + 1.0) / (n + 2.0)
            skill = np.clip(skill, 1e-3, 1 - 1e-3)
            weight = np.log(skill) - np.log((1 - skill) / max(K - 1, 1))
            score = np.bincount(enc.t * K + enc.y, weights=weight[enc.w], minlength=T * K).reshape(T, K)
            score -= score.max(axis=1, keepdims=True)
            post = np.exp(score)
            post /= post.sum(axis=1, keepdims=True)
            post = _fix_gold(post, gold_rows, gold_cols)
        self.worker_accuracy_ = skill
        return post


def _judgment_matrix(enc: _Encoded) -> sparse.csr_matrix:
    """Sparse (worker·K + label) × task count matrix: one EM half-step is one product with it."""
    from scipy import sparse

    T, W, K = enc.shape
    data = np.ones(len(enc.t), dtype=np.float64)
    return sparse.csr_matrix((data, (enc.w * K + enc.y, enc.t)), shape=(W * K, T))


class DawidSkene(_Aggregator):
    """Dawid & Skene (1979) with a full confusion matrix per worker, fitted by EM.

    ``smoothing`` adds pseudo-counts to every confusion cell (0 reproduces crowd-kit's
    estimator); a little smoothing helps when workers have few answers for K² parameters.
    Each EM half-step is one sparse product over the judgments (O(n_judgments · K)), which
    is what makes it several times faster than pandas group-bys on 10⁵–10⁶ judgments.
    """

    def __init__(self, n_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.0, classes: list | None = None) -> None:
        super().__init__(classes)
        if n_iter < 1:
            raise ValueError(f"n_iter={n_iter}: expected a positive integer")
        if smoothing < 0:
            raise ValueError(f"smoothing={smoothing}: expected a non-negative number")
        self.n_iter, self.tol, self.smoothing = n_iter, tol, smoothing

    def _prepare(self, enc: _Encoded) -> None:
        self._A = _judgment_matrix(enc)
        self._AT = self._A.T  # CSC view: no copy, and CSC @ dense is as fast as CSR @ dense

    def _task_loglik(self, enc: _Encoded, post: np.ndarray) -> np.ndarray:
        """M-step then the likelihood part of the E-step: sum of log P(answers | class k), (T, K)."""
        _T, W, K = enc.shape
        conf = (self._A @ post).reshape(W, K, K).transpose(0, 2, 1)  # [worker, true k, observed l]
        conf = conf + self.smoothing
        np.clip(conf, _EPS, None, out=conf)
        conf /= conf.sum(axis=2, keepdims=True)
        self.errors_ = conf
        logc = np.log(conf).transpose(0, 2, 1).reshape(W * K, K)  # row (w, l), column k
        return np.asarray(self._AT @ logc)

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        _T, _, _K = enc.shape
        self._prepare(enc)
        post = _fix_gold(_vote_proba(enc), gold_rows, gold_cols)
        previous = -np.inf
        n = len(enc.t)
        self.n_iter_ = 0
        for _ in range(self.n_iter):
            log_prior = np.log(np.clip(post.mean(axis=0), _EPS, None))
            loglik = self._task_loglik(enc, post) + log_prior
            top = loglik.max(axis=1, keepdims=True)
            post = np.exp(loglik - top)
            norm = post.sum(axis=1, keepdims=True)
            post /= norm
            post = _fix_gold(post, gold_rows, gold_cols)
            self.n_iter_ += 1
            objective = float((top[:, 0] + np.log(norm[:, 0])).sum()) / n
            if objective - previous < self.tol:
                break
            previous = objective
        self.priors_ = post.mean(axis=0)
        for name in ("_A", "_AT", "_flat"):  # per-fit scratch; keep the fitted object small
            self.__dict__.pop(name, None)
        return post


class OneCoinDawidSkene(DawidSkene):
    """Dawid-Skene with one accuracy per worker (errors spread evenly over other classes).

    K−1 fewer parameters per worker than full confusion: better when each worker has
    answered few items, which is the usual crowd case.
    """

    def _prepare(self, enc: _Encoded) -> None:
        self._flat = enc.t * enc.shape[2] + enc.y

    def _task_loglik(self, enc: _Encoded, post: np.ndarray) -> np.ndarray:
        T, W, K = enc.shape
        agree = post.ravel()[self._flat]
        n = np.bincount(enc.w, minlength=W).astype(np.float64)
        skill = (np.bincount(enc.w, weights=agree, minlength=W) + self.smoothing) / np.maximum(n + 2 * self.smoothing, 1)
        skill = np.clip(skill, _EPS, 1 - _EPS)
        self.worker_accuracy_ = skill
        log_right = np.log(skill)
        log_wrong = np.log((1 - skill) / max(K - 1, 1))
        base = np.bincount(enc.t, weights=log_wrong[enc.w], minlength=T)
        diff = np.bincount(self._flat, weights=(log_right - log_wrong)[enc.w], minlength=T * K).reshape(T, K)
        return diff + base[:, None]


class ShrunkDawidSkene(DawidSkene):
    """Dawid-Skene whose confusion rows shrink towards the worker's one-coin matrix.

    Each row of a worker's confusion matrix gets ``strength`` pseudo-answers spread like the
    worker's one-coin model (their accuracy on the diagonal, the rest evenly off it): strength
    0 is full-confusion Dawid-Skene, a large one is one-coin. With ``strength="learned"`` each
    worker's strength is chosen on ``grid`` at every M-step by type-II maximum likelihood (the
    Dirichlet-multinomial marginal likelihood of their soft confusion counts), so a worker whose
    errors look like one-coin noise keeps the one-parameter shape and a worker with systematic
    confusions (a↔b, always one class) gets their own matrix — cf. Kim & Ghahramani (2012),
    Bayesian classifier combination, with the prior centred on one-coin. ``strength_`` holds
    the strengths of the last M-step (per worker when learned).
    """

    def __init__(self, strength: float | str = "learned", grid: tuple[float, ...] = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256),
                 n_iter: int = 100, tol: float = 1e-5, classes: list | None = None) -> None:
        super().__init__(n_iter=n_iter, tol=tol, classes=classes)
        is_number = isinstance(strength, (int, float)) and not isinstance(strength, bool)
        if strength != "learned" and not (is_number and strength >= 0):
            raise ValueError(f"strength={strength!r}: expected a non-negative number or 'learned'")
        if not grid or any(not g > 0 for g in grid):
            raise ValueError(f"grid={grid!r}: expected positive strengths")
        self.strength, self.grid = strength, tuple(float(g) for g in grid)

    def _task_loglik(self, enc: _Encoded, post: np.ndarray) -> np.ndarray:
        _T, W, K = enc.shape
        counts = (self._A @ post).reshape(W, K, K).transpose(0, 2, 1)  # [worker, true k, observed l]
        n = counts.sum(axis=(1, 2))
        skill = np.clip(np.trace(counts, axis1=1, axis2=2) / np.maximum(n, _EPS), _EPS, 1 - _EPS)
        self.worker_accuracy_ = skill
        target = np.broadcast_to(((1 - skill) / max(K - 1, 1))[:, None, None], (W, K, K)).copy()
        target[:, np.arange(K), np.arange(K)] = skill[:, None]
        strength = self._learned_strength(counts, target) if self.strength == "learned" else np.full(W, float(self.strength))
        self.strength_ = strength
        conf = counts + strength[:, None, None] * target
        np.clip(conf, _EPS, None, out=conf)
        conf /= conf.sum(axis=2, keepdims=True)
        self.errors_ = conf
        logc = np.log(conf).transpose(0, 2, 1).reshape(W * K, K)
        return np.asarray(self._AT @ logc)

    def _learned_strength(self, counts: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per worker, the grid strength that maximises Σ_rows log DirMult(counts | strength·target)."""
        from scipy.special import gammaln

        grid = np.asarray(self.grid)
        g = grid[:, None, None]  # [grid, worker, true]
        n_row = counts.sum(axis=2)[None]
        a = g[..., None] * target[None]  # [grid, worker, true, observed]
        ll = (gammaln(g) - gammaln(g + n_row) + (gammaln(a + counts[None]) - gammaln(a)).sum(axis=3)).sum(axis=2)
        return grid[ll.argmax(axis=0)]


class AutoDawidSkene(ShrunkDawidSkene):
    """crowdloop's default consensus model: Dawid-Skene with each worker's confusion matrix
    shrunk towards one-coin by a strength learned from the data (:class:`ShrunkDawidSkene`).

    It replaces a count rule (full confusion when the median worker had answered ≥ 5·K² items,
    else one-coin) that could not know whether errors have structure: on a crowd of pair
    confusers, spammers and a ring it chose one-coin and lost 8–10 points to full confusion,
    while on small plain-noise crowds one-coin is 6–9 points better. Learning the strength per
    worker lands on or above the better of the two on every simulated crowd
    (``benchmarks/consensus_choice.py``, BENCHMARKS.md). ``chosen_`` says what the workers'
    strengths amount to: ``one_coin`` when every worker's prior is at the grid's top,
    ``full_confusion`` when every one is at its bottom, else ``mixed``. Rings of workers who
    share their answers item by item are counted as one voice (``rings_``; see
    :mod:`crowdloop.consensus.collusion`).
    """

    def __init__(self, rings: bool = True, grid: tuple[float, ...] = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256),
                 n_iter: int = 100, tol: float = 1e-5, classes: list | None = None) -> None:
        super().__init__(strength="learned", grid=grid, n_iter=n_iter, tol=tol, classes=classes)
        self.rings = rings

    def fit(self, data: pd.DataFrame, true_labels: pd.Series | None = None) -> AutoDawidSkene:
        """Fit; then, with ``rings``, look for rings of colluders (``consensus.collusion``) and,
        if there are any, fit again with each ring answering as one voice. ``rings_`` lists
        them; a member's skill is their ring's."""
        from crowdloop.consensus.collusion import find_rings, one_voice

        super().fit(data, true_labels)
        self.rings_ = []
        if self.rings and len(self.labels_):
            rings = find_rings(data, model=self)
            if rings:
                super().fit(one_voice(data, rings), true_labels)
                ring_of = {w: r.name for r in rings for w in r.workers}
                workers = pd.Index(pd.unique(data["worker"]), name="worker")
                self.skills_ = pd.Series([float(self.skills_[ring_of.get(w, w)]) for w in workers], index=workers,
                                         name="skill")
                self.rings_ = rings
        return self

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        post = super()._fit_posteriors(enc, gold_rows, gold_cols)
        strength = getattr(self, "strength_", np.empty(0))
        if len(strength) and (strength == max(self.grid)).all():
            self.chosen_ = "one_coin"
        elif len(strength) and (strength == min(self.grid)).all():
            self.chosen_ = "full_confusion"
        else:
            self.chosen_ = "mixed"
        return post
