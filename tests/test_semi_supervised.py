"""Semi-supervised machine labels (label spreading over the pool): what they label, that they
train the model without ever counting as human labels, that a rerun trains on the same set, and
one-line errors for bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.errors import ConfigError
from crowdloop.models.semi import spread_labels
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.crowd_helpers import run_engine

SEMI = {"semi_supervised.method": "label_spreading", "stopping.max_rounds": 3,
        "vendor.params": {"n_workers": 12, "accuracy": [0.9, 0.98], "spammer_fraction": 0.0}}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X, np.array([f"d{v}" for v in y], dtype=object)


def test_spread_labels_cover_only_unlabeled_rows_are_confident_and_mostly_right(digits):
    X, y = digits
    labeled = np.random.default_rng(0).choice(len(X), size=100, replace=False)
    found = spread_labels(X, labeled, y[labeled], rng=np.random.default_rng(1))
    assert len(found.index) > 500  # digits cluster well: most of the pool gets a label
    assert not np.isin(found.index, labeled).any() and len(np.unique(found.index)) == len(found.index)
    assert (found.confidence >= 0.9).all() and (found.confidence <= 1.0 + 1e-9).all()
    assert set(found.labels.tolist()) <= set(y[labeled].tolist())  # original label values, not codes
    assert np.mean(found.labels == y[found.index]) > 0.9
    stricter = spread_labels(X, labeled, y[labeled], rng=np.random.default_rng(1), min_confidence=0.99)
    assert set(stricter.index.tolist()) <= set(found.index.tolist()) and len(stricter.index) < len(found.index)


def test_a_bounded_graph_samples_the_pool_and_the_same_rng_gives_the_same_labels(digits):
    X, y = digits
    labeled = np.arange(0, 200)
    a = spread_labels(X, labeled, y[labeled], rng=np.random.default_rng(5), max_items=600)
    b = spread_labels(X, labeled, y[labeled], rng=np.random.default_rng(5), max_items=600)
    assert 0 < len(a.index) <= 400  # at most max_items minus the labeled rows
    assert np.array_equal(a.index, b.index) and np.array_equal(a.labels, b.labels)
    one_class = spread_labels(X, labeled[:5], np.array(["d0"] * 5, dtype=object), rng=np.random.default_rng(0))
    assert len(one_class.index) == 0  # nothing to spread from one class


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"n_neighbors": 0}, "semi_supervised.n_neighbors=0: expected a positive integer"),
    ({"alpha": 1.0}, "semi_supervised.alpha=1.0: expected a number in (0, 1)"),
    ({"min_confidence": 0}, "semi_supervised.min_confidence=0"),
    ({"max_items": 10}, "semi_supervised.max_items=10: expected an integer above the 20 human-labeled rows"),
])
def test_bad_parameters_are_one_line_errors(digits, kwargs, fragment):
    X, y = digits
    with pytest.raises(ConfigError) as err:
        spread_labels(X, np.arange(20), y[:20], rng=np.random.default_rng(0), **kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_config_rejects_an_unknown_method_in_one_line():
    with pytest.raises(ConfigError) as err:
        parse_config(small_config(**{"semi_supervised.method": "magic"}))
    assert "semi_supervised.method" in str(err.value)


def test_the_loop_trains_on_spread_labels_but_counts_only_human_ones(tmp_path):
    plain = run_engine(small_config(**{k: v for k, v in SEMI.items() if not k.startswith("semi")}), str(tmp_path / "plain"))
    p = run_engine(small_config(**SEMI), str(tmp_path / "semi"))
    assert [m["n_labeled"] for m in p.metrics()] == [m["n_labeled"] for m in plain.metrics()]
    test_ids = set(p.test.ids.tolist())
    trained = 0
    for r in p.rounds():
        info = read_json(p.store, keys.round_key(r, keys.TRAIN))
        if not info["trained"]:
            continue
        trained += 1
        human = {lab.item_id for lab in p.human_labels(before_round=r)}
        spread = p.round_labels(r, "spread_labels.jsonl")
        assert info["n_spread"] == len(spread) > 0
        assert info["spread_true_accuracy"] > 0.8
        for m in spread:
            assert m.source == "machine" and m.method == "label_spreading" and m.n_annotations == 0
            assert m.item_id not in human and m.item_id not in test_ids
        # the stored model is exactly the estimator fitted on human + spread labels
        rows = sorted(p.human_labels(before_round=r) + spread, key=lambda item: item.item_id)
        idx = np.array([p.index_of[item.item_id] for item in rows])
        ref = clone(p.model_template).fit(p.pool.X[idx], np.array([item.label for item in rows], dtype=object))
        assert np.allclose(ref.predict_proba(p.test.X), p.load_model(r).predict_proba(p.test.X))
        if r == 1:  # same human labels as the plain project in round 1, different model
            assert not np.allclose(plain.load_model(1).predict_proba(p.test.X), p.load_model(1).predict_proba(p.test.X))
    assert trained >= 2
    # a rerun of a finished step reads what was written: same spread labels, same train record
    again = engine.train(p, p.rounds()[-1])
    assert again == read_json(p.store, keys.round_key(p.rounds()[-1], keys.TRAIN))


def test_with_auto_labels_in_training_spread_labels_never_overwrite_them(tmp_path):
    both = {**SEMI, "autolabel.enabled": True, "autolabel.use_in_training": True, "autolabel.target_accuracy": 0.9,
            "autolabel.min_validation": 40, "stopping.max_rounds": 5}
    p = run_engine(small_config(**both), str(tmp_path / "both"))
    checked = 0
    for r in p.rounds():
        info = read_json(p.store, keys.round_key(r, keys.TRAIN))
        if not info["trained"]:
            continue
        auto = {lab.item_id for lab in p.machine_labels(before_round=r)}
        spread = {lab.item_id for lab in p.round_labels(r, "spread_labels.jsonl")}
        assert info["n_spread"] == len(spread) > 0
        assert not spread & auto  # an item the auto-labeler already labeled keeps that label
        checked += bool(auto)
    assert checked >= 1  # at least one round trained on both kinds
