"""The audit's estimators (``crowdloop/audit.py``, pure functions), checked by simulation
against the quantity they estimate. The audit as a step of the loop is in ``tests/test_audit.py``;
these are the tests ``benchmarks/mutation.py``'s ``audit`` row runs against each mutant."""

from __future__ import annotations

import numpy as np
import pytest

from crowdloop.audit import (
    MIN_ERRORS,
    calibrated,
    draw,
    importance_estimate,
    inclusion_estimate,
    inclusion_probabilities,
    proposal,
    random_estimate,
    split_labels,
    wilson,
)


def test_wilson_interval_covers_a_proportion_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    for p_true, n in ((0.9, 100), (0.97, 150), (0.5, 40)):
        hits = [lo <= p_true <= hi for lo, hi in (wilson(rng.binomial(n, p_true) / n, n) for _ in range(4000))]
        assert 0.93 <= np.mean(hits) <= 0.98, (p_true, n, np.mean(hits))


def _reserve(rng: np.random.Generator, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """A reserve whose errors concentrate where a (noisy) loss predictor says they do."""
    pi = rng.beta(0.3, 3.0, size=n)
    loss = (rng.random(n) < pi).astype(float)
    noisy = np.clip(pi * rng.lognormal(0, 0.5, size=n), 0, 1)
    return loss, noisy


def test_importance_estimate_is_unbiased_and_narrower_than_random_at_equal_draws():
    rng = np.random.default_rng(1)
    loss, predicted = _reserve(rng)
    N = len(loss)
    truth = 1 - loss.mean()
    q1, q2 = proposal(np.full(N, 0.5), 0.2), proposal(predicted, 0.2)  # a uniform round, then a tilted one
    active, uniform = [], []
    for _ in range(3000):
        d1, d2 = rng.choice(N, 40, p=q1), rng.choice(N, 80, p=q2)
        items = np.r_[d1, d2]
        est = importance_estimate(loss[items], items, [(q1, 40), (q2, 80)], n_labels=len(set(items)))
        active.append((est.accuracy, est.ci_low, est.ci_high))
        flat = rng.choice(N, 120, replace=False)
        uniform.append(random_estimate(1 - loss[flat]).half_width)
    acc = np.array(active)
    assert abs(acc[:, 0].mean() - truth) < 0.003  # unbiased: the mean of 3000 estimates hits the reserve's accuracy
    assert np.mean((acc[:, 1] <= truth) & (truth <= acc[:, 2])) >= 0.93  # nominal 95 %; 3000 runs: +-0.004
    # the same 120 labels drawn uniformly give a wider interval (both are for the accuracy on new items)
    assert np.mean((acc[:, 2] - acc[:, 1]) / 2) < 0.85 * np.mean(uniform)


def _known_loss_setting(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each item's true loss probability ``pi`` (what a calibrated surrogate would say), its loss
    drawn from it, and an audit's two proposals: uniform, then tilted by a noisy predictor."""
    pi = rng.beta(0.3, 3.0, size=n)
    loss = (rng.random(n) < pi).astype(float)
    return pi, loss, np.full(n, 1 / n), proposal(np.clip(pi * rng.lognormal(0, 0.5, size=n), 0, 1), 0.2)


def test_a_surrogates_expected_loss_as_control_variate_keeps_it_unbiased_and_narrows_it():
    # a calibrated surrogate (what Platt scaling on the audit labels aims at): ``pi`` itself, while
    # the proposal comes from a noisy one
    rng = np.random.default_rng(2)
    N = 4000
    pi, loss, q1, q2 = _known_loss_setting(rng, N)  # as an audit runs
    truth = 1 - loss.mean()
    plain, controlled = [], []
    for _ in range(3000):
        items = np.r_[rng.choice(N, 50, p=q1), rng.choice(N, 50, p=q2)]
        for out, expected in ((plain, None), (controlled, pi)):
            est = importance_estimate(loss[items], items, [(q1, 50), (q2, 50)], n_labels=len(set(items)),
                                      expected_loss=expected)
            out.append((est.accuracy, est.ci_low, est.ci_high))
    cv, base = np.array(controlled), np.array(plain)
    assert abs(cv[:, 0].mean() - truth) < 0.003  # unbiased: the mean of 3000 estimates hits the reserve's accuracy
    covered, covered_before = (np.mean((e[:, 1] <= truth) & (truth <= e[:, 2])) for e in (cv, base))
    assert covered >= min(covered_before - 0.01, 0.93)  # as often right as without it (here 0.954 vs 0.958)
    # the same draws without it (paired): the estimates spread more and the intervals are wider (here by 6 %)
    assert cv[:, 0].std() < 0.97 * base[:, 0].std()
    assert np.mean(cv[:, 2] - cv[:, 1]) < 0.97 * np.mean(base[:, 2] - base[:, 1])


def test_the_inclusion_estimate_is_unbiased_and_narrower_than_the_draws_when_draws_repeat():
    """Horvitz-Thompson over the distinct labeled items, on the draws of two rounds (a uniform one,
    then one tilted by a noisy loss predictor): unbiased for the reserve's accuracy, covering at
    least nominally, and narrower than the draw-weighted mean of the very same draws."""
    rng = np.random.default_rng(3)
    loss, predicted = _reserve(rng, n=600)  # a small reserve: a tilted round draws its likely errors repeatedly
    N = len(loss)
    truth = 1 - loss.mean()
    q1, q2 = proposal(np.full(N, 0.5), 0.2), proposal(predicted, 0.2)
    by_item, by_draw = [], []
    for _ in range(3000):
        items = np.r_[rng.choice(N, 40, p=q1), rng.choice(N, 300, p=q2)]
        distinct = np.unique(items)
        est = inclusion_estimate(loss[distinct], distinct, [(q1, 40), (q2, 300)])
        by_item.append((est.accuracy, est.ci_low, est.ci_high))
        est = importance_estimate(loss[items], items, [(q1, 40), (q2, 300)], n_labels=len(distinct))
        by_draw.append((est.accuracy, est.ci_low, est.ci_high))
    ht, hh = np.array(by_item), np.array(by_draw)
    assert abs(ht[:, 0].mean() - truth) < 0.003  # unbiased: the mean of 3000 estimates hits the reserve's accuracy
    assert np.mean((ht[:, 1] <= truth) & (truth <= ht[:, 2])) >= 0.95  # the variance is conservative: here 0.996
    # the same draws: the estimates spread less (here 0.86x) and the intervals say so (0.94x: both
    # carry the reserve's own spread, which no estimator over the reserve removes)
    assert ht[:, 0].std() < 0.92 * hh[:, 0].std()
    assert np.mean(ht[:, 2] - ht[:, 1]) < 0.97 * np.mean(hh[:, 2] - hh[:, 1])


def test_the_inclusion_interval_holds_the_accuracy_on_new_items_95_percent_of_the_time():
    """What the interval is for: the accuracy on new items of the pool's distribution. Each run
    draws a fresh reserve from it (so the reserve's own spread is part of the error), audits it
    with a uniform round and a tilted one, and asks whether the interval holds the distribution's
    accuracy. Nominal, neither too narrow nor wastefully wide (here 0.948)."""
    rng = np.random.default_rng(6)
    a, b, n = 0.3, 3.0, 600
    population_accuracy = 1 - a / (a + b)
    held, counts = [], []
    for _ in range(3000):
        pi = rng.beta(a, b, n)
        loss = (rng.random(n) < pi).astype(float)
        q1, q2 = np.full(n, 1 / n), proposal(np.clip(pi * rng.lognormal(0, 0.5, n), 0, 1), 0.2)
        items = np.r_[rng.choice(n, 40, p=q1), rng.choice(n, 300, p=q2)]
        distinct = np.unique(items)
        est = inclusion_estimate(loss[distinct], distinct, [(q1, 40), (q2, 300)])
        held.append(est.ci_low <= population_accuracy <= est.ci_high)
        counts.append((est.n_labels == len(distinct), est.n_draws == 340))
    assert 0.93 <= np.mean(held) <= 0.97  # 3000 runs: +-0.008 around 0.95
    assert all(labels and draws for labels, draws in counts)


def test_the_inclusion_variance_holds_where_the_reserve_is_large_and_each_item_rarely_drawn():
    """A reserve of 100,000 items: its own spread is negligible, every item's chance of being
    drawn is small, so the interval is all Horvitz-Thompson's variance term. It must hold the
    reserve's accuracy at the nominal rate (here 0.95)."""
    rng = np.random.default_rng(10)
    N = 100_000
    pi = rng.beta(0.3, 3.0, size=N)
    loss = (rng.random(N) < pi).astype(float)
    truth = 1 - loss.mean()
    q = proposal(np.clip(pi * rng.lognormal(0, 0.5, size=N), 0, 1), 0.2)
    held = []
    for _ in range(2000):
        distinct = np.unique(rng.choice(N, 300, p=q))
        est = inclusion_estimate(loss[distinct], distinct, [(q, 300)])
        held.append(est.ci_low <= truth <= est.ci_high)
    assert 0.93 <= np.mean(held) <= 0.97  # 2000 runs: +-0.01 around 0.95


def test_an_inclusion_estimate_needs_a_labeled_item_and_one_is_enough():
    q = np.full(10, 0.1)
    assert inclusion_estimate(np.array([]), np.array([], dtype=int), [(q, 3)]) is None
    assert inclusion_estimate(np.array([0.0]), np.array([4]), []) is None
    one = inclusion_estimate(np.array([1.0]), np.array([4]), [(q, 3)])  # one error, drawn with chance 1 - 0.9^3
    assert one.n_labels == 1 and one.accuracy == pytest.approx(1 - 1 / (10 * (1 - 0.9**3)))
    assert one.ci_low < one.accuracy < one.ci_high


def test_inclusion_estimate_with_a_calibrated_surrogate_as_control_variate_is_unbiased_and_narrower():
    rng = np.random.default_rng(7)
    N = 1000
    pi, loss, q1, q2 = _known_loss_setting(rng, N)
    truth = 1 - loss.mean()
    plain, controlled = [], []
    for _ in range(3000):
        distinct = np.unique(np.r_[rng.choice(N, 50, p=q1), rng.choice(N, 100, p=q2)])
        for out, expected in ((plain, None), (controlled, pi)):
            est = inclusion_estimate(loss[distinct], distinct, [(q1, 50), (q2, 100)], expected_loss=expected)
            out.append((est.accuracy, est.ci_low, est.ci_high))
    cv, base = np.array(controlled), np.array(plain)
    assert abs(cv[:, 0].mean() - truth) < 0.003  # unbiased whatever the surrogate says
    # a calibrated surrogate leaves only its residuals to vary (here 0.95x the spread without it)
    assert cv[:, 0].std() < 0.97 * base[:, 0].std()


def test_the_inclusion_interval_trusts_the_errors_spread_only_from_min_errors_on():
    """Fewer than ``MIN_ERRORS`` errors: no narrower than a uniform sample of the labeled items,
    even where every labeled item was certain to be drawn (its variance term is then ~0)."""
    N, labeled = 1000, 50
    q = np.r_[np.full(labeled, 0.999 / labeled), np.full(N - labeled, 0.001 / (N - labeled))]
    items = np.arange(labeled)
    for errors in (MIN_ERRORS - 1, MIN_ERRORS):
        loss = np.r_[np.ones(errors), np.zeros(labeled - errors)]
        est = inclusion_estimate(loss, items, [(q, 20_000)])
        uniform_low, uniform_high = wilson(1 - est.accuracy, labeled)  # the estimate's error, labeled items
        if errors < MIN_ERRORS:
            assert est.half_width == pytest.approx((uniform_high - uniform_low) / 2, rel=1e-3)
        else:  # trusted: only the reserve's own spread is left (the 50 items are all but certain)
            assert est.half_width < 0.5 * (uniform_high - uniform_low) / 2
    none = inclusion_estimate(np.zeros(labeled), items, [(q, 20_000)])
    assert none.accuracy == 1.0 and none.ci_low == pytest.approx(wilson(1.0, labeled)[0])  # no error found: not a point


def test_inclusion_probabilities_are_the_chance_of_at_least_one_draw():
    q1, q2 = np.array([0.5, 0.25, 0.25]), np.array([0.1, 0.1, 0.8])
    p = inclusion_probabilities([(q1, 2), (q2, 1)])
    assert np.allclose(p, 1 - (1 - q1) ** 2 * (1 - q2))
    rng = np.random.default_rng(4)
    seen = np.mean([np.isin(np.arange(3), np.r_[rng.choice(3, 2, p=q1), rng.choice(3, 1, p=q2)]) for _ in range(20000)], axis=0)
    assert np.allclose(seen, p, atol=0.01)


def test_an_audit_that_found_no_error_yet_is_not_a_point():
    q = proposal(np.linspace(0, 0.3, 500), 0.2)
    items = np.arange(0, 500, 10)
    est = importance_estimate(np.zeros(len(items)), items, [(q, len(items))], n_labels=len(items))
    assert est.accuracy == 1.0 and est.ci_low <= wilson(1.0, len(items))[0]  # as wide as a uniform sample's
    assert MIN_ERRORS >= 5


def test_the_interval_of_an_exhaustive_audit_is_the_reserves_own_spread():
    """Drawn so often that the draws' own spread vanishes, both estimators are left with the
    reserve's: the interval is Wilson's at the reserve's size (for the accuracy on new items)."""
    N = 200
    loss = np.r_[np.ones(20), np.zeros(N - 20)]
    low, high = wilson(0.1, N)
    q = np.full(N, 1 / N)
    items = np.tile(np.arange(N), 5000)  # every item drawn 5000 times
    by_draw = importance_estimate(loss[items], items, [(q, len(items))], n_labels=N)
    assert by_draw.accuracy == pytest.approx(0.9) and by_draw.half_width == pytest.approx((high - low) / 2, rel=0.01)
    by_item = inclusion_estimate(loss, np.arange(N), [(q, 20_000)])  # every item's inclusion all but certain
    assert by_item.accuracy == pytest.approx(0.9) and by_item.half_width == pytest.approx((high - low) / 2, rel=0.01)


def test_importance_estimate_trusts_the_errors_spread_only_from_min_errors_on_and_needs_a_draw():
    q = np.full(1000, 1 / 1000)
    assert importance_estimate(np.array([]), np.array([], dtype=int), [(q, 0)], n_labels=0) is None
    assert importance_estimate(np.array([1.0]), np.array([3]), [], n_labels=1) is None
    one = importance_estimate(np.array([1.0]), np.array([3]), [(q, 1)], n_labels=1)
    assert one.accuracy == 0.0 and one.ci_low == 0.0  # one draw: no spread to estimate, the widest interval
    # a proposal that expected the errors where they are: their weighted losses barely vary, so the
    # effective sample is far larger than the 60 draws, and only MIN_ERRORS errors make it count
    tilted = np.r_[np.full(20, 0.5 / 20), np.full(980, 0.5 / 980)]
    for errors in (MIN_ERRORS - 1, MIN_ERRORS):
        items = np.arange(60)
        loss = np.r_[np.ones(errors), np.zeros(60 - errors)]
        est = importance_estimate(loss, items, [(tilted, 60)], n_labels=60)
        capped = wilson(1 - est.accuracy, 60)
        if errors < MIN_ERRORS:
            assert est.half_width == pytest.approx((capped[1] - capped[0]) / 2, rel=1e-6)
        else:
            assert est.half_width < 0.8 * (capped[1] - capped[0]) / 2
    assert est.n_labels == 60 and est.n_draws == 60


def test_proposal_is_proportional_to_the_expected_loss_and_uniform_without_one():
    pi = np.array([0.0, 0.2, 0.3, 0.6])  # not summing to 1
    assert np.allclose(proposal(pi, 0.0), pi / pi.sum())
    assert np.allclose(proposal(pi, 0.2), 0.8 * pi / pi.sum() + 0.2 / 4)  # the uniform share mixed in
    assert np.allclose(proposal(np.zeros(4), 0.2), 0.25)  # nothing expected anywhere: uniform


def test_proposal_tilts_by_the_power_of_the_expected_loss():
    pi = np.array([0.05, 0.1, 0.4, 0.8])
    assert np.allclose(proposal(pi, 0.2, tilt=2.0), 0.8 * pi**2 / (pi**2).sum() + 0.2 / 4)
    assert np.allclose(proposal(pi, 0.2, tilt=0.0), 0.25)  # tilt 0: uniform whatever the loss
    # a sharper tilt moves draws from the likely-right items to the likeliest error
    assert proposal(pi, 0.2, tilt=2.0)[3] > proposal(pi, 0.2)[3] and proposal(pi, 0.2, tilt=2.0)[0] < proposal(pi, 0.2)[0]


def test_proposal_bounds_every_weight_by_the_uniform_share():
    q = proposal(np.r_[np.zeros(99), 1.0], 0.2)
    assert abs(q.sum() - 1) < 1e-12 and q.min() >= 0.2 / 100 * (1 - 1e-6)


def test_split_labels_are_the_items_whose_first_votes_disagree_and_only_once():
    votes = {"a": ["1", "1", "1", "1", "1"], "b": ["1", "1", "1", "2", "2"], "c": ["1", "1", "1", "1", "2"],
             "d": ["1", "1", "1", "2", "2", "1", "1", "1", "1"], "e": ["3", "3", "1", "2", "3"]}
    labels = {"a": "1", "b": "1", "c": "1", "d": "1", "e": "3"}
    assert split_labels(votes, labels, first=5, agreement=0.8) == ["b", "e"]  # 3 of 5; d was asked again already
    assert split_labels(votes, labels, first=5, agreement=0.0) == []


def _crowd_votes(rng: np.random.Generator, truth: np.ndarray, n: int, skill: np.ndarray, n_classes: int,
                 exclude: list[set[int]] | None = None) -> tuple[np.ndarray, list[set[int]]]:
    """``n`` answers per item from workers of accuracy ``skill`` (a wrong answer: a uniform other class)."""
    answers = np.empty((len(truth), n), dtype=int)
    who: list[set[int]] = []
    for i, t in enumerate(truth):
        pool = [w for w in range(len(skill)) if not exclude or w not in exclude[i]]
        workers = rng.choice(pool, size=n, replace=False)
        right = rng.random(n) < skill[workers]
        other = (t + rng.integers(1, n_classes, size=n)) % n_classes
        answers[i] = np.where(right, t, other)
        who.append(set(workers.tolist()))
    return answers, who


def _plurality(answers: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.stack([(answers == c).sum(axis=1) for c in range(n_classes)], axis=1)
    return counts.argmax(axis=1)


def test_asking_split_audit_labels_again_removes_most_of_the_estimates_bias_for_few_judgments():
    # A known population: 3000 audit items, a model right on 93 % of them, 40 workers of accuracy
    # 0.85-0.99 and 5 % spammers (the benchmark's crowd), 5 judgments an item, plurality vote.
    rng = np.random.default_rng(7)
    n_items, n_classes = 3000, 10
    truth = rng.integers(0, n_classes, size=n_items)
    skill = rng.uniform(0.85, 0.99, size=40)
    skill[rng.random(40) < 0.05] = 1 / n_classes
    skill[:2] = 1 / n_classes  # at least two spammers
    model_right = rng.random(n_items) < 0.93
    predicted = np.where(model_right, truth, (truth + rng.integers(1, n_classes, size=n_items)) % n_classes)
    true_accuracy = model_right.mean()
    first, who = _crowd_votes(rng, truth, 5, skill, n_classes)
    label = _plurality(first, n_classes)
    before = random_estimate((predicted == label).astype(float))
    ids = [str(i) for i in range(n_items)]
    again = split_labels({i: [str(v) for v in first[k]] for k, i in enumerate(ids)},
                         {i: str(label[k]) for k, i in enumerate(ids)}, first=5, agreement=0.8)
    rows = np.array([int(i) for i in again], dtype=int)
    more, _ = _crowd_votes(rng, truth[rows], 4, skill, n_classes, exclude=[who[k] for k in rows])
    relabeled = label.copy()
    relabeled[rows] = _plurality(np.concatenate([first[rows], more], axis=1), n_classes)
    after = random_estimate((predicted == relabeled).astype(float))
    bias_before, bias_after = before.accuracy - true_accuracy, after.accuracy - true_accuracy
    assert bias_before < -0.005  # the same-seed baseline: wrong audit labels pull the estimate down
    assert abs(bias_after) < 0.5 * abs(bias_before), (bias_before, bias_after)
    assert 4 * len(rows) < 0.2 * 5 * n_items  # for under a fifth more judgments (here 15 %)
    assert np.mean(relabeled != truth) < 0.5 * np.mean(label != truth)


def test_calibrated_maps_a_miscalibrated_loss_score_onto_observed_loss_rates():
    """Platt scaling: a raw score that is overconfident and too high on the logit scale
    (``logit(raw) = 2 logit(π) + 1``, how a surrogate's disagreement can look), fitted on 2000
    observed outcomes, comes out calibrated on fresh items; with fewer than 3 of either outcome
    the raw score is returned unchanged (a fit on nothing would be noise)."""
    rng = np.random.default_rng(8)
    true_pi = rng.beta(0.5, 4.0, size=20_000)
    logit = np.log(true_pi / (1 - true_pi))
    raw = 1 / (1 + np.exp(-(2 * logit + 1)))
    loss = (rng.random(len(true_pi)) < true_pi).astype(float)
    out = calibrated(raw, raw[:2000], loss[:2000])
    for low, high in ((0.0, 0.1), (0.1, 0.3), (0.3, 1.0)):
        band = (out >= low) & (out < high)
        band[:2000] = False  # fresh items only
        assert abs(out[band].mean() - loss[band].mean()) < 0.02, (low, high)  # predicted = observed (here < 0.007)
        if low > 0:
            assert abs(raw[band].mean() - loss[band].mean()) > 0.04  # the raw score was off (0.047, 0.156)
    few = calibrated(raw, raw[:5], np.array([1.0, 1.0, 0.0, 0.0, 0.0]))
    assert np.array_equal(few, raw)
    # fitted from 3 of each outcome on, whichever is the rarer one
    for losses, fitted in (([1, 1, 1, 0, 0], False), ([1, 1, 0, 0, 0, 0], False), ([1, 1, 1, 0, 0, 0], True)):
        out = calibrated(raw, raw[: len(losses)], np.array(losses, dtype=float))
        assert (not np.array_equal(out, raw)) == fitted, losses


def test_draw_samples_with_replacement_by_the_proposal():
    q = np.array([0.5, 0.3, 0.2, 0.0])
    picked = draw(q, 20_000, np.random.default_rng(9))
    assert len(picked) == 20_000 and picked.dtype.kind == "i"
    assert np.allclose(np.bincount(picked, minlength=4) / 20_000, q, atol=0.01) and not (picked == 3).any()

