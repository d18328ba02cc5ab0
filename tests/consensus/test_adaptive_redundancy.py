"""Adaptive redundancy: the policy functions and the engine rounds that use them."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest

from crowdloop.config import parse_config
from crowdloop.consensus.adaptive import answered_by, combine_with_model, needs_more
from crowdloop.errors import ConfigError
from tests.conftest import small_config
from tests.crowd_helpers import intents, run_engine

ADAPTIVE = {"consensus.method": "auto", "consensus.confidence_threshold": 0.9, "consensus.min_judgments": 1,
            "consensus.max_judgments": 4, "consensus.model_weight": 1.0, "stopping.max_rounds": 5,
            "stopping.label_budget": 70}


def test_needs_more_respects_threshold_and_maximum():
    mask = needs_more(np.array([0.5, 0.95, 0.5, 0.89]), np.array([1, 1, 4, 3]), threshold=0.9, max_judgments=4)
    assert mask.tolist() == [True, False, False, True]


def test_model_agreement_raises_confidence_and_disagreement_lowers_it():
    crowd = np.array([0.6, 0.6])
    mixed = combine_with_model(crowd, np.array([0.9, 0.02]), n_classes=10, weight=1.0)
    assert mixed[0] > 0.6 > mixed[1]
    np.testing.assert_allclose(combine_with_model(crowd, np.array([0.9, 0.02]), n_classes=10, weight=0.0), crowd)


def test_answered_by_lists_each_items_workers():
    table = pd.DataFrame({"task": ["a", "a", "b"], "worker": ["w2", "w1", "w1"], "label": ["x", "y", "x"]})
    assert answered_by(table, ["a", "b", "c"]) == {"a": ["w1", "w2"], "b": ["w1"], "c": []}


def test_min_larger_than_max_is_a_one_line_config_error():
    cfg = small_config(**{"consensus.confidence_threshold": 0.9, "consensus.min_judgments": 4, "consensus.max_judgments": 2})
    with pytest.raises(ConfigError, match="min_judgments=4 is larger than max_judgments=2"):
        parse_config(cfg)


@pytest.fixture(scope="module")
def adaptive_project(tmp_path_factory):
    return run_engine(small_config(**ADAPTIVE), str(tmp_path_factory.mktemp("adaptive") / "p"))


def test_new_items_start_with_min_and_reasks_ask_one_new_worker(adaptive_project):
    p = adaptive_project
    first_seen: dict[str, int] = {}
    n_reasks = 0
    for intent in intents(p):
        for t in intent["tasks"]:
            if t["item_id"] not in first_seen:
                first_seen[t["item_id"]] = t["round"]
                assert t["replicas"] == 1 and not t["exclude_workers"]
            else:
                n_reasks += 1
                assert t["replicas"] == 1 and t["exclude_workers"]
    assert n_reasks > 0
    per_item = collections.defaultdict(list)
    for a in p.annotations():
        per_item[a.item_id].append(a.worker_id)
    for item, workers in per_item.items():
        assert len(workers) == len(set(workers)), f"item {item} asked the same worker twice"
        assert len(workers) <= 4


def test_adaptive_spends_fewer_judgments_than_fixed_redundancy(adaptive_project, tmp_path):
    fixed = run_engine(small_config(**{k: v for k, v in ADAPTIVE.items() if not k.startswith("consensus.")},
                                    **{"consensus.redundancy": 4}), str(tmp_path / "fixed"))
    items = lambda p: len(p.human_labels(before_round=p.rounds()[-1] + 1))  # noqa: E731
    assert items(adaptive_project) == items(fixed) == 70
    assert len(adaptive_project.annotations()) < 0.7 * len(fixed.annotations())


def test_selection_and_reasks_are_reproducible_from_seed_and_store(adaptive_project, tmp_path):
    twin = run_engine(small_config(**ADAPTIVE), str(tmp_path / "twin"))
    assert intents(twin) == intents(adaptive_project)
