"""The self-measuring policy: evidence from a random audit decides how each batch is split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crowdloop import registry
from crowdloop.errors import SamplerError
from crowdloop.models.semi import spreading_helps
from crowdloop.samplers.auto import auto_sampling, decide


def model_template():
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))


def run_policy(X: np.ndarray, y: np.ndarray, *, rounds: int, batch: int, seed: int) -> tuple[dict[str, int], list[dict]]:
    """A small active-learning loop driven by the policy; returns picks per arm and the records."""
    rng = np.random.default_rng(seed)
    first = rng.choice(len(X), size=20, replace=False)
    arm_of = {int(i): "random" for i in first}
    records = []
    for _ in range(rounds):
        human = np.array(sorted(arm_of))
        cand = np.setdiff1d(np.arange(len(X)), human)
        model = model_template().fit(X[human], y[human])
        d = decide(model, X[cand], batch_size=batch, rng=rng, X_labeled=X[human], y_labeled=y[human],
                   labeled_arm=[arm_of[int(i)] for i in human], arms=("random", "margin", "kmeans_margin"))
        for arm, pos in d.picked_by.items():
            arm_of.update({int(i): arm for i in cand[pos]})
        records.append(d.record)
    counts: dict[str, int] = {}
    for arm in arm_of.values():
        counts[arm] = counts.get(arm, 0) + 1
    return counts, records


def test_the_decision_is_a_small_json_record_that_explains_the_split():
    X, y = make_blobs(n_samples=400, centers=4, random_state=0)
    counts, records = run_policy(X, y, rounds=6, batch=10, seed=0)
    last = json.loads(json.dumps(records[-1]))  # storable as it is
    assert last["policy"] == "auto" and last["arms"] == ["random", "margin", "kmeans_margin"]
    assert sum(last["slots"].values()) == 10
    assert last["slots"]["random"] >= 1  # the audit share
    assert last["n_audit"] >= 20 and set(last["audit_accuracy"]) <= set(last["arms"])
    assert abs(sum(last["probabilities"].values()) - 1) < 1e-3
    assert sum(counts.values()) == 20 + 6 * 10


def test_same_inputs_same_decision_and_the_plain_sampler_agrees():
    X, y = make_blobs(n_samples=300, centers=3, random_state=1)
    model = model_template().fit(X[:40], y[:40])
    kw = {"X_labeled": X[:40], "y_labeled": y[:40], "labeled_arm": ["random"] * 20 + ["margin"] * 10 + ["kmeans_margin"] * 10,
              "min_items": 5}
    a = decide(model, X[40:], batch_size=12, rng=np.random.default_rng(3), **kw)
    b = decide(model, X[40:], batch_size=12, rng=np.random.default_rng(3), **kw)
    assert a.record == b.record and np.array_equal(a.indices, b.indices)
    assert np.array_equal(auto_sampling(model, X[40:], batch_size=12, rng=np.random.default_rng(3), **kw), a.indices)
    assert sorted(i for pos in a.picked_by.values() for i in pos) == sorted(a.indices.tolist())
    assert registry.samplers.load("auto") is auto_sampling


@pytest.mark.parametrize("noisy_arm", ["margin", "random"])
def test_the_batch_drifts_away_from_the_arm_whose_picks_carry_noise(noisy_arm):
    # 60 audit items, 30 picks each for margin and k-means margin; one arm's picks carry random labels
    # (what uncertainty sampling meets on a noisy pool): the policy gives that arm the fewest slots.
    X, y = make_blobs(n_samples=700, centers=4, cluster_std=1.5, random_state=3)
    arms = ["random"] * 60 + ["margin"] * 30 + ["kmeans_margin"] * 30
    y_seen = y[:120].copy()
    rng = np.random.default_rng(0)
    if noisy_arm == "margin":
        y_seen[60:90] = rng.integers(4, size=30)
    else:  # random's picks serve as the audit too: noise there makes every model look alike, so spoil the others
        y_seen[60:120] = rng.integers(4, size=60)
    model = model_template().fit(X[:120], y_seen)
    d = decide(model, X[120:], batch_size=20, rng=np.random.default_rng(1), X_labeled=X[:120], y_labeled=y_seen,
               labeled_arm=arms, arms=("random", "margin", "kmeans_margin"))
    acc, prob = d.record["audit_accuracy"], d.record["probabilities"]
    if noisy_arm == "margin":
        assert acc["margin"] < acc["kmeans_margin"] and prob["margin"] < prob["kmeans_margin"]
    else:
        assert acc["random"] > max(acc["margin"], acc["kmeans_margin"])
        assert d.record["slots"]["random"] > d.record["slots"]["margin"] + d.record["slots"]["kmeans_margin"]


def test_bad_parameters_fail_with_one_line():
    X, y = make_blobs(n_samples=50, centers=2, random_state=0)
    model = model_template().fit(X, y)
    rng = np.random.default_rng(0)
    with pytest.raises(SamplerError, match="'random' must be one of the arms"):
        decide(model, X, batch_size=5, rng=rng, arms=("margin",))
    with pytest.raises(SamplerError, match="labeled_arm has 3 entries"):
        decide(model, X, batch_size=5, rng=rng, X_labeled=X[:10], y_labeled=y[:10], labeled_arm=["random"] * 3)
    with pytest.raises(SamplerError, match="random_share"):
        decide(model, X, batch_size=5, rng=rng, random_share=2)


def test_label_spreading_is_kept_where_it_helps_and_dropped_where_it_hurts():
    rng = np.random.default_rng(0)
    # two clusters per class, far apart: spreading labels along the graph helps a linear model with few labels
    X, y = make_blobs(n_samples=600, centers=[[0, 0], [6, 6], [0, 6], [6, 0]], cluster_std=0.6, random_state=0)
    y = y % 2
    labeled = rng.choice(600, size=30, replace=False)
    use, record = spreading_helps(model_template(), X, labeled, y[labeled], np.arange(30), rng=np.random.default_rng(1))
    assert record["n_audit"] == 30 and record["with"] is not None
    assert use == (record["with"] >= record["without"])
    again = spreading_helps(model_template(), X, labeled, y[labeled], np.arange(30), rng=np.random.default_rng(1))
    assert again == (use, record)
    few = spreading_helps(model_template(), X, labeled, y[labeled], np.arange(3), rng=np.random.default_rng(1))
    assert few == (True, {"n_audit": 3, "without": None, "with": None})  # too small an audit to judge
