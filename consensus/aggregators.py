"""Majority vote and Dawid-Skene (full-confusion and one-coin) aggregators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

_EPS = 1e-10
REQUIRED_COLUMNS = ("task", "worker", "label")


@dataclass
class _Encoded:
    tasks: np.ndarray
    workers: np.ndarray
    classes: np.ndarray
    t: np.ndarray
    w: np.ndarray
    l: np.ndarray

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
    l = class_index.get_indexer(data["label"])
    return _Encoded(np.asarray(tasks), np.asarray(workers), np.asarray(class_index), t, w, l)


class _Aggregator:
    """Shared result handling; subclasses implement ``_fit_posteriors``."""

    labels_: pd.Series
    probas_: pd.DataFrame
    confidence_: pd.Series
    skills_: pd.Series

    def __init__(self, classes: list | None = None) -> None:
        self.classes = classes

    def fit(self, data: pd.DataFrame, true_labels: pd.Series | None = None) -> "_Aggregator":
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
        agree = post[enc.t, enc.l] if T else np.empty(0)
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
    counts = np.bincount(enc.t * K + enc.l, minlength=T * K).reshape(T, K).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def _fix_gold(post: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if len(rows):
        post[rows] = 0.0
        post[rows, cols] = 1.0
    return post


class MajorityVote(_Aggregator):
    """Share of votes per label. Ties go to the first label in class order (as crowd-kit)."""

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        return _fix_gold(_vote_proba(enc), gold_rows, gold_cols)


class DawidSkene(_Aggregator):
    """Dawid & Skene (1979) with a full confusion matrix per worker, fitted by EM.

    ``smoothing`` adds pseudo-counts to every confusion cell (0 reproduces crowd-kit's
    estimator); a little smoothing helps when workers have few answers for K² parameters.
    Each EM iteration is O(n_judgments · K) through ``np.bincount``.
    """

    def __init__(self, n_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.0, classes: list | None = None) -> None:
        super().__init__(classes)
        if n_iter < 1:
            raise ValueError(f"n_iter={n_iter}: expected a positive integer")
        if smoothing < 0:
            raise ValueError(f"smoothing={smoothing}: expected a non-negative number")
        self.n_iter, self.tol, self.smoothing = n_iter, tol, smoothing

    def _log_likelihood_terms(self, enc: _Encoded, post: np.ndarray) -> np.ndarray:
        """Per-annotation log P(observed label | true class k), shape (n, K)."""
        T, W, K = enc.shape
        conf = np.empty((W, K, K))
        for k in range(K):
            conf[:, k, :] = np.bincount(enc.w * K + enc.l, weights=post[enc.t, k], minlength=W * K).reshape(W, K)
        conf += self.smoothing
        np.clip(conf, _EPS, None, out=conf)
        conf /= conf.sum(axis=2, keepdims=True)
        self.errors_ = conf
        return np.log(conf[enc.w, :, enc.l])

    def _fit_posteriors(self, enc: _Encoded, gold_rows: np.ndarray, gold_cols: np.ndarray) -> np.ndarray:
        T, _, K = enc.shape
        post = _fix_gold(_vote_proba(enc), gold_rows, gold_cols)
        previous = -np.inf
        n = len(enc.t)
        self.n_iter_ = 0
        for _ in range(self.n_iter):
            log_prior = np.log(np.clip(post.mean(axis=0), _EPS, None))
            terms = self._log_likelihood_terms(enc, post)
            loglik = np.tile(log_prior, (T, 1))
            for k in range(K):
                loglik[:, k] += np.bincount(enc.t, weights=terms[:, k], minlength=T)
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
        return post


class OneCoinDawidSkene(DawidSkene):
    """Dawid-Skene with one accuracy per worker (errors spread evenly over other classes).

    K−1 fewer parameters per worker than full confusion: better when each worker has
    answered few items, which is the usual crowd case.
    """

    def _log_likelihood_terms(self, enc: _Encoded, post: np.ndarray) -> np.ndarray:
        T, W, K = enc.shape
        agree = post[enc.t, enc.l]
        n = np.bincount(enc.w, minlength=W).astype(np.float64)
        skill = (np.bincount(enc.w, weights=agree, minlength=W) + self.smoothing) / np.maximum(n + 2 * self.smoothing, 1)
        skill = np.clip(skill, _EPS, 1 - _EPS)
        self.worker_accuracy_ = skill
        log_right = np.log(skill)[enc.w]
        log_wrong = np.log((1 - skill) / max(K - 1, 1))[enc.w]
        terms = np.repeat(log_wrong[:, None], K, axis=1)
        terms[np.arange(len(enc.l)), enc.l] = log_right
        return terms
