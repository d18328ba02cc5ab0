"""The aggregators against what their docstrings state, on tables small enough to check by hand.

Majority and weighted votes are checked on tables whose posteriors are worked out in the comments;
the Dawid-Skene family against a plain-loop transcription of the EM the docstrings describe (vote
shares to start, M-step, likelihood times prior, gold held fixed, stop when the mean log-evidence
gains less than ``tol``), iteration count included (issue 21, point 5: mutation testing).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy.special import gammaln, logsumexp

from crowdloop.consensus.aggregators import (
    AutoDawidSkene,
    DawidSkene,
    MajorityVote,
    OneCoinDawidSkene,
    ShrunkDawidSkene,
    WeightedMajorityVote,
)

EPS = 1e-10


def table(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["task", "worker", "label"])


# t1: a=x, b=x, c=y; t2: a=y, b=y, c=y
SMALL = table(("t1", "a", "x"), ("t1", "b", "x"), ("t1", "c", "y"),
              ("t2", "a", "y"), ("t2", "b", "y"), ("t2", "c", "y"))


def test_majority_vote_is_the_share_of_votes_and_its_skills_the_mean_agreement():
    mv = MajorityVote().fit(SMALL)
    assert mv.probas_.loc["t1"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert mv.probas_.loc["t2"].tolist() == [0.0, 1.0]
    assert mv.labels_.to_dict() == {"t1": "x", "t2": "y"}
    assert mv.confidence_.tolist() == pytest.approx([2 / 3, 1.0])
    # a: (2/3 + 1) / 2; c: (1/3 + 1) / 2
    assert mv.skills_.to_dict() == pytest.approx({"a": 5 / 6, "b": 5 / 6, "c": 2 / 3})
    assert mv.skills_.index.name == "worker" and mv.probas_.index.name == "task"


def test_majority_vote_ties_go_to_the_first_class_in_class_order():
    tie = table(("t", "a", "b"), ("t", "b", "a"))
    assert MajorityVote().fit_predict(tie).tolist() == ["a"]  # sorted classes: a first
    assert MajorityVote(classes=["b", "a"]).fit_predict(tie).tolist() == ["b"]
    probas = MajorityVote(classes=["b", "a", "c"]).fit_predict_proba(tie)
    assert probas.columns.tolist() == ["b", "a", "c"] and probas.loc["t"].tolist() == [0.5, 0.5, 0.0]


def test_gold_holds_the_first_task_too_and_ignores_tasks_without_answers():
    gold = pd.Series({"t1": "y", "elsewhere": "x"})
    mv = MajorityVote().fit(SMALL, gold)
    assert mv.probas_.loc["t1"].tolist() == [0.0, 1.0]
    assert mv.probas_.loc["t2"].tolist() == [0.0, 1.0]
    assert list(mv.probas_.index) == ["t1", "t2"]
    # a gold label nobody answered is still a class
    assert MajorityVote().fit(SMALL, pd.Series({"t2": "z"})).probas_.loc["t2"].tolist() == [0.0, 0.0, 1.0]


def test_weighted_vote_with_given_skills_is_the_one_coin_posterior():
    # K = 2: a vote weighs log(s / (1 - s)): a (0.9) against b and c (0.6): 9 : 1.5 * 1.5 -> 0.8
    data = table(("t", "a", "x"), ("t", "b", "y"), ("t", "c", "y"))
    wmv = WeightedMajorityVote(weights={"a": 0.9, "b": 0.6, "c": 0.6}).fit(data)
    assert wmv.probas_.loc["t", "x"] == pytest.approx(0.8)
    assert wmv.worker_accuracy_.tolist() == pytest.approx([0.9, 0.6, 0.6])
    # K = 3: a vote weighs log(s (K - 1) / (1 - s)); a worker without a given skill is at chance (1/K), weight 0
    data3 = table(("t", "a", "x"), ("t", "b", "y"), ("t", "d", "z"))
    wmv3 = WeightedMajorityVote(weights={"a": 0.5, "b": 0.75}, classes=["x", "y", "z"]).fit(data3)
    # exp weights: a 0.5*2/0.5 = 2, b 0.75*2/0.25 = 6, d 1 -> 2 : 6 : 1
    assert wmv3.probas_.loc["t"].tolist() == pytest.approx([2 / 9, 6 / 9, 1 / 9])


def test_weighted_vote_clips_certain_skills_to_a_thousandth():
    data = table(("t", "a", "x"), ("t", "b", "y"))
    wmv = WeightedMajorityVote(weights={"a": 1.0, "b": 0.0}).fit(data)
    # a: 0.999 / 0.001 = 999, b: 0.001 / 0.999 -> P(x) = 999 / (999 + 1/999)
    assert wmv.probas_.loc["t", "x"] == pytest.approx(999 / (999 + 1 / 999), rel=1e-9)
    assert wmv.worker_accuracy_.tolist() == pytest.approx([0.999, 0.001])


def test_weighted_vote_estimates_skills_as_smoothed_agreement_with_the_vote():
    # vote: t1 -> x, t2 -> y; agreements a 2/2, b 2/2, c 1/2: skills (2+1)/(2+2) = 0.75, (1+1)/4 = 0.5
    # weights log 3, log 3, 0: P(t1 = x) = 9 / 10, P(t2 = y) = 9 / 10; a fixed point, so any n_iter
    for n_iter in (1, 5):
        wmv = WeightedMajorityVote(n_iter=n_iter).fit(SMALL)
        assert wmv.worker_accuracy_.tolist() == pytest.approx([0.75, 0.75, 0.5])
        assert wmv.probas_.loc["t1", "x"] == pytest.approx(0.9)
        assert wmv.probas_.loc["t2", "y"] == pytest.approx(0.9)
        assert wmv.skills_.to_dict() == pytest.approx({"a": 0.9, "b": 0.9, "c": 0.5})
    with pytest.raises(ValueError, match="n_iter=0"):
        WeightedMajorityVote(n_iter=0)


def test_weighted_vote_learns_skills_against_gold():
    # gold t1 = y: agreements a 1/2, b 1/2, c 2/2 -> skills 0.5, 0.5, 0.75; t2 (all y) -> 3 : 1
    wmv = WeightedMajorityVote(n_iter=1).fit(SMALL, pd.Series({"t1": "y"}))
    assert wmv.worker_accuracy_.tolist() == pytest.approx([0.5, 0.5, 0.75])
    assert wmv.probas_.loc["t1"].tolist() == [0.0, 1.0]
    assert wmv.probas_.loc["t2", "y"] == pytest.approx(0.75)


def test_weighted_vote_iterates_until_the_skills_settle():
    # t1: a=x, b=y; t2: a=x, c=x; t3: b=y, c=x. Vote shares tie t1 and t3 -> x (first class):
    # skills a 3/4, b 1/4, c 3/4 after one pass; the second pass sees t1 -> x, t3 -> x again
    data = table(("t1", "a", "x"), ("t1", "b", "y"), ("t2", "a", "x"), ("t2", "c", "x"),
                 ("t3", "b", "y"), ("t3", "c", "x"))
    one = WeightedMajorityVote(n_iter=1).fit(data)
    assert one.worker_accuracy_.tolist() == pytest.approx([0.75, 0.25, 0.75])
    # weights log 3, -log 3, log 3: t1 x: exp(log3 + log3) -> 9 / 10
    assert one.probas_.loc["t1", "x"] == pytest.approx(0.9)


def crowd(seed: int, n_tasks: int = 14, n_workers: int = 5, k: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n_tasks)
    acc = np.linspace(0.45, 0.9, n_workers)
    rows = []
    for t in range(n_tasks):
        for w in rng.choice(n_workers, size=3, replace=False):
            label = truth[t] if rng.random() < acc[w] else (truth[t] + 1 + rng.integers(k - 1)) % k
            rows.append((f"t{t}", f"w{w}", f"c{label}"))
    rows.append(("t0", "solo", "c0"))  # a worker with one judgment
    return table(*rows)


def dirichlet_multinomial_evidence(g: float, counts: np.ndarray, target: np.ndarray) -> float:
    """Σ over true classes k of log DirMult(counts[k] | g · target[k])."""
    k_classes = range(len(counts))
    return sum(gammaln(g) - gammaln(g + counts[k].sum())
               + sum(gammaln(g * target[k, obs] + counts[k, obs]) - gammaln(g * target[k, obs]) for obs in k_classes)
               for k in k_classes)


def reference_em(data: pd.DataFrame, kind: str, *, n_iter: int = 100, tol: float = 1e-5, smoothing: float = 0.0,
                 strength: float | None = None, grid: tuple[float, ...] = (), gold: dict | None = None):
    """The EM of the docstrings, written as plain loops over the judgments."""
    tasks = list(pd.unique(data["task"]))
    workers = list(pd.unique(data["worker"]))
    classes = sorted(set(data["label"]) | set((gold or {}).values()))
    T, W, K = len(tasks), len(workers), len(classes)
    judgments = [(tasks.index(t), workers.index(w), classes.index(y)) for t, w, y in data.itertuples(index=False)]
    post = np.zeros((T, K))
    for t, _, y in judgments:
        post[t, y] += 1
    post /= post.sum(axis=1, keepdims=True)

    def fix(p):
        for task, label in (gold or {}).items():
            if task in tasks:
                p[tasks.index(task)] = 0.0
                p[tasks.index(task), classes.index(label)] = 1.0
        return p

    post = fix(post)
    previous, iterations, strengths = -math.inf, 0, None
    for _ in range(n_iter):
        prior = np.clip(post.mean(axis=0), EPS, None)
        counts = np.zeros((W, K, K))  # worker, true, observed
        for t, w, y in judgments:
            counts[w, :, y] += post[t]
        if kind == "one_coin":
            n = np.zeros(W)
            agree = np.zeros(W)
            for t, w, y in judgments:
                n[w] += 1
                agree[w] += post[t, y]
            skill = np.clip((agree + smoothing) / np.maximum(n + 2 * smoothing, 1), EPS, 1 - EPS)
            conf = np.empty((W, K, K))
            for w in range(W):
                conf[w] = (1 - skill[w]) / (K - 1)
                np.fill_diagonal(conf[w], skill[w])
        else:
            if kind == "full":
                conf = counts + smoothing
            else:
                n = counts.sum(axis=(1, 2))
                skill = np.clip(np.trace(counts, axis1=1, axis2=2) / np.maximum(n, EPS), EPS, 1 - EPS)
                target = np.empty((W, K, K))
                for w in range(W):
                    target[w] = (1 - skill[w]) / (K - 1)
                    np.fill_diagonal(target[w], skill[w])
                if strength is None:
                    strengths = np.empty(W)
                    for w in range(W):
                        scores = [dirichlet_multinomial_evidence(g, counts[w], target[w]) for g in grid]
                        strengths[w] = grid[int(np.argmax(scores))]
                else:
                    strengths = np.full(W, strength)
                conf = counts + strengths[:, None, None] * target
            conf = np.clip(conf, EPS, None)
            conf = conf / conf.sum(axis=2, keepdims=True)
        loglik = np.tile(np.log(prior), (T, 1))
        for t, w, y in judgments:
            loglik[t] += np.log(conf[w, :, y])
        evidence_t = logsumexp(loglik, axis=1)
        post = fix(np.exp(loglik - evidence_t[:, None]))
        iterations += 1
        objective = evidence_t.sum() / len(judgments)
        if objective - previous < tol:
            break
        previous = objective
    return pd.DataFrame(post, index=tasks, columns=classes), iterations, strengths


def check(model, data, kind, gold=None, **kwargs):
    expected, iterations, strengths = reference_em(data, kind, gold=gold, **kwargs)
    model.fit(data, None if gold is None else pd.Series(gold))
    assert model.probas_.to_numpy() == pytest.approx(expected.to_numpy(), abs=1e-9)
    assert model.n_iter_ == iterations
    if gold is None:  # empty confusion cells are clipped, not log(0): no class is ruled out for good
        assert (model.probas_.to_numpy() > 0).all()
    assert model.priors_ == pytest.approx(expected.to_numpy().mean(axis=0), abs=1e-9)
    assert model.labels_.tolist() == expected.columns[expected.to_numpy().argmax(axis=1)].tolist()
    return model, strengths


@pytest.mark.parametrize("seed", [1, 2])
def test_dawid_skene_is_the_em_of_its_docstring(seed):
    data = crowd(seed)
    check(DawidSkene(), data, "full")
    check(DawidSkene(smoothing=0.5), data, "full", smoothing=0.5)
    check(DawidSkene(n_iter=1), data, "full", n_iter=1)
    check(DawidSkene(n_iter=3, tol=1e9), data, "full", n_iter=3, tol=1e9)  # the first step always runs, the second stops
    check(DawidSkene(tol=1e-3), data, "full", tol=1e-3)
    check(DawidSkene(), data, "full", gold={"t0": "c2", "t3": "c0"})


def test_dawid_skene_rows_of_the_confusion_matrices_are_distributions():
    ds = DawidSkene(smoothing=0.5).fit(crowd(3))
    assert ds.errors_.sum(axis=2) == pytest.approx(np.ones(ds.errors_.shape[:2]))
    assert ds.errors_.shape == (6, 3, 3)  # 5 workers and the one with a single judgment
    with pytest.raises(ValueError, match="n_iter=0"):
        DawidSkene(n_iter=0)
    with pytest.raises(ValueError, match=r"smoothing=-0\.1"):
        DawidSkene(smoothing=-0.1)
    DawidSkene(n_iter=1, smoothing=0)  # the bounds themselves are allowed


@pytest.mark.parametrize("seed", [1, 2])
def test_one_coin_dawid_skene_is_the_em_of_its_docstring(seed):
    data = crowd(seed)
    check(OneCoinDawidSkene(), data, "one_coin")
    check(OneCoinDawidSkene(smoothing=1.0), data, "one_coin", smoothing=1.0)
    check(OneCoinDawidSkene(n_iter=2), data, "one_coin", n_iter=2, gold={"t1": "c1"})


def test_one_coin_skill_is_the_share_of_agreement_with_the_posterior():
    ds = OneCoinDawidSkene(n_iter=1).fit(SMALL)
    # starting posteriors are vote shares: a (2/3 + 1)/2, c (1/3 + 1)/2
    assert ds.worker_accuracy_.tolist() == pytest.approx([5 / 6, 5 / 6, 2 / 3])


@pytest.mark.parametrize("seed", [1, 2])
def test_shrunk_dawid_skene_is_the_em_of_its_docstring(seed):
    data = crowd(seed)
    check(ShrunkDawidSkene(strength=2.0), data, "shrunk", strength=2.0)
    check(ShrunkDawidSkene(strength=0), data, "shrunk", strength=0.0)
    grid = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
    model, strengths = check(ShrunkDawidSkene(), data, "shrunk", grid=grid)
    assert model.strength_.tolist() == strengths.tolist()
    small = (0.5, 3.0)
    model, strengths = check(ShrunkDawidSkene(grid=small), data, "shrunk", grid=small)
    assert model.strength_.tolist() == strengths.tolist()


def test_shrunk_dawid_skene_refuses_bad_strengths_and_grids():
    for bad in (-1, "one", True):
        with pytest.raises(ValueError, match="strength="):
            ShrunkDawidSkene(strength=bad)
    for grid in ((), (0.0, 1.0), (-1.0,)):
        with pytest.raises(ValueError, match="grid="):
            ShrunkDawidSkene(grid=grid)
    assert ShrunkDawidSkene(strength=0).strength == 0
    assert ShrunkDawidSkene(grid=(1, 2)).grid == (1.0, 2.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_auto_dawid_skene_says_what_the_learned_strengths_amount_to(seed):
    data = crowd(seed)
    grid = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
    model, strengths = check(AutoDawidSkene(rings=False), data, "shrunk", grid=grid)
    expected = ("one_coin" if (strengths == max(grid)).all() else
                "full_confusion" if (strengths == min(grid)).all() else "mixed")
    assert model.chosen_ == expected and model.rings_ == []
    one = AutoDawidSkene(rings=False, grid=(4.0,)).fit(data)
    assert one.chosen_ == "one_coin"
    # two grid points: every worker at the top, every one at the bottom, or mixed, as the evidence says
    for pair in ((0.5, 1000.0), (0.001, 0.002), (1.0, 2.0)):
        model, strengths = check(AutoDawidSkene(rings=False, grid=pair), data, "shrunk", grid=pair)
        expected = ("one_coin" if (strengths == max(pair)).all() else
                    "full_confusion" if (strengths == min(pair)).all() else "mixed")
        assert model.chosen_ == expected


def test_auto_dawid_skene_names_full_confusion_when_every_worker_confuses_systematically():
    # each worker maps the true class (task number mod 3) to an answer by a fixed table: structure,
    # not noise, so every worker's evidence prefers the weak one-coin prior
    tables = {"w0": (0, 0, 1), "w1": (0, 2, 2), "w2": (1, 2, 1)}
    data = table(*[(f"t{t}", w, f"c{m[t % 3]}") for t in range(12) for w, m in tables.items()])
    pair = (0.5, 1000.0)
    model, strengths = check(AutoDawidSkene(rings=False, grid=pair), data, "shrunk", grid=pair)
    assert strengths.tolist() == [0.5, 0.5, 0.5] and model.chosen_ == "full_confusion"


def test_bad_tables_are_named_in_the_error():
    with pytest.raises(TypeError, match=r"expected a pandas DataFrame with columns .* got list"):
        MajorityVote().fit([("t", "a", "x")])
    with pytest.raises(ValueError, match=r"^data: task, worker and label must not contain missing values$"):
        MajorityVote().fit(table(("t", "a", None)))


@pytest.mark.parametrize("cls", [DawidSkene, OneCoinDawidSkene, ShrunkDawidSkene])
def test_fitted_models_keep_no_scratch_and_fit_predict_holds_gold(cls):
    model = cls()
    labels = model.fit_predict(SMALL, pd.Series({"t2": "x"}))
    assert labels["t2"] == "x" and model.probas_.loc["t2"].tolist() == [1.0, 0.0]
    assert not {"_A", "_AT", "_flat"} & set(vars(model))
    assert model.fit_predict_proba(SMALL, pd.Series({"t2": "x"})).loc["t2"].tolist() == [1.0, 0.0]


def test_majority_vote_of_one_answer_is_certain():
    assert MajorityVote().fit(table(("t", "a", "x"), ("u", "a", "y"))).probas_.to_numpy().tolist() == [[1.0, 0.0],
                                                                                                       [0.0, 1.0]]


def test_one_coin_skills_stay_inside_the_open_interval():
    # "right" answered only a gold task, correctly; "wrong" only a gold task, wrongly: their skills are
    # 1 and 0 as counted, kept at 1 - 1e-10 and 1e-10 so that no log is of 0
    data = pd.concat([SMALL, table(("g", "right", "x"), ("g", "wrong", "y"))], ignore_index=True)
    model = OneCoinDawidSkene(n_iter=1).fit(data, pd.Series({"g": "x"}))
    skills = dict(zip(pd.unique(data["worker"]), model.worker_accuracy_, strict=True))
    assert skills["right"] == 1 - EPS and skills["wrong"] == EPS
    assert np.isfinite(model.probas_.to_numpy()).all()


def test_default_hyper_parameters_are_the_documented_ones():
    # a resumed run re-aggregates earlier rounds: a changed default would silently change stored labels
    grid = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
    assert WeightedMajorityVote().n_iter == 5 and WeightedMajorityVote().weights is None
    ds = DawidSkene()
    assert (ds.n_iter, ds.tol, ds.smoothing, ds.classes) == (100, 1e-5, 0.0, None)
    shrunk = ShrunkDawidSkene()
    assert (shrunk.strength, shrunk.grid, shrunk.n_iter, shrunk.tol) == ("learned", grid, 100, 1e-5)
    auto = AutoDawidSkene()
    assert (auto.rings, auto.strength, auto.grid, auto.n_iter, auto.tol) == (True, "learned", grid, 100, 1e-5)


def test_auto_dawid_skene_refits_with_each_ring_as_one_voice():
    from crowdloop.consensus.collusion import find_rings, one_voice
    from tests.consensus.test_collusion import crowd as ring_crowd

    data, truth, members = ring_crowd(0, n_items=200)
    gold = truth.iloc[:10]
    blind = AutoDawidSkene(rings=False).fit(data, gold)
    rings = find_rings(data, model=blind)
    assert len(rings) == 1 and set(rings[0].workers) <= members and blind.rings_ == []  # (200 items: not every member)
    auto = AutoDawidSkene().fit(data, gold)
    assert auto.rings_ == rings
    # the second fit is the plain fit of the one-voice table, gold held
    again = AutoDawidSkene(rings=False).fit(one_voice(data, rings), gold)
    assert auto.probas_.to_numpy() == pytest.approx(again.probas_.to_numpy(), abs=1e-12)
    assert (auto.labels_[gold.index] == gold).all()
    # every worker of the table keeps a skill; a member carries their ring's
    workers = list(pd.unique(data["worker"]))
    assert auto.skills_.index.tolist() == workers
    assert auto.skills_.index.name == "worker" and auto.skills_.name == "skill"
    for w in workers:
        assert auto.skills_[w] == again.skills_[rings[0].name if w in rings[0].workers else w]


def test_auto_dawid_skene_passes_its_settings_on():
    data = crowd(1)
    assert AutoDawidSkene(rings=False, n_iter=1).fit(data).n_iter_ == 1
    assert AutoDawidSkene(rings=False, tol=1e9).fit(data).n_iter_ == 2
    assert AutoDawidSkene(classes=["c0", "c1", "c2", "c9"]).fit(data).probas_.columns.tolist() == ["c0", "c1", "c2", "c9"]
    empty = AutoDawidSkene().fit(table())
    assert empty.rings_ == [] and empty.labels_.empty


def test_two_classes_spread_errors_over_the_one_other_class():
    data = crowd(5, k=2)
    check(OneCoinDawidSkene(), data, "one_coin")
    check(ShrunkDawidSkene(strength=2.0), data, "shrunk", strength=2.0)


def test_shrunk_skills_stay_inside_the_open_interval_and_settings_pass_on():
    data = pd.concat([SMALL, table(("g", "right", "x"), ("g", "wrong", "y"))], ignore_index=True)
    model = ShrunkDawidSkene(strength=1.0, n_iter=1).fit(data, pd.Series({"g": "x"}))
    skills = dict(zip(pd.unique(data["worker"]), model.worker_accuracy_, strict=True))
    assert skills["right"] == 1 - EPS and skills["wrong"] == EPS
    assert model.errors_.sum(axis=2) == pytest.approx(np.ones((5, 2)))
    four = ["c0", "c1", "c2", "c9"]
    assert ShrunkDawidSkene(classes=four).fit(crowd(1)).probas_.columns.tolist() == four
    assert ShrunkDawidSkene(n_iter=1).fit(crowd(1)).n_iter_ == 1
    assert ShrunkDawidSkene(tol=1e9).fit(crowd(1)).n_iter_ == 2
    wmv = WeightedMajorityVote(classes=["x", "y", "z"]).fit(SMALL)
    assert wmv.probas_.columns.tolist() == ["x", "y", "z"]


def test_a_class_nobody_chose_keeps_a_tiny_prior_not_log_zero():
    probas = DawidSkene(classes=["c0", "c1", "c2", "c9"]).fit(crowd(1)).probas_
    assert np.isfinite(probas.to_numpy()).all() and (probas["c9"] > 0).all() and (probas["c9"] < 1e-6).all()


def test_results_keep_first_appearance_order_names_and_one_answer_workers():
    data = table(("u", "b", "y"), ("t", "a", "x"), ("t", "b", "x"))
    mv = MajorityVote().fit(data)
    assert mv.skills_.index.tolist() == ["b", "a"] and mv.probas_.index.tolist() == ["u", "t"]
    assert mv.skills_.to_dict() == {"b": 1.0, "a": 1.0}  # a answered once: 1 of 1
    assert (mv.skills_.name, mv.confidence_.name, mv.labels_.name) == ("skill", "confidence", "agg_label")
    assert (mv.probas_.columns.name, mv.probas_.index.name) == ("label", "task")


def test_labels_of_mixed_types_sort_as_text_and_unknown_ones_are_listed_five_at_most():
    mixed = table(("t", "a", 1), ("u", "a", "b"), ("u", "c", 10))
    assert MajorityVote().fit(mixed).probas_.columns.tolist() == [1, 10, "b"]
    with pytest.raises(ValueError, match=re.escape("label(s) [1, 10, 'b'] are not in classes=['x']")):
        MajorityVote(classes=["x"]).fit(mixed)
    six = table(*[("t", "a", f"l{i}") for i in range(6)])
    with pytest.raises(ValueError, match=re.escape("label(s) ['l0', 'l1', 'l2', 'l3', 'l4'] are not in")):
        MajorityVote(classes=["x"]).fit(six)


def test_weighted_vote_weighs_each_vote_against_k_minus_1_wrong_classes():
    # K = 3, a and b (0.5) vote x, c (0.75) votes y: exp weights 0.5*2/0.5 = 2 each, 0.75*2/0.25 = 6: 4 : 6 : 1
    data = table(("t", "a", "x"), ("t", "b", "x"), ("t", "c", "y"))
    wmv = WeightedMajorityVote(weights={"a": 0.5, "b": 0.5, "c": 0.75}, classes=["x", "y", "z"]).fit(data)
    assert wmv.probas_.loc["t"].tolist() == pytest.approx([4 / 11, 6 / 11, 1 / 11])


def test_weighted_vote_iterates_n_iter_times_when_it_estimates_skills():
    # t2 is a tie (d: x, a: y) that goes to x by vote shares, and to y once a's skill is counted.
    # Each pass re-estimates the skills from the last vote.
    data = table(("t0", "a", "y"), ("t1", "d", "y"), ("t2", "d", "x"), ("t2", "a", "y"), ("t3", "d", "y"))
    runs = {n: WeightedMajorityVote(n_iter=n).fit(data).probas_.to_numpy() for n in (1, 2, 5)}
    by_hand = WeightedMajorityVote(n_iter=1)
    # one more pass by hand: the skills of pass 1's vote, smoothed (agreements + 1) / (answers + 2)
    post = runs[1]
    hard = post.argmax(axis=1)
    tasks = {"t0": 0, "t1": 1, "t2": 2, "t3": 3}
    skills = {}
    for w in ("a", "d"):
        rows = data[data["worker"] == w]
        agree = sum(["x", "y"][hard[tasks[t]]] == y for t, y in zip(rows["task"], rows["label"], strict=True))
        skills[w] = (agree + 1) / (len(rows) + 2)
    second = by_hand.__class__(weights=skills).fit(data).probas_.to_numpy()
    assert runs[2] == pytest.approx(second)
    assert not np.allclose(runs[1], runs[2])  # the second pass changes something, so n_iter counts


def test_labels_are_objects_and_confidences_floats_even_for_numbers_and_empty_tables():
    numbers = MajorityVote().fit(table(("t", "a", 1), ("u", "a", 2)))
    assert numbers.labels_.dtype == object and numbers.labels_.tolist() == [1, 2]
    empty = MajorityVote().fit(table())
    assert empty.labels_.dtype == object and empty.confidence_.dtype == float
