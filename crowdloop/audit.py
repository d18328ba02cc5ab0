"""Accuracy from human labels: the estimators behind ``evaluation`` (pure functions).

A model's accuracy is estimated on an *audit*: pool items set aside before round 0 (never
trained on, never selected), labeled by the same vendor with the same consensus. A prediction
counts as right when it agrees with the consensus label, so the estimate is accuracy against
what the crowd says: a crowd whose labels are right 98 % of the time pulls it down by up to
two points (``BENCHMARKS.md`` measures how much). Wrong consensus labels hide in split votes,
so those items are asked once more (``split_labels``).

Two ways to draw the audit:

* ``random``: items in a seeded random order. The labeled items are a uniform sample of the
  pool, so the mean is unbiased and the Wilson score interval is the interval for the
  accuracy on new items from the pool's distribution.
* ``active``: items drawn with replacement from the reserve with probability tilted towards
  the model's expected loss (Active Testing, Kossen et al., ICML 2021). By default
  (``evaluation.estimator: inclusion``) the labeled items are weighted by their chance of
  having been drawn at all (Horvitz–Thompson, ``inclusion_estimate``: no variance from an item
  whose inclusion was certain); with ``estimator: draws`` the draws are, by the
  importance-weighted mean ``1/M Σ loss/(N q)`` (Hansen–Hurwitz): a draw's weighted loss has
  the reserve's mean loss as expectation whatever the proposal ``q`` was, so draws made for
  earlier models still serve later ones (``importance_estimate`` weights them by the mixture of
  all rounds' proposals, exactly unbiased when proposals do not depend on earlier labels; ours
  do, through calibration, and the benchmark's coverage checks the result). We sample with replacement rather than LURE's
  without-replacement correction (Farquhar et al., 2021) because a round's draws are fixed
  before any is labeled; a drawn item labeled before costs nothing. The proposal is
  ``q ∝ π^t`` for a calibrated loss probability ``π`` from a surrogate model
  (``engine/auditing.py``), mixed with a uniform share that bounds every weight by ``1/share``.
  ``t = 1`` is Kossen et al.'s choice and the default with ``estimator: draws`` (``q ∝ sqrt(π)``
  minimizes the draw-weighted mean's variance when ``π`` is exact; with estimated ``π`` the
  stronger tilt needed 10-15 % fewer labels on digits). With ``estimator: inclusion`` the
  default is ``t = 2`` (``EvaluationConfig.proposal_tilt``): a labeled item whose inclusion is
  near-certain adds no variance and a repeated draw costs nothing, so concentrating the draws
  on the likeliest errors buys certainty about them for free; on the benchmark it needed fewer
  judgments and its intervals held the truth more often than ``t = 1`` (``t = 3`` was cheaper
  still on digits but held it less often: BENCHMARKS.md, v5).
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


def proposal(expected_loss: np.ndarray, uniform_share: float, tilt: float = 1.0) -> np.ndarray:
    """Draw probabilities over the reserve: proportional to the expected loss to the power
    ``tilt``, mixed with ``uniform_share`` of uniform. Rounded to 8 significant digits and
    renormalized, so the stored vector is exactly the one drawn from."""
    pi = np.clip(np.asarray(expected_loss, dtype=float), 0.0, 1.0) ** tilt
    n = len(pi)
    tilted = pi / pi.sum() if pi.sum() > 0 else np.full(n, 1.0 / n)
    q = (1 - uniform_share) * tilted + uniform_share / n
    q = np.array([float(f"{v:.8g}") for v in q])
    return q / q.sum()


def importance_estimate(loss: np.ndarray, items: np.ndarray, proposals: list[tuple[np.ndarray, int]], *,
                        n_labels: int, expected_loss: np.ndarray | None = None) -> Estimate | None:
    """Accuracy from draws over a reserve of ``N`` items, made in rounds with different proposals.

    ``loss[m]`` in [0, 1] is the current model's loss on draw ``m``, ``items[m]`` the reserve index
    drawn; ``proposals`` holds each round's proposal vector (length ``N``) and how many of the
    draws it made. All draws are weighted by the mixture of the proposals (``q̄ = Σ m_r q_r / M``,
    the balance heuristic of multiple importance sampling, Veach & Guibas 1995), which keeps a
    draw made for an earlier model from weighing much when the current model errs where that
    model was sure.

    ``expected_loss`` (length ``N``: a surrogate's loss probability on every reserve item) makes
    it the *difference estimator* (a control variate; Kossen et al.'s active surrogate estimators,
    2022): the reserve's mean expected loss, which needs no label, plus the importance-weighted
    mean of what the labels add to it, ``(loss - expected)/(N q̄)``. Its expectation is the
    reserve's mean loss whatever the surrogate says; a surrogate that predicts the errors well
    leaves the draws only its residuals to vary by, so the interval narrows with fewer labels.

    The variance is the draws' sample variance plus the reserve's own spread, ``e(1-e)/N`` (the
    reserve is itself a sample of the pool, so the interval is for the accuracy on new items, as
    the ``random`` audit's is). The interval is Wilson's at the effective sample size
    ``e(1-e)/variance``; while fewer than ``MIN_ERRORS`` draws show an error their spread is not
    trusted (it is 0 until the first error) and the effective size is at most the draws.
    """
    loss = np.asarray(loss, dtype=float)
    m = len(loss)
    if m == 0 or not proposals:
        return None
    n_reserve = len(proposals[0][0])
    mixture = sum(k * np.asarray(q, dtype=float) for q, k in proposals) / sum(k for _, k in proposals)
    drawn = np.asarray(items, dtype=np.int64)
    base, residual = _against_expected(loss, drawn, expected_loss)
    z = residual / (n_reserve * mixture[drawn])
    error = min(max(base + float(z.mean()), 0.0), 1.0)
    var = (float(z.var(ddof=1)) / m if m > 1 else np.inf) + error * (1 - error) / n_reserve
    low, high = _error_interval(error, var, loss, sample_size=m)
    return Estimate(1.0 - error, 1.0 - high, 1.0 - low, n_labels, m)


def _against_expected(loss: np.ndarray, items: np.ndarray,
                      expected_loss: np.ndarray | None) -> tuple[float, np.ndarray]:
    """``(base, residual)`` an estimator sums: ``(0, loss)``, or with a surrogate's expected loss
    on every reserve item (a control variate) its reserve mean and what the labels add to it."""
    if expected_loss is None:
        return 0.0, loss
    expected = np.clip(np.asarray(expected_loss, dtype=float), 0.0, 1.0)
    return float(expected.mean()), loss - expected[items]


def _error_interval(error: float, var: float, loss: np.ndarray, *, sample_size: int) -> tuple[float, float]:
    """The 95 % interval of an estimated error rate: Wilson's at the effective sample size
    ``e(1-e)/var`` (the weighted estimate is skewed like a proportion: few errors found -> too
    low, which a symmetric normal interval misses). While fewer than ``MIN_ERRORS`` losses are
    errors their spread is not trusted, and the interval is no narrower than a uniform sample of
    ``sample_size`` (the draws, or the distinct items, the estimate rests on)."""
    n_eff = error * (1 - error) / var if var > 0 and 0 < error < 1 else float(sample_size)
    if int(np.count_nonzero(loss)) < MIN_ERRORS:
        n_eff = min(n_eff, float(sample_size))
    return wilson(error, n_eff)


def inclusion_probabilities(proposals: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Each reserve item's chance of being drawn at least once by the rounds' draws: round ``r``
    drew ``m_r`` times with replacement from ``q_r``, so ``1 - prod_r (1 - q_r)^m_r``."""
    log_missed = sum(k * np.log1p(-np.minimum(np.asarray(q, dtype=float), 1.0 - 1e-12)) for q, k in proposals)
    return -np.expm1(log_missed)


def inclusion_estimate(loss: np.ndarray, items: np.ndarray, proposals: list[tuple[np.ndarray, int]], *,
                       expected_loss: np.ndarray | None = None) -> Estimate | None:
    """Accuracy from the *distinct* items the rounds' draws labeled (Horvitz–Thompson).

    ``loss[j]`` is the current model's loss on reserve item ``items[j]`` (each item once). Each
    labeled item counts ``1/p_i``, its chance of having been drawn at all
    (``inclusion_probabilities``). The draw-weighted mean (``importance_estimate``) varies with
    every draw, repeats included; this one does not vary with an item whose inclusion was
    certain, so the errors a sharp proposal keeps drawing stop adding variance once they are
    labeled (the finite-population correction the draw-weighted mean lacks), and a repeat costs
    nothing either way. Variance: the independent-inclusion approximation
    ``Σ (1 - p_i) y_i² / p_i²``, plus the reserve's own spread as in ``importance_estimate``. It
    is conservative (draws with replacement make inclusions negatively correlated: it overstates
    the variance by ~8 % on ``tests/test_audit_estimators.py``'s reserve); Horvitz-Thompson's unbiased
    variance with the pairs' joint inclusion probabilities was tried and held the truth less often
    on Fashion-MNIST (0.863 against 0.881 of rounds, BENCHMARKS.md v4), where the proposals,
    calibrated on the audit's own labels, are not fixed in advance as its derivation assumes.
    ``expected_loss`` makes it the difference estimator: ``mean(π) + Σ (loss - π_i) / (N p_i)``.
    """
    loss = np.asarray(loss, dtype=float)
    items = np.asarray(items, dtype=np.int64)
    if len(loss) == 0 or not proposals:
        return None
    n_reserve = len(proposals[0][0])
    inclusion = inclusion_probabilities(proposals)[items]
    base, residual = _against_expected(loss, items, expected_loss)
    error = min(max(base + float((residual / inclusion).sum()) / n_reserve, 0.0), 1.0)
    var = float(((1 - inclusion) * residual**2 / inclusion**2).sum()) / n_reserve**2 + error * (1 - error) / n_reserve
    low, high = _error_interval(error, var, loss, sample_size=len(loss))
    return Estimate(1.0 - error, 1.0 - high, 1.0 - low, len(loss), sum(k for _, k in proposals))


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


def split_labels(votes: dict[str, list[str]], labels: dict[str, str], *, first: int, agreement: float) -> list[str]:
    """Audit items to ask again: those that had only their first ``first`` judgments and fewer than
    ``agreement`` of them agree with the consensus label (a 3-2 split of five, say).

    A wrong audit label counts a right prediction as wrong, so it biases the estimate low by about
    the audit labels' error rate, which no interval allows for. Wrong consensus labels hide almost
    all in split votes: asking those items again (a few % of the audit) removes most of the bias
    for a few % more judgments, where asking every item more would cost in proportion.
    """
    return sorted(item for item, answers in votes.items()
                  if item in labels and len(answers) <= first
                  and sum(a == labels[item] for a in answers) < agreement * len(answers))


def draw(q: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws with replacement (indices into ``q``)."""
    return rng.choice(len(q), size=n, replace=True, p=q)
