"""Our aggregators against crowd-kit 1.4.2 (the reference) on the same simulated crowd."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from crowdloop import registry
from crowdloop.consensus import DawidSkene, MajorityVote, OneCoinDawidSkene


def simulated_crowd(rng: np.random.Generator, n_items=1500, n_workers=50, n_spammers=5, k=10, per_item=3):
    """Workers with accuracies 0.35–0.95 plus uniform spammers, ``per_item`` judgments each."""
    truth = rng.integers(k, size=n_items)
    acc = np.concatenate([rng.uniform(0.35, 0.95, n_workers), np.full(n_spammers, 1.0 / k)])
    rows = []
    for item in range(n_items):
        for w in rng.choice(len(acc), size=per_item, replace=False):
            label = truth[item] if rng.random() < acc[w] else (truth[item] + 1 + rng.integers(k - 1)) % k
            rows.append((f"t{item}", f"w{w}", f"c{label}"))
    data = pd.DataFrame(rows, columns=["task", "worker", "label"])
    return data, pd.Series([f"c{t}" for t in truth], index=[f"t{i}" for i in range(n_items)])


@pytest.fixture(scope="module")
def crowd():
    return simulated_crowd(np.random.default_rng(0))


def accuracy(labels: pd.Series, truth: pd.Series) -> float:
    return float((labels == truth.reindex(labels.index)).mean())


def crowdkit(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import crowdkit.aggregation as ck
    return getattr(ck, name)


def run_quietly(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def test_majority_vote_matches_crowdkit(crowd) -> None:
    data, _ = crowd
    ours = MajorityVote().fit(data)
    theirs = run_quietly(crowdkit("MajorityVote")().fit_predict_proba, data)
    theirs = theirs.reindex(index=ours.probas_.index, columns=ours.probas_.columns).fillna(0.0)
    np.testing.assert_allclose(ours.probas_.to_numpy(), theirs.to_numpy())
    untied = (ours.probas_.to_numpy() == ours.probas_.to_numpy().max(1, keepdims=True)).sum(1) == 1
    assert (ours.labels_[untied] == theirs.idxmax(axis=1)[untied]).all()


@pytest.mark.parametrize("ours_cls, theirs_name", [(DawidSkene, "DawidSkene"), (OneCoinDawidSkene, "OneCoinDawidSkene")])
def test_dawid_skene_matches_or_beats_crowdkit(crowd, ours_cls, theirs_name) -> None:
    data, truth = crowd
    ours = ours_cls().fit(data)
    theirs = run_quietly(crowdkit(theirs_name)(n_iter=100).fit_predict, data)
    agreement = float((ours.labels_ == theirs.reindex(ours.labels_.index)).mean())
    assert agreement >= 0.97, agreement
    assert accuracy(ours.labels_, truth) >= accuracy(theirs, truth) - 0.005


def test_one_coin_beats_full_confusion_with_few_labels_per_worker(crowd) -> None:
    data, truth = crowd
    assert accuracy(OneCoinDawidSkene().fit_predict(data), truth) > accuracy(DawidSkene().fit_predict(data), truth)


@pytest.mark.parametrize("cls", [MajorityVote, DawidSkene, OneCoinDawidSkene])
def test_results_shapes_confidence_and_skills(crowd, cls) -> None:
    data, _truth = crowd
    agg = cls().fit(data)
    assert set(agg.labels_.index) == set(data["task"])
    np.testing.assert_allclose(agg.probas_.sum(axis=1), 1.0)
    assert ((agg.confidence_ > 0) & (agg.confidence_ <= 1)).all()
    np.testing.assert_allclose(agg.confidence_, agg.probas_.max(axis=1))
    assert set(agg.skills_.index) == set(data["worker"])
    spammers = agg.skills_[[w for w in agg.skills_.index if int(w[1:]) >= 50]]
    assert spammers.mean() < agg.skills_.median()


@pytest.mark.parametrize("cls", [MajorityVote, DawidSkene, OneCoinDawidSkene])
def test_gold_labels_are_fixed_truths(crowd, cls) -> None:
    data, truth = crowd
    gold = truth.iloc[:200]
    agg = cls().fit(data, true_labels=gold)
    assert (agg.labels_[gold.index] == gold).all()
    assert (agg.confidence_[gold.index] == 1.0).all()


def test_classes_argument_adds_unseen_classes_and_rejects_unknown_labels() -> None:
    data = pd.DataFrame({"task": ["a", "a", "b"], "worker": ["x", "y", "x"], "label": ["cat", "cat", "dog"]})
    agg = DawidSkene(classes=["bird", "cat", "dog"]).fit(data)
    assert list(agg.probas_.columns) == ["bird", "cat", "dog"]
    with pytest.raises(ValueError, match=r"label\(s\) \['fish'\] are not in classes"):
        MajorityVote(classes=["cat", "dog"]).fit(data.assign(label=["cat", "fish", "dog"]))


def test_bad_input_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) \['worker'\]"):
        MajorityVote().fit(pd.DataFrame({"task": [1], "label": [1]}))
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        MajorityVote().fit([("t", "w", "l")])
    with pytest.raises(ValueError, match="n_iter=0"):
        DawidSkene(n_iter=0)


def test_empty_table_gives_empty_results() -> None:
    agg = DawidSkene().fit(pd.DataFrame({"task": [], "worker": [], "label": []}))
    assert agg.labels_.empty and agg.skills_.empty


def test_registered_names() -> None:
    assert registry.aggregators.load("dawid_skene") is DawidSkene
    assert registry.aggregators.load("majority_vote") is MajorityVote
    assert registry.aggregators.load("one_coin_dawid_skene") is OneCoinDawidSkene
