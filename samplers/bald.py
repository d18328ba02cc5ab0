"""BALD and BatchBALD over MC-dropout passes (Houlsby et al. 2011; Kirsch et al. 2019).

Both read stochastic class probabilities from ``model.predict_proba_mc(X, n_samples,
random_state)`` (shape (n, T, C); ``crowdloop.models.torch.TorchClassifier`` has it). A model
without stochastic passes has no measurable epistemic spread; for it both rank by predictive
entropy (the BALD score's first term), so they still honour the sampler contract.

Notation: n pool rows, T MC passes, C classes, k = batch_size, M candidates, S configurations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crowdloop._validation import check_batch_size
from crowdloop.rows import n_rows, row_range
from crowdloop.samplers.scoring import check_rng, score_top_k


def _positive_int(name: str, value: Any) -> int:
    from crowdloop.errors import SamplerError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SamplerError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=axis)


def mc_proba(model: object, X: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """(n, T, C) MC-dropout probabilities, or (n, 1, C) for a deterministic model."""
    fn = getattr(model, "predict_proba_mc", None)
    if fn is None:
        return np.asarray(model.predict_proba(X), dtype=np.float64)[:, None, :]
    return np.asarray(fn(X, n_samples=n_samples, random_state=seed), dtype=np.float64)


def bald_scores(P: np.ndarray) -> np.ndarray:
    """Mutual information between label and weights, H[E_t p_t] − E_t H[p_t], per row of (n, T, C);
    predictive entropy when T == 1 (no stochastic passes)."""
    mean = P.mean(axis=1)
    if P.shape[1] == 1:
        return _entropy(mean)
    return np.maximum(_entropy(mean) - _entropy(P).mean(axis=1), 0.0)


def bald_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    n_samples: int = 20,
    chunk_size: int = 8192,
) -> np.ndarray:
    """BALD: the ``batch_size`` rows with the highest mutual information between their label
    and the model's weights, estimated from ``n_samples`` MC-dropout passes (top-k, no batch
    diversity). One streaming pass: time O(n·(cost(body) + T·cost(head))), memory O(chunk·T·C + k).
    """
    rng = check_rng(rng)
    check_batch_size(batch_size, n_rows(X))
    T = _positive_int("n_samples", n_samples)
    base = int(rng.integers(2**62))
    calls = [0]

    class _Scorer:  # score_top_k reads predict_proba per chunk: return the BALD score as one column
        def predict_proba(self, chunk: np.ndarray) -> np.ndarray:
            calls[0] += 1
            return bald_scores(mc_proba(model, chunk, T, base + calls[0]))[:, None]

    return score_top_k(_Scorer(), X, lambda s: s[:, 0], batch_size=batch_size, rng=rng, chunk_size=chunk_size)


def batchbald_sampling(
    model: object,
    X: np.ndarray,
    *,
    batch_size: int,
    rng: np.random.Generator,
    n_samples: int = 20,
    candidates: int | None = None,
    max_configs: int = 256,
    chunk_size: int = 8192,
) -> np.ndarray:
    """BatchBALD: greedily the row that most raises the mutual information between the batch's
    joint label and the weights, I(y_1..k; w) = H(y_1..k) − Σ_i E_w H(y_i | w).

    The joint entropy is tracked over label configurations of the rows picked so far: exactly
    while there are at most ``max_configs`` of them, then by S = ``max_configs`` configurations
    sampled from the joint predictive (Kirsch et al.'s estimator). Each configuration keeps
    its posterior over the T MC passes, so the score of a candidate i is
    Σ_s w_s H(Σ_t π_s(t) p_t(y_i)) − E_t H(p_t(y_i)) with no underflowing products. The greedy
    runs over the ``candidates`` rows with the highest BALD score (default max(5·k, 500));
    time O(n·cost(MC) + k·S·T·M·C), memory O(M·T·C + S·M·C per chunk).
    """
    rng = check_rng(rng)
    n = n_rows(X)
    k = check_batch_size(batch_size, n)
    T = _positive_int("n_samples", n_samples)
    S = _positive_int("max_configs", max_configs)
    m = max(5 * k, 500) if candidates is None else _positive_int("candidates", candidates)
    m = min(max(m, k), n)
    seed = int(rng.integers(2**62))
    P = np.concatenate([mc_proba(model, row_range(X, s, s + chunk_size), T, seed + i)
                        for i, s in enumerate(range(0, n, chunk_size))]) if n else np.empty((0, T, 1))
    keys = rng.random(n)
    bald = bald_scores(P)
    cand = np.lexsort((keys, -bald))[:m]
    if P.shape[1] == 1 or k == 1:  # deterministic model (entropy ranking) or a single pick: top BALD
        return cand[:k].astype(np.int64)
    Pc = P[cand]  # (M, T, C)
    Mn, Tn, C = Pc.shape
    cond = _entropy(Pc).mean(axis=1)  # E_t H(p_t(y_i)), (M,)
    flat = Pc.transpose(1, 0, 2).reshape(Tn, Mn * C)  # (T, M·C)
    post = np.full((1, Tn), 1.0 / Tn)  # π_s(t): posterior over MC passes per configuration
    weight = np.ones(1)  # w_s, sums to 1
    available = np.ones(Mn, dtype=bool)
    chosen: list[int] = []
    ckeys = keys[cand]
    while len(chosen) < k:
        scores = np.empty(Mn)
        step = max(1, int(4_000_000 // max(len(weight) * C, 1)))  # candidates per block: bounded memory
        for s in range(0, Mn, step):
            q = (post @ flat[:, s * C : (s + step) * C]).reshape(len(post), -1, C)  # (S, m, C)
            scores[s : s + step] = weight @ _entropy(q) - cond[s : s + step]
        scores = np.where(available, scores, -np.inf)
        top = np.flatnonzero(scores == scores.max())
        i = int(top[np.argmin(ckeys[top])]) if len(top) > 1 else int(top[0])
        chosen.append(i)
        available[i] = False
        # extend every configuration by the picked row's label
        p_i = Pc[i]  # (T, C)
        joint = post[:, :, None] * p_i[None, :, :]  # (S, T, C): π_s(t) p_t(c)
        q = joint.sum(axis=1)  # (S, C): p(c | s)
        w_new = (weight[:, None] * q).reshape(-1)
        post_new = (joint / np.clip(q[:, None, :], 1e-300, None)).transpose(0, 2, 1).reshape(-1, Tn)
        if len(w_new) > S:  # sample S configurations from the joint predictive
            pick = rng.choice(len(w_new), size=S, replace=True, p=w_new / w_new.sum())
            post, weight = post_new[pick], np.full(S, 1.0 / S)
        else:
            keep = w_new > 0
            post, weight = post_new[keep], w_new[keep] / w_new[keep].sum()
    return cand[np.asarray(chosen, dtype=np.int64)]
