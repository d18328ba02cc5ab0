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
    # a rerun after a crash between the spread labels and the train record (both the record and the
    # model file gone) trains again on the same set: the same record and the same model, recomputed
    last = p.rounds()[-2]  # a round whose own labels arrived after its training: they must not train it
    assert len(p.human_labels(before_round=last + 1)) > len(p.human_labels(before_round=last))
    stored = read_json(p.store, keys.round_key(last, keys.TRAIN))
    probe = p.load_model(last).predict_proba(p.test.X)
    for name in (keys.TRAIN, keys.MODEL):
        p.store.delete(keys.round_key(last, name))
    p.forget_model(last)
    again = engine.train(p, last)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in stored.items() if k != "seconds"}
    assert np.array_equal(p.load_model(last).predict_proba(p.test.X), probe)


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


AUTO = {**SEMI, "semi_supervised.method": "auto", "stopping.max_rounds": 4,
        "vendor.params": {"n_workers": 12, "accuracy": [0.9, 0.98], "spammer_fraction": 0.0}}


def test_auto_spreads_only_where_the_random_audit_says_it_helps_and_records_why(tmp_path):
    from crowdloop.engine.selection import arm_history
    from crowdloop.engine.training import spreading_check

    p = run_engine(small_config(**AUTO, **{"sampler.name": "auto", "sampler.params": {"min_items": 4}}), str(tmp_path / "auto"))
    used = []
    for r in p.rounds():
        info = read_json(p.store, keys.round_key(r, keys.TRAIN))
        if not info["trained"]:
            continue
        human = p.human_labels(before_round=r)
        evidence = info["spreading"]
        arms = arm_history(p, r, sorted(label.item_id for label in human))
        assert evidence["n_audit"] == arms.count("random") >= 30  # the random cold start, then the random arm's picks
        assert evidence["wins"] + evidence["losses"] <= evidence["n_audit"]
        assert evidence["used"] == (evidence["wins"] > evidence["losses"])  # a tie keeps spreading off
        assert (evidence["used"], {k: v for k, v in evidence.items() if k != "used"}) == spreading_check(p, r, human)
        spread = p.round_labels(r, keys.SPREAD_LABELS)
        rows = sorted(human + (spread or []), key=lambda label: label.item_id)
        if evidence["used"]:
            assert info["n_spread"] == len(spread) > 0
        else:  # off: no machine labels; the model is the one fitted on human labels alone
            assert spread is None and "n_spread" not in info
        idx = np.array([p.index_of[label.item_id] for label in rows])
        ref = clone(p.model_template).fit(p.pool.X[idx], np.array([label.label for label in rows], dtype=object))
        assert np.allclose(ref.predict_proba(p.test.X), p.load_model(r).predict_proba(p.test.X))
        used.append(evidence["used"])
    assert len(used) >= 3 and any(used)  # digits cluster: spreading wins on the audit at least once
    again = engine.train(p, p.rounds()[-1])
    assert again == read_json(p.store, keys.round_key(p.rounds()[-1], keys.TRAIN))


def test_auto_without_a_random_audit_keeps_spreading_off(tmp_path):
    """A k-means cold start and margin sampling leave no uniformly drawn labels to judge on."""
    p = run_engine(small_config(**{**AUTO, "sampler.cold_start": "kmeans", "stopping.max_rounds": 2}), str(tmp_path / "p"))
    infos = [read_json(p.store, keys.round_key(r, keys.TRAIN)) for r in p.rounds()]
    trained = [i for i in infos if i["trained"]]
    assert trained and all(i["spreading"] == {"used": False, "n_audit": 0, "without": None, "with": None} for i in trained)
    assert all(p.round_labels(r, keys.SPREAD_LABELS) is None for r in p.rounds())
