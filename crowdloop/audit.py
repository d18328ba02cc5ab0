"""Accuracy from human labels: the estimators behind ``evaluation`` (pure functions).

A model's accuracy is estimated on an *audit*: pool items set aside before round 0 (never
trained on, never selected), labeled by the same vendor with the same consensus. A prediction
counts as right when it agrees with the consensus label, so the estimate is accuracy against
what the crowd says: a crowd whose labels are right 98 % of the time pulls it down by up to
two points (``BENCHMARKS.md`` measures how much).

Two ways to draw the audit:

* ``random``: items in a seeded random order. The labeled items are a uniform sample of the
  pool, so the mean is unbiased and the Wilson score interval is the interval for the
  accuracy on new items from the pool's distribution.
* ``active``: items drawn with replacement from the reserve with probability tilted towards
  the model's expected loss (Active Testing, Kossen et al., ICML 2021), estimated with the
  importance-weighted mean ``1/M Σ loss/(N q)`` (Hansen–Hurwitz), which is unbiased for any
  model that did not choose the draws' labels: each draw's expectation is the reserve's mean
  loss whatever the proposal ``q`` was, so draws made for earlier models still serve later
  ones. We sample with replacement rather than LURE's without-replacement correction
  (Farquhar et al., 2021) because the draws of one round are fixed before any is labeled; a
  drawn item that was labeled before costs nothing. The proposal is ``q ∝ sqrt(π)`` mixed
  with a uniform share: for a 0-1 loss with success probability ``π`` the variance
  ``Σ π/(N² q) − e²`` is smallest at ``q ∝ sqrt(π)`` (Kossen et al. use ``q ∝ π``, optimal for
  a deterministic loss), and the uniform share bounds every weight by ``1/share``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %
MIN_ERRORS = 10  # errors among the draws before their sample variance is trusted on its own


@dataclass(frozen=True)
class Estimate:
    """An accuracy estimate with its 95 % interval."""

    accuracy: float
    ci_low: float
    ci_high: float
    n_labels: int  # distinct human-labeled audit items it rests on
    n_draws: int  # draws (active: with repetitions; random: = n_labels)

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def wilson(p_hat: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p_hat`` seen on ``n`` items (well-behaved at 0 and 1)."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p_hat + z * z / (2 * n)) / denom
    spread = z * np.sqrt(max(p_hat * (1 - p_hat), 0.0) / n + z * z / (4 * n * n)) / denom
    return float(max(centre - spread, 0.0)), float(min(centre + spread, 1.0))


def random_estimate(correct: np.ndarray) -> Estimate | None:
    """Accuracy from a uniform audit sample; ``correct[i]`` in [0, 1] (1: the prediction agrees with the label)."""
    correct = np.asarray(correct, dtype=float)
    if len(correct) == 0:
        return None
    p_hat = float(correct.mean())
    low, high = wilson(p_hat, len(correct))
    return Estimate(p_hat, low, high, len(correct), len(correct))


def proposal(expected_loss: np.ndarray, uniform_share: float) -> np.ndarray:
    """Draw probabilities over the reserve: ``sqrt(expected loss)``, mixed with ``uniform_share`` of uniform.

    Rounded to 8 significant digits and renormalized, so the stored vector is exactly the one drawn from.
    """
    pi = np.clip(np.asarray(expected_loss, dtype=float), 0.0, 1.0)
    n = len(pi)
    root = np.sqrt(pi)
    tilted = root / root.sum() if root.sum() > 0 else np.full(n, 1.0 / n)
    q = (1 - uniform_share) * tilted + uniform_share / n
    q = np.array([float(f"{v:.8g}") for v in q])
    return q / q.sum()


def importance_estimate(loss: np.ndarray, items: np.ndarray, proposals: list[tuple[np.ndarray, int]], *,
                        n_labels: int) -> Estimate | None:
    """Accuracy from draws over a reserve of ``N`` items, made in rounds with different proposals.

    ``loss[m]`` in [0, 1] is the current model's loss on draw ``m``, ``items[m]`` the reserve index
    drawn; ``proposals`` holds each round's proposal vector (length ``N``) and how many of the
    draws it made. All draws are weighted by the mixture of the proposals (``q̄ = Σ m_r q_r / M``,
    the balance heuristic of multiple importance sampling, Veach & Guibas 1995), which keeps a
    draw made for an earlier model from weighing much when the current model errs where that
    model was sure.

    The variance is the draws' sample variance; while fewer than ``MIN_ERRORS`` draws show an
    error it is not trusted (it is 0 until the first error), and the variance a uniform sample
    of as many draws would have at the Laplace-smoothed error rate is used when larger. The
    reserve is itself a sample of the pool, so its own spread, ``e(1-e)/N``, is added: the
    interval is for the accuracy on new items, as the ``random`` audit's is.
    """
    loss = np.asarray(loss, dtype=float)
    m = len(loss)
    if m == 0 or not proposals:
        return None
    n_reserve = len(proposals[0][0])
    mixture = sum(k * np.asarray(q, dtype=float) for q, k in proposals) / sum(k for _, k in proposals)
    z = loss / (n_reserve * mixture[np.asarray(items, dtype=np.int64)])
    error = min(max(float(z.mean()), 0.0), 1.0)
    var = float(z.var(ddof=1)) / m if m > 1 else np.inf
    if int(np.count_nonzero(loss)) < MIN_ERRORS:
        smoothed = (float(loss.sum()) + 1) / (m + 2)
        var = max(var, smoothed * (1 - smoothed) / m)
    var += error * (1 - error) / n_reserve
    half = Z95 * float(np.sqrt(var)) if np.isfinite(var) else 1.0
    accuracy = 1.0 - error
    return Estimate(accuracy, max(accuracy - half, 0.0), min(accuracy + half, 1.0), n_labels, m)


def calibrated(raw: np.ndarray, fit_raw: np.ndarray, fit_loss: np.ndarray) -> np.ndarray:
    """Platt scaling of a loss probability: ``raw`` mapped through a logistic fit of the observed
    losses ``fit_loss`` on ``logit(fit_raw)``; ``raw`` unchanged with fewer than 3 of either outcome."""
    from sklearn.linear_model import LogisticRegression

    fit_loss = np.asarray(fit_loss) > 0.5
    if min(int(fit_loss.sum()), int((~fit_loss).sum())) < 3:
        return np.asarray(raw, dtype=float)

    def logit(v: np.ndarray) -> np.ndarray:
        v = np.clip(np.asarray(v, dtype=float), 1e-4, 1 - 1e-4)
        return np.log(v / (1 - v)).reshape(-1, 1)

    fit = LogisticRegression(C=10.0).fit(logit(fit_raw), fit_loss.astype(int))
    return fit.predict_proba(logit(raw))[:, 1]


def draw(q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws with replacement (indices into ``q``)."""
    return rng.choice(len(q), size=n, replace=True, p=q)
