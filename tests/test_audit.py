"""Accuracy estimated from human labels (``evaluation``): the estimators, and the audit as a step.

The estimators are checked by simulation against the quantity they estimate; the step on a
pool without ground truth (digits as a CSV, a crowd answering from a key the loop never sees).
"""

from __future__ import annotations

import numpy as np
import pytest

from crowdloop import engine, keys
from crowdloop.audit import (
    MIN_ERRORS,
    importance_estimate,
    inclusion_estimate,
    inclusion_probabilities,
    proposal,
    random_estimate,
    split_labels,
    wilson,
)
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine.auditing import audit_labels
from crowdloop.report import round_table, status
from tests.conftest import small_config
from tests.crowd_helpers import blind_config, intents, write_blind_digits

# -- the estimators ------------------------------------------------------------------------------


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


def test_a_surrogates_expected_loss_as_control_variate_keeps_it_unbiased_and_narrows_it():
    # a calibrated surrogate (what Platt scaling on the audit labels aims at): ``pi`` itself, while
    # the proposal comes from a noisy one
    rng = np.random.default_rng(2)
    N = 4000
    pi = rng.beta(0.3, 3.0, size=N)
    loss = (rng.random(N) < pi).astype(float)
    truth = 1 - loss.mean()
    q1, q2 = np.full(N, 1 / N), proposal(np.clip(pi * rng.lognormal(0, 0.5, size=N), 0, 1), 0.2)  # as an audit runs
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


# -- the audit step on a pool without ground truth -------------------------------------------------


@pytest.fixture(scope="module")
def blind_digits(tmp_path_factory) -> dict:
    return write_blind_digits(tmp_path_factory.mktemp("blind"))


_AUDITED: dict[str, Project] = {}


def audited_project(kind: str, blind_digits: dict, tmp_path_factory) -> Project:
    """A 6-round blind loop with an audit of ``kind`` (``method`` or ``method-estimator``), run once per module."""
    if kind not in _AUDITED:
        method, _, estimator = kind.partition("-")
        cfg = blind_config(blind_digits, evaluation={"method": method, "max_items": 120, "batch_size": 40,
                                                     "target_half_width": 0.05, "reask_below": 0.8,
                                                     **({"estimator": estimator} if estimator else {})},
                           **{"stopping.max_rounds": 6})
        _AUDITED[kind] = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path_factory.mktemp(kind))))
    return _AUDITED[kind]


@pytest.fixture(scope="module", params=["random", "active", "active-draws"])
def audited(request, blind_digits, tmp_path_factory) -> Project:
    return audited_project(request.param, blind_digits, tmp_path_factory)


def test_audit_items_are_labeled_apart_never_trained_on_nor_selected(audited):
    p = audited
    reserve = set(p.audit_reserve)
    sent = [item for r in p.rounds() if p.has(r, keys.AUDIT) for item in p.record(r, keys.AUDIT)["item_ids"]]
    assert sent and set(sent) <= reserve and len(sent) == len(set(sent))  # each audit item is bought once
    for r in p.rounds():
        selection = p.record(r, keys.SELECTION, default=None)
        assert not selection or not set(selection["item_ids"]) & reserve
        assert not {label.item_id for label in p.round_labels(r, keys.LABELS) or []} & reserve
    assert set(audit_labels(p, p.rounds()[-1] + 1)) == set(sent)
    tasks = [t for d in intents(p) for t in d["tasks"] if t["item_id"] in reserve]
    assert tasks and not any("prediction" in t["payload"] for t in tasks)  # no suggestion pulls an audit label
    reasked = {t["item_id"] for r in p.rounds() if p.has(r, keys.AUDIT) for t in p.record(r, keys.AUDIT)["reask"]}
    first = [t for t in tasks if not t["exclude_workers"]]
    assert len(first) == len(sent) and all(t["replicas"] == 5 for t in first)  # the yardstick: 5 judgments by default
    # a split vote is asked once more, 4 judgments from other workers (the crowd here is 0.8-0.98 accurate)
    again = [t for t in tasks if t["exclude_workers"]]
    assert again and {t["item_id"] for t in again} == reasked and all(t["replicas"] == 4 for t in again)
    answered = {}
    for a in p.annotations():
        answered.setdefault(a.item_id, []).append(a.worker_id)
    assert all(len(set(answered[item])) == len(answered[item]) == 9 for item in reasked)


def test_every_round_reports_an_estimate_with_its_interval_and_the_audit_cost_apart(audited, blind_digits):
    p = audited
    rounds = status(p)["rounds"]
    estimated = [r for r in rounds if r["estimated_accuracy"] is not None]
    assert len(estimated) >= len(rounds) - 2  # from the first round with a model and audit labels
    for r in estimated:
        assert 0 <= r["ci_low"] <= r["estimated_accuracy"] <= r["ci_high"] <= 1 and r["n_eval_labels"] > 0
        reasked = sum(len(p.record(q, keys.AUDIT)["reask"]) for q in range(r["round"]) if p.has(q, keys.AUDIT))
        assert 0 < r["audit_cost"] < r["cost"] and r["audit_judgments"] == 5 * r["n_eval_labels"] + 4 * reasked
    ev = p.config.evaluation
    for r in range(1, p.rounds()[-1]):  # the audit grows only while the interval is too wide
        half = (p.record(r, keys.METRICS)["ci_high"] - p.record(r, keys.METRICS)["ci_low"]) / 2
        grew = bool(p.record(r, keys.AUDIT)["item_ids"])
        if half <= ev.target_half_width or rounds[r]["n_eval_labels"] >= ev.max_items:
            assert not grew
    assert {"estimated_accuracy", "ci_low", "ci_high", "n_eval_labels", "audit_cost"} <= set(round_table(p)[-1])
    # the last interval holds the model's true accuracy on the reserve, a uniform sample of the pool no model saw
    last = p.rounds()[-1]
    reserve = list(p.audit_reserve)
    truth = np.array([blind_digits["truth"][i] for i in reserve])
    true_accuracy = np.mean(p.load_model(last).predict(p.pool.X[p.rows_of(reserve)]).astype(str) == truth)
    m = p.record(last, keys.METRICS)
    assert m["ci_low"] <= true_accuracy <= m["ci_high"], (m, true_accuracy)


