"""Chunked scoring with a running top-k: memory stays O(chunk_size + k) whatever the pool size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crowdloop._validation import check_batch_size
from crowdloop.errors import SamplerError

ScoreFn = Callable[[np.ndarray], np.ndarray]


def check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise SamplerError(f"rng={rng!r}: expected a numpy.random.Generator (np.random.default_rng(seed))")
    return rng


def _top_k(scores: np.ndarray, keys: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """The ``k`` rows with the highest score; exact ties broken by the random ``keys``."""
    if len(scores) > k:
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= threshold
        scores, keys, index = scores[keep], keys[keep], index[keep]
    order = np.lexsort((keys, -scores))[:k]
    return scores[order], keys[order], index[order]


def score_top_k(
    model: object,
    X: np.ndarray,
    score_fn: ScoreFn,
    *,
    batch_size: int,
    rng: np.random.Generator,
    chunk_size: int = 8192,
) -> np.ndarray:
    """Indices of the ``batch_size`` rows of ``X`` with the highest ``score_fn(predict_proba)``.

    ``X`` may be a memory-mapped array: it is read ``chunk_size`` rows at a time. One random
    key per row is drawn in row order, so the result does not depend on ``chunk_size``.
    Time O(n · cost(predict_proba)), memory O(chunk_size · n_classes + batch_size).
    """
    rng = check_rng(rng)
    n = len(X)
    k = check_batch_size(batch_size, n)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise SamplerError(f"chunk_size={chunk_size!r}: expected a positive integer")
    best_scores = np.empty(0)
    best_keys = np.empty(0)
    best_index = np.empty(0, dtype=np.int64)
    for start in range(0, n, int(chunk_size)):
        stop = min(n, start + int(chunk_size))
        proba = np.asarray(model.predict_proba(np.asarray(X[start:stop])))
        scores = np.asarray(score_fn(proba), dtype=np.float64)
        if scores.shape != (stop - start,):
            raise SamplerError(f"score function returned shape {scores.shape}, expected ({stop - start},)")
        keys = rng.random(stop - start)
        index = np.arange(start, stop, dtype=np.int64)
        best_scores, best_keys, best_index = _top_k(
            np.concatenate([best_scores, scores]),
            np.concatenate([best_keys, keys]),
            np.concatenate([best_index, index]),
            k,
        )
    return best_index
