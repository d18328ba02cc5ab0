"""The store side of the crowd-quality policy (``crowdloop/engine/quality.py``), rule by rule
(issue 21: these kill its mutants that the end-to-end gold, re-ask and ring tests let through).

The aggregation summaries the blocking rules read are written into a real store by hand (they
are the step's interface); gold plans, out-of-fold probabilities and rejections come from real
rounds of a simulated crowd."""

from __future__ import annotations

import numpy as np
import pytest

from crowdloop import keys
from crowdloop.config import parse_config
from crowdloop.consensus.adaptive import answered_by, evidently_below
from crowdloop.consensus.collusion import Ring, ring_reason
from crowdloop.consensus.policy import agreement_block_reason, gold_block_reason
from crowdloop.engine import Project
from crowdloop.engine.quality import (
    annotation_table,
    block_decisions,
    blocked_workers,
    gold_plan,
    gold_rejections,
    last_aggregate,
    oof_proba,
    rings_found,
)
from crowdloop.storage import write_json
from tests.conftest import small_config
from tests.crowd_helpers import run_engine

RING = {"workers": ["r1", "r2"], "n_shared": 20, "n_agreed": 19, "expected": 8.4}


def summaries(p: Project, by_round: dict[int, dict]) -> None:
    for q, summary in by_round.items():
        write_json(p.store, keys.round_key(q, keys.AGGREGATE), summary)


def fresh(tmp_path, name: str = "p", **overrides) -> Project:
    return Project.prepare(parse_config(small_config(**overrides)), str(tmp_path / name))


def test_the_last_aggregation_before_a_round_is_the_one_that_counts(tmp_path):
    p = fresh(tmp_path)
    first = {"blocked_workers": ["w9", "w2"], "blocked_on_agreement": {"w5": 0.2, "w1": 0.3}, "rings": [RING]}
    summaries(p, {0: first, 2: {"blocked_workers": ["w7"]}})
    assert last_aggregate(p, 0) == {}
    assert last_aggregate(p, 1) == last_aggregate(p, 2) == first
    assert last_aggregate(p, 3) == {"blocked_workers": ["w7"]}
    assert blocked_workers(p, 0) == []
    assert blocked_workers(p, 1) == ["w2", "w9"]
    assert blocked_workers(p, 1, on="blocked_on_agreement") == ["w1", "w5"]
    assert blocked_workers(p, 3) == ["w7"] and blocked_workers(p, 3, on="blocked_on_agreement") == []
    assert rings_found(p, 1) == [RING] and rings_found(p, 3) == [] and rings_found(p, 0) == []


def test_block_decisions_give_each_worker_the_evidence_of_their_rule(tmp_path):
    p = fresh(tmp_path, **{"gold.share": 0.2, "consensus.block_below_agreement": 0.5, "consensus.block_rings": True,
                           "gold.min_accuracy": 0.4})
    summaries(p, {0: {"blocked_workers": ["g1", "both"], "gold": {"g1": {"n_gold": 6, "n_correct": 1}},
                      "blocked_on_agreement": {"both": 0.25, "a1": 0.3}, "rings": [RING]}})
    decided = block_decisions(p, 1)
    assert decided == {
        "g1": gold_block_reason(0.4, n_gold=6, n_correct=1),
        "both": gold_block_reason(0.4),  # gold evidence comes first; no stats: the bare rule
        "a1": agreement_block_reason(0.5, agreement=0.3),
        "r1": ring_reason(Ring.from_record(RING)),
        "r2": ring_reason(Ring.from_record(RING)),
    }
    assert decided["g1"].startswith("You answered 1 of 6 known-answer questions correctly (17%). ")
    assert block_decisions(p, 0) == {}


def test_each_blocking_rule_only_acts_when_configured(tmp_path):
    summary = {"blocked_workers": ["g1"], "blocked_on_agreement": {"a1": 0.3}, "rings": [RING]}
    plain = fresh(tmp_path, "plain")
    summaries(plain, {0: summary})
    assert block_decisions(plain, 1) == {}
    gold = fresh(tmp_path, "gold", **{"gold.share": 0.2})
    summaries(gold, {0: summary})
    assert set(block_decisions(gold, 1)) == {"g1"}
    agree = fresh(tmp_path, "agree", **{"consensus.block_below_agreement": 0.5})
    summaries(agree, {0: summary})
    assert block_decisions(agree, 1) == {"a1": agreement_block_reason(0.5, agreement=0.3)}
    rings = fresh(tmp_path, "rings", **{"consensus.block_rings": True})
    summaries(rings, {0: summary})
    assert set(block_decisions(rings, 1)) == {"r1", "r2"}


@pytest.fixture(scope="module")
def gold_rounds(tmp_path_factory) -> Project:
    cfg = small_config(**{"gold.share": 0.3, "gold.n_items": 6, "gold.reject_below": 0.99, "gold.min_answers": 1,
                          "gold.min_accuracy": 0.0, "stopping.max_rounds": 2, "sampler.initial_size": 20,
                          "sampler.batch_size": 20, "consensus.redundancy": 3,
                          "vendor.params": {"n_workers": 12, "accuracy": [0.5, 0.7], "spammer_fraction": 0.0}})
    return run_engine(cfg, str(tmp_path_factory.mktemp("gold") / "p"))