@pytest.mark.parametrize("kind", ["active", "active-draws"])
def test_the_active_estimate_is_the_configured_estimator_over_the_recorded_draws(kind, blind_digits, tmp_path_factory):
    """The last round's reported estimate, recomputed from the audit records alone: Horvitz-Thompson
    over the distinct labeled items (the default) or the draw-weighted mean (``estimator: draws``)."""
    p = audited_project(kind, blind_digits, tmp_path_factory)
    ev = p.config.evaluation
    assert ev.estimator == ("draws" if kind == "active-draws" else "inclusion")
    last = p.rounds()[-1]
    labels = audit_labels(p, last)
    model = p.load_model(last)
    items = sorted(labels)
    predicted = np.asarray(model.classes_).astype(str)[model.predict_proba(p.pool.X[p.rows_of(items)]).argmax(axis=1)]
    right = {item: float(labels[item].label == pred) for item, pred in zip(items, predicted, strict=True)}
    records = [p.record(q, keys.AUDIT) for q in range(last) if p.has(q, keys.AUDIT) and p.record(q, keys.AUDIT)["draws"]]
    position = {item: k for k, item in enumerate(p.audit_reserve)}
    drawn = [item for rec in records for item in rec["draws"] if item in right]
    proposals = [(np.asarray(rec["proposal"]), sum(d in right for d in rec["draws"])) for rec in records]
    if ev.estimator == "inclusion":
        distinct = list(dict.fromkeys(drawn))
        expected = inclusion_estimate(np.array([1 - right[i] for i in distinct]), np.array([position[i] for i in distinct]),
                                      proposals)
    else:
        expected = importance_estimate(np.array([1 - right[i] for i in drawn]), np.array([position[i] for i in drawn]),
                                       proposals, n_labels=len(set(drawn)))
    m = p.record(last, keys.METRICS)
    assert (m["estimated_accuracy"], m["ci_low"], m["ci_high"]) == pytest.approx(
        (expected.accuracy, expected.ci_low, expected.ci_high), abs=1e-6)
    assert m["n_eval_labels"] == len(set(drawn))


def test_a_redone_audit_step_draws_the_same_items(blind_digits, tmp_path):
    cfg = parse_config(blind_config(blind_digits, evaluation={"method": "active", "max_items": 80, "batch_size": 30}))
    p = Project.prepare(cfg, str(tmp_path / "p"))
    for r in (0, 1):
        engine.run_round(p, r)
    engine.run_round(p, 2, until="audit")
    first = p.record(2, keys.AUDIT)
    p.store.delete(keys.round_key(2, keys.AUDIT))  # a crash before the record reached the store
    again = engine.audit(Project.open(p.store.url), 2)
    assert again == first and first["draws"] and len(first["proposal"]) == len(p.audit_reserve)


@pytest.mark.parametrize("budget", ["money_budget", "judgment_budget"])
def test_the_audit_takes_only_what_the_budget_leaves(blind_digits, tmp_path, budget):
    """The audit rides in a batch the budget already sized: it must not buy its items on top. Without
    the cap, round 0's 40 audit items (200 judgments, $8.00 at worst) and its 60 batch judgments pass both limits."""
    limit = {"money_budget": 15.0, "judgment_budget": 200}[budget]
    cfg = blind_config(blind_digits, evaluation={"method": "random", "max_items": 120, "batch_size": 40,
                                                 "target_half_width": 0.01},
                       **{"stopping.max_rounds": 4, f"stopping.{budget}": limit})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    paid = sum(p.record(r, keys.PAY)["total"] for r in p.rounds() if p.has(r, keys.PAY))
    judgments = len(p.annotations())
    assert (paid if budget == "money_budget" else judgments) <= limit
    audits = [p.record(r, keys.AUDIT) for r in p.rounds() if p.has(r, keys.AUDIT)]
    assert 0 < len(audits[0]["item_ids"]) < 40 and audits[0]["budget"].startswith(f"{budget}=")
    assert all(len({a.worker_id for a in p.annotations() if a.item_id == item}) == 5
               for a_rec in audits for item in a_rec["item_ids"])  # capped items are still fully judged


def test_with_ground_truth_the_report_shows_both(tmp_path):
    cfg = small_config(evaluation={"method": "random", "max_items": 60, "batch_size": 30}, **{"stopping.max_rounds": 3})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    last = status(p)["rounds"][-1]
    assert last["accuracy"] is not None and last["estimated_accuracy"] is not None
    assert not set(p.audit_reserve) & set(p.test.ids.tolist())  # the audit is drawn from the pool, not the test split
