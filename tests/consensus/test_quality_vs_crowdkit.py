"""crowdloop's aggregators side by side with crowd-kit 1.4.2 on the same simulated crowds."""

from __future__ import annotations

import crowdkit.aggregation as ca
import numpy as np
import pandas as pd
import pytest

from crowdloop import registry
from crowdloop.consensus import AutoDawidSkene, DawidSkene, MajorityVote, OneCoinDawidSkene, WeightedMajorityVote


def crowd(seed: int, *, n_items: int = 600, n_workers: int = 30, k: int = 5, per_item: int = 3,
          spammers: int = 5) -> tuple[pd.DataFrame, pd.Series]:
    """Honest workers with accuracies in [0.35, 0.95] plus uniform spammers."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(k, size=n_items)
    acc = np.concatenate([rng.uniform(0.35, 0.95, n_workers), np.full(spammers, 1.0 / k)])
    rows = []
    for t in range(n_items):
        for w in rng.choice(len(acc), size=per_item, replace=False):
            right = rng.random() < acc[w]
            label = truth[t] if right else (truth[t] + 1 + rng.integers(k - 1)) % k
            rows.append((f"t{t}", f"w{w}", f"c{label}"))
    data = pd.DataFrame(rows, columns=["task", "worker", "label"])
    return data, pd.Series([f"c{x}" for x in truth], index=[f"t{t}" for t in range(n_items)])


def accuracy(labels: pd.Series, truth: pd.Series) -> float:
    return float((labels.reindex(truth.index) == truth).mean())


# crowd-kit 1.4.2's MajorityVote and Wawa fail under scikit-learn ≥1.6 (no __sklearn_tags__),
# so the vote-based aggregators are compared with crowd-kit's one-coin and full Dawid-Skene.
PAIRS = [
    (WeightedMajorityVote, lambda: ca.DawidSkene(n_iter=100)),
    (DawidSkene, lambda: ca.DawidSkene(n_iter=100)),
    (OneCoinDawidSkene, lambda: ca.OneCoinDawidSkene(n_iter=100)),
    (AutoDawidSkene, lambda: ca.DawidSkene(n_iter=100)),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_accuracy_matches_or_beats_crowdkit(seed, ours, theirs):
    data, truth = crowd(seed)
    mine = accuracy(ours().fit(data).labels_, truth)
    ref = accuracy(theirs().fit_predict(data), truth)
    assert mine >= ref, f"{ours.__name__}: {mine:.4f} < crowd-kit {ref:.4f}"


@pytest.mark.parametrize("seed", [0, 1])
def test_majority_vote_matches_a_plain_pandas_vote(seed):
    data, truth = crowd(seed)
    counts = data.groupby(["task", "label"]).size().unstack(fill_value=0)
    top = counts.to_numpy().max(axis=1, keepdims=True)
    unanimous_winner = (counts.to_numpy() == top).sum(axis=1) == 1
    mine = MajorityVote().fit(data).labels_.reindex(counts.index)
    expected = counts.idxmax(axis=1)
    assert (mine[unanimous_winner] == expected[unanimous_winner]).all()
    assert accuracy(WeightedMajorityVote().fit(data).labels_, truth) >= accuracy(mine, truth)


def test_one_coin_beats_full_confusion_when_workers_answer_little():
    data, truth = crowd(3, n_items=400, k=10, n_workers=40)
    auto = AutoDawidSkene().fit(data)
    assert auto.chosen_ == "one_coin_dawid_skene"
    assert accuracy(auto.labels_, truth) >= accuracy(DawidSkene().fit(data).labels_, truth)


def test_auto_picks_full_confusion_with_many_answers_per_worker():
    data, _ = crowd(4, n_items=3000, k=3, n_workers=8, spammers=1, per_item=3)
    assert AutoDawidSkene().fit(data).chosen_ == "dawid_skene"


@pytest.mark.parametrize("cls", [MajorityVote, WeightedMajorityVote, DawidSkene, OneCoinDawidSkene, AutoDawidSkene])
def test_every_aggregator_returns_labels_confidence_and_skills(cls):
    data, truth = crowd(5, n_items=200)
    agg = cls().fit(data)
    assert set(agg.labels_.index) == set(truth.index)
    assert ((agg.confidence_ > 0) & (agg.confidence_ <= 1 + 1e-9)).all()
    np.testing.assert_allclose(agg.probas_.sum(axis=1), 1.0)
    assert set(agg.skills_.index) == set(data["worker"])
    spam = agg.skills_[[f"w{w}" for w in range(30, 35)]].mean()
    honest = agg.skills_[[f"w{w}" for w in range(30)]].mean()
    assert spam < honest


@pytest.mark.parametrize("cls", [WeightedMajorityVote, DawidSkene, OneCoinDawidSkene, AutoDawidSkene])
def test_gold_answers_are_held_fixed_and_raise_accuracy(cls):
    data, truth = crowd(6, n_items=400)
    gold = truth.iloc[:80]
    agg = cls().fit(data, true_labels=gold)
    assert (agg.labels_[gold.index] == gold).all()
    assert (agg.confidence_[gold.index] == 1.0).all()
    rest = truth.index[80:]
    with_gold = accuracy(agg.labels_[rest], truth[rest])
    without = accuracy(cls().fit(data).labels_[rest], truth[rest])
    assert with_gold >= without - 0.01


def test_given_weights_steer_the_weighted_vote():
    data = pd.DataFrame({"task": ["a", "a", "a"], "worker": ["good", "bad1", "bad2"], "label": ["x", "y", "y"]})
    agg = WeightedMajorityVote(weights={"good": 0.99, "bad1": 0.3, "bad2": 0.3}, classes=["x", "y"]).fit(data)
    assert agg.labels_["a"] == "x"
    assert MajorityVote(classes=["x", "y"]).fit(data).labels_["a"] == "y"


@pytest.mark.parametrize("name", ["weighted_majority_vote", "auto"])
def test_new_aggregators_are_registered(name):
    cls = registry.aggregators.load(name)
    data, truth = crowd(7, n_items=100)
    assert accuracy(cls(classes=sorted(truth.unique())).fit(data).labels_, truth) > 0.6