def test_gold_tasks_exclude_the_workers_who_answered_them_in_earlier_rounds_only(gold_rounds):
    p = gold_rounds
    gold = sorted(p.gold_set)
    for r in (1, 2):
        earlier = [a for a in p.annotations() if a.round < r and a.item_id in p.gold_set]
        answered = answered_by(annotation_table(earlier), gold)
        plan = gold_plan(p, r, 20)
        assert plan and all(t["item_id"] in p.gold_set for t in plan)
        for task in plan:
            assert task["exclude_workers"] == answered[task["item_id"]]
    round0 = {a.worker_id for a in p.annotations() if a.round == 0 and a.item_id in p.gold_set}
    assert round0 and gold_plan(p, 0, 20) and all(t["exclude_workers"] == [] for t in gold_plan(p, 0, 20))


def test_gold_is_not_planned_where_the_vendor_s_limit_per_item_would_be_passed(gold_rounds):
    p = Project(gold_rounds.store, gold_rounds.config)
    answered = answered_by(annotation_table([a for a in p.annotations() if a.round < 2 and a.item_id in p.gold_set]),
                           sorted(p.gold_set))
    most = max(len(w) for w in answered.values())
    assert most >= 1
    p.vendor.max_judgments_per_item = most + 3  # a vendor like MTurk: never more answers per item than this
    allowed = {i for i, w in answered.items() if len(w) + 3 <= most + 3}
    planned = {t["item_id"] for t in gold_plan(p, 2, 200)}
    assert planned == allowed  # the most-answered item fits exactly (limit reached, not passed)
    p.vendor.max_judgments_per_item = most + 2
    assert {t["item_id"] for t in gold_plan(p, 2, 200)} == {i for i, w in answered.items() if len(w) + 3 <= most + 2}


def test_gold_is_planned_only_while_enough_fresh_unblocked_workers_are_left(gold_rounds, monkeypatch):
    """A vendor of known ``workforce`` (the simulated crowd, the local app's annotators): an item
    is planned only if the workers who have neither answered it nor been blocked can give a task's 3 judgments."""
    from crowdloop.engine import quality

    p = Project(gold_rounds.store, gold_rounds.config)
    answered = answered_by(annotation_table([a for a in p.annotations() if a.round < 2 and a.item_id in p.gold_set]),
                           sorted(p.gold_set))
    most = max(len(w) for w in answered.values())
    p.vendor.workforce = most + 3
    assert {t["item_id"] for t in gold_plan(p, 2, 200)} == set(answered)  # the most-answered item has 3 left: enough
    p.vendor.workforce = most + 2
    assert {t["item_id"] for t in gold_plan(p, 2, 200)} == {i for i, w in answered.items() if len(w) < most}
    p.vendor.workforce = most + 3
    outsider = "nobody-answered-gold"  # blocked, and never answered a gold item: one fresh worker fewer for each
    monkeypatch.setattr(quality, "block_decisions", lambda project, r: {outsider: "blocked"})
    assert {t["item_id"] for t in gold_plan(p, 2, 200)} == {i for i, w in answered.items() if len(w) < most}
    insider = answered[max(answered, key=lambda i: len(answered[i]))][0]  # blocked, but answered the fullest item
    monkeypatch.setattr(quality, "block_decisions", lambda project, r: {insider: "blocked"})
    assert {t["item_id"] for t in gold_plan(p, 2, 200)} >= {i for i, w in answered.items() if len(w) == most
                                                              and insider in w}


def test_rejections_count_the_current_batch_s_gold_answers(gold_rounds):
    p = gold_rounds
    batch = [a for a in p.annotations() if a.round == 1]
    out = gold_rejections(p, 1, batch)
    missed = {a.worker_id for a in batch if a.item_id in p.gold_set and a.label != p.gold_set[a.item_id]}
    gold_answers = [a for a in p.annotations() if a.round <= 1 and a.item_id in p.gold_set]  # this batch's too
    expected = set()
    for worker in missed:
        mine = [a for a in gold_answers if a.worker_id == worker]
        if evidently_below(sum(a.label == p.gold_set[a.item_id] for a in mine), len(mine), 0.99):
            expected.add(worker)
    assert expected and {r["worker_id"] for r in out} == expected
    for r in out:
        n_gold = sum(1 for a in gold_answers if a.worker_id == r["worker_id"])
        assert f"over {n_gold}, below the required 99%" in r["reason"]
    no_rule = Project(p.store, p.config.model_copy(update={"gold": p.config.gold.model_copy(update={"reject_below": None})}))
    assert gold_rejections(no_rule, 1, batch) == []


def test_out_of_fold_probabilities_need_two_classes_and_two_folds_and_are_computed_once(tmp_path):
    p = run_engine(small_config(**{"pool.name": "breast_cancer", "stopping.max_rounds": 1, "sampler.initial_size": 30,
                                   "autolabel.folds": 2}), str(tmp_path / "p"))
    assert oof_proba(p, 0) is None  # no labels yet
    ids, proba, classes = oof_proba(p, 1)
    labels = sorted(p.human_labels(before_round=1), key=lambda label: label.item_id)
    assert ids == [label.item_id for label in labels] and len(classes) == 2
    assert proba.shape == (len(ids), 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert oof_proba(p, 1)[1] is proba  # cached per round
    one_class = Project(p.store, p.config)
    single = [lab.model_copy(update={"label": classes[0]}) for lab in labels]  # the same items, all one class
    one_class.human_labels = lambda before_round: single
    assert oof_proba(one_class, 1) is None  # one class: nothing to tell apart
