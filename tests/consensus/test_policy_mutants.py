"""The crowd-quality policy's rules at their edges (issue 21: these kill the mutants of
``consensus/policy.py`` and ``consensus/adaptive.py`` that the end-to-end gold and re-ask tests let
through). Each expectation is the rule as the docstrings state it, on data small enough to work
out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from crowdloop.consensus.adaptive import (
    answered_by,
    combine_with_model,
    evidently_below,
    gold_stats,
    low_agreement_workers,
    needs_more,
    workers_to_block,
)
from crowdloop.consensus.policy import (
    agreement_block_reason,
    gold_block_reason,
    gold_rejections,
    plan_gold,
    reask_items,
)
from crowdloop.records import Annotation

GOLD = {"g1": "cat", "g2": "dog", "g3": "cat", "g4": "dog"}


def ann(worker: str, item: str, label: str, n: int = 0) -> Annotation:
    return Annotation(item_id=item, worker_id=worker, label=label, vendor="simulated", assignment_id=f"{worker}-{item}-{n}",
                      batch_id="b0", round=0, submitted_at=datetime(2026, 1, 1, tzinfo=UTC), duration_s=10.0,
                      reward=0.04, is_gold=item in GOLD)


def table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["worker", "task", "label"])[["task", "worker", "label"]]


# --- plan_gold ---------------------------------------------------------------------------------


def test_gold_is_the_share_of_the_whole_batch_exactly_when_it_divides():
    items = [f"g{i:02d}" for i in range(30)]
    for seed in range(50):
        rng = np.random.default_rng(seed)
        assert len(plan_gold(items, {}, n_tasks=8, share=0.2, rng=rng)) == 2  # 2 of 10 tasks
        assert len(plan_gold(items, {}, n_tasks=9, share=0.25, rng=rng)) == 3  # 3 of 12
        assert plan_gold(items, {}, n_tasks=0, share=0.25, rng=rng) == []


def test_gold_is_the_share_in_expectation_and_never_more_than_the_gold_set():
    items = [f"g{i:02d}" for i in range(30)]
    rng = np.random.default_rng(7)
    counts = [len(plan_gold(items, {}, n_tasks=10, share=0.2, rng=rng)) for _ in range(4000)]  # expected 2.5
    assert set(counts) == {2, 3}
    assert abs(np.mean(counts) - 2.5) < 0.06  # 4000 fair coin flips: sd 0.008
    assert len(plan_gold(items[:3], {}, n_tasks=100, share=0.5, rng=rng)) == 3


def test_gold_goes_to_the_least_answered_items_first_random_among_equals():
    answered = {"g1": ["w1", "w2"], "g2": [], "g3": ["w3"], "g4": ["w1", "w2", "w3"]}
    seen: set[str] = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        one = plan_gold(list(answered), answered, n_tasks=1, share=0.5, rng=rng)
        assert one == [{"item_id": "g2", "exclude_workers": []}]
        two = plan_gold(list(answered), answered, n_tasks=2, share=0.5, rng=rng)
        assert two == [{"item_id": "g2", "exclude_workers": []}, {"item_id": "g3", "exclude_workers": ["w3"]}]
        tie = plan_gold(["g1", "g2", "g3", "g4"], {}, n_tasks=1, share=0.5, rng=rng)
        seen.add(tie[0]["item_id"])
    assert seen == {"g1", "g2", "g3", "g4"}  # equals are drawn at random, not by name


def test_gold_tasks_are_sorted_and_name_who_answered_them():
    answered = {"g3": ["w2", "w1"], "g1": ["w5"]}
    plan = plan_gold(["g3", "g1", "g2"], answered, n_tasks=3, share=0.5, rng=np.random.default_rng(0))
    assert plan == [{"item_id": "g1", "exclude_workers": ["w5"]}, {"item_id": "g2", "exclude_workers": []},
                    {"item_id": "g3", "exclude_workers": ["w2", "w1"]}]


# --- re-asks ---------------------------------------------------------------------------------


def test_reask_only_below_the_threshold_and_below_the_most_judgments():
    ids = ["a", "b", "c", "d", "e"]
    conf = np.array([0.5, 0.7, 0.69, 0.2, 0.9])
    n = np.array([2, 2, 3, 4, 1])
    assert reask_items(ids, conf, n, threshold=0.7, max_judgments=4, n_classes=3) == ["a", "c"]
    assert needs_more(conf, n, threshold=0.7, max_judgments=4).tolist() == [True, False, True, False, False]


def test_reask_refuses_ids_and_confidences_of_different_lengths():
    with pytest.raises(ValueError, match="zip"):
        reask_items(["a", "b"], np.array([0.1, 0.2, 0.3]), np.array([1, 1, 1]), threshold=0.7, max_judgments=4, n_classes=3)


def test_the_model_only_enters_with_a_weight_and_its_probabilities():
    ids = ["a", "b"]
    conf = np.array([0.6, 0.6])
    n = np.array([2, 2])
    model = np.array([0.95, 0.05])
    # crowd alone: both unsure
    assert reask_items(ids, conf, n, threshold=0.7, max_judgments=4, n_classes=3) == ["a", "b"]
    assert reask_items(ids, conf, n, threshold=0.7, max_judgments=4, n_classes=3, model_proba_of_label=model) == ["a", "b"]
    assert reask_items(ids, conf, n, threshold=0.7, max_judgments=4, n_classes=3, model_weight=1.0) == ["a", "b"]
    # the model agreeing with "a" settles it; disagreeing with "b" keeps it open
    assert reask_items(ids, conf, n, threshold=0.7, max_judgments=4, n_classes=3, model_weight=1.0,
                       model_proba_of_label=model) == ["b"]


def test_combine_with_model_is_the_product_of_experts():
    c, m = 0.6, 0.9
    for k, weight in ((3, 1.0), (2, 1.0), (4, 0.5)):
        mine = c * m**weight
        others = (1 - c) * ((1 - m) / (k - 1)) ** weight
        got = combine_with_model(np.array([c]), np.array([m]), n_classes=k, weight=weight)
        assert got[0] == pytest.approx(mine / (mine + others), rel=1e-12)
    # weight 0: the crowd's confidence, unchanged (not clipped)
    assert combine_with_model(np.array([1.0, 0.0]), np.array([0.2, 0.9]), n_classes=3, weight=0).tolist() == [1.0, 0.0]
    # one class: nothing to spread over, as with two
    one = combine_with_model(np.array([c]), np.array([m]), n_classes=1, weight=1.0)
    two = combine_with_model(np.array([c]), np.array([m]), n_classes=2, weight=1.0)
    assert one[0] == pytest.approx(two[0], rel=1e-12)
    # a model certain of the label, or certain against it, stays finite and ordered
    sure = combine_with_model(np.array([0.5, 0.5]), np.array([1.0, 0.0]), n_classes=3, weight=1.0)
    assert np.isfinite(sure).all() and sure[0] > 0.999 and sure[1] < 0.001
    assert sure[0] == pytest.approx(0.5 / (0.5 + 0.5 * 1e-6 / 2), rel=1e-9)
    assert sure[1] == pytest.approx(0.5e-6 / (0.5e-6 + 0.5 * (1 - 1e-6) / 2), rel=1e-9)
    # a crowd that gave its label no chance is still moved by a certain model: clipped, not absorbing
    crowd_nil = combine_with_model(np.array([0.0]), np.array([1.0]), n_classes=3, weight=1.0)
    assert crowd_nil[0] == pytest.approx(1e-6 / (1e-6 + (1 - 1e-6) * 1e-6 / 2), rel=1e-9)  # about 2/3
    crowd_sure = combine_with_model(np.array([1.0]), np.array([0.5]), n_classes=2, weight=1.0)
    assert crowd_sure[0] == pytest.approx((1 - 1e-6) * 0.5 / ((1 - 1e-6) * 0.5 + 1e-6 * 0.5), rel=1e-9)


# --- who answered, gold statistics, blocking ---------------------------------------------------


def test_answered_by_lists_each_item_s_workers_once_sorted_and_only_the_asked_items():
    t = table([("w2", "a", "x"), ("w1", "a", "y"), ("w2", "a", "x"), ("w3", "b", "x"), ("w4", "c", "x")])
    assert answered_by(t, ["a", "b", "z"]) == {"a": ["w1", "w2"], "b": ["w3"], "z": []}


def test_gold_stats_counts_gold_answers_only():
    t = table([("w1", "g1", "cat"), ("w1", "g2", "cat"), ("w1", "x9", "cat"), ("w2", "g2", "dog"),
               ("w2", "g1", "cat"), ("w1", "g4", "cat")])
    stats = gold_stats(t, GOLD)
    assert sorted(stats.index) == ["w1", "w2"]
    assert stats.loc["w1", "n_gold"] == 3 and stats.loc["w1", "n_correct"] == 1
    assert stats["n_gold"].dtype.kind == "i" and stats["n_correct"].dtype.kind == "i"  # counts, told as "1 of 3"
    assert stats.loc["w1", "accuracy"] == pytest.approx(1 / 3)
    assert stats.loc["w1", "missed"] == ["g2", "g4"]
    assert stats.loc["w2", "n_gold"] == 2 and stats.loc["w2", "n_correct"] == 2 and stats.loc["w2", "accuracy"] == 1.0
    assert stats.loc["w2", "missed"] == []
    empty = gold_stats(table([("w1", "x9", "cat")]), GOLD)
    assert empty.empty and list(empty.columns) == ["n_gold", "n_correct", "accuracy", "missed"]
    assert empty.index.name == "worker"


def stats_of(rows: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """``gold_stats``-shaped rows from (gold answers, right ones) per worker."""
    n_gold = [n for n, _ in rows.values()]
    n_correct = [c for _, c in rows.values()]
    return pd.DataFrame({"n_gold": n_gold, "n_correct": n_correct, "accuracy": np.divide(n_correct, n_gold)},
                        index=pd.Index(list(rows), name="worker"))


def test_evidence_of_low_gold_accuracy_is_a_one_sided_binomial_test_at_five_percent():
    # the docstring's figures: a spammer against a bar of 0.4 is caught after 6 gold answers all
    # wrong (0.6**6 = 0.047) or 10 with one right (0.046); 5 wrong (0.078) or 1 of 9 (0.071) are not enough
    assert evidently_below(0, 6, 0.4) and evidently_below(1, 10, 0.4)
    assert not evidently_below(0, 5, 0.4) and not evidently_below(1, 9, 0.4)
    assert evidently_below(1, 9, 0.4, level=0.1)  # the level is the bound on an honest worker's bad luck
    assert not evidently_below(0, 6, 0.4, level=0.04)
    assert not evidently_below(0, 2, 0.5, level=0.25)  # P = 0.25 exactly: "under the level" is strict
    assert evidently_below(0, 2, 0.5, level=0.2500001)
    assert evidently_below(np.array([0, 0, 3]), np.array([6, 5, 3]), 0.4).tolist() == [True, False, False]


def test_workers_are_blocked_with_enough_gold_answers_that_are_evidence_of_low_accuracy():
    stats = stats_of({"a": (5, 0), "b": (4, 0), "c": (10, 5), "d": (20, 4), "e": (3, 0)})
    # a: 5 answers (= min_answers), all wrong: P = 1/32; b, e: too few answers; c: 5 of 10 is no
    # evidence against 0.5; d: 4 of 20 is (P = 0.006)
    assert workers_to_block(stats, min_answers=5, min_accuracy=0.5) == ["a", "d"]
    assert workers_to_block(stats, min_answers=3, min_accuracy=0.5) == ["a", "d"]  # b: 1/16, e: 1/8: not evidence
    assert workers_to_block(stats.iloc[:0], min_answers=1, min_accuracy=0.5) == []


def test_low_agreement_counts_only_items_several_people_labeled():
    t = table([("w1", "a", "x"), ("w2", "a", "y"), ("w1", "b", "x"), ("w2", "b", "y"), ("w3", "b", "x"),
               ("w2", "c", "y"), ("w1", "d", "z")])
    probas = pd.DataFrame({"x": [0.9, 0.8, 0.0, 0.5], "y": [0.1, 0.2, 1.0, 0.5]}, index=["a", "b", "c", "d"])
    # w2 agrees 0.1 on a, 0.2 on b (c was theirs alone): mean 0.15; w1: 0.9, 0.8; w3 one answer
    assert low_agreement_workers(t, probas, min_judgments=2, min_agreement=0.5) == {"w2": 0.15}
    assert low_agreement_workers(t, probas, min_judgments=1, min_agreement=0.86) == {"w1": 0.85, "w2": 0.15, "w3": 0.8}
    assert low_agreement_workers(t, probas, min_judgments=3, min_agreement=0.5) == {}
    half = pd.DataFrame({"x": [0.5], "y": [0.5]}, index=["a"])
    assert low_agreement_workers(table([("w1", "a", "x"), ("w2", "a", "y")]), half, min_judgments=1,
                                 min_agreement=0.5) == {}  # at the bar: not below
    # a label the aggregator never saw agrees with nothing
    odd = table([("w1", "a", "x"), ("w2", "a", "q")])
    assert low_agreement_workers(odd, probas, min_judgments=1, min_agreement=0.5) == {"w2": 0.0}
    assert low_agreement_workers(t.iloc[:0], probas, min_judgments=1, min_agreement=0.5) == {}
    assert low_agreement_workers(t, probas.iloc[:0], min_judgments=1, min_agreement=0.5) == {}
    assert low_agreement_workers(table([("w1", "a", "x"), ("w2", "b", "y")]), probas, min_judgments=1,
                                 min_agreement=0.99) == {}
    assert low_agreement_workers(table([("w1", "a", "x"), ("w2", "a", "y")]), probas, min_judgments=1,
                                 min_agreement=1 / 3) == {"w2": 0.1}
    third = pd.DataFrame({"x": [1 / 3], "y": [2 / 3]}, index=["a"])
    assert low_agreement_workers(table([("w1", "a", "x"), ("w2", "a", "y")]), third, min_judgments=1,
                                 min_agreement=0.5) == {"w1": 0.3333}


# --- rejections ----------------------------------------------------------------------------------


def test_a_rejection_needs_enough_gold_evidence_of_low_accuracy_and_a_miss_in_this_batch():
    batch = [ann("bad", "g1", "dog"), ann("bad", "x1", "cat"), ann("bad", "g2", "dog"), ann("edge", "g1", "dog"),
             ann("few", "g1", "dog"), ann("ok", "g1", "dog"), ann("clean", "g1", "cat"), ann("new", "g1", "dog")]
    stats = stats_of({"bad": (10, 5), "edge": (5, 2), "few": (4, 0), "ok": (10, 8), "clean": (10, 1)})
    out = gold_rejections(batch, stats, GOLD, reject_below=0.9, min_answers=5)
    # bad: 5 of 10 against 0.9 (P = 0.002); edge: 2 of 5 (P = 0.009) with exactly min_answers; few: 4 < 5
    # answers; ok: 8 of 10 is no evidence (P = 0.26); clean: missed nothing in this batch; new: no gold record
    assert [r["worker_id"] for r in out] == ["bad", "edge"]
    bad = out[0]
    assert bad["assignment_ids"] == ["bad-g1-0", "bad-g2-0", "bad-x1-0"]  # all their work in the batch
    assert bad["missed_gold"] == ["g1"]  # g2 was right, x1 is no gold
    assert bad["reason"] == (
        "Rejected because known-answer (gold) questions in this batch were answered wrongly: "
        "item g1: you answered 'dog', the known answer is 'cat'. "
        "Your accuracy on known-answer questions is 50% over 10, below the required 90%.")


def test_rejections_come_sorted_by_worker_and_name_every_missed_item():
    batch = [ann("zed", "g3", "dog"), ann("amy", "g4", "cat"), ann("amy", "g1", "dog")]
    stats = stats_of({"zed": (5, 0), "amy": (10, 1)})
    out = gold_rejections(batch, stats, GOLD, reject_below=0.5, min_answers=5)
    assert [r["worker_id"] for r in out] == ["amy", "zed"]
    assert out[0]["missed_gold"] == ["g1", "g4"]
    assert "item g4: you answered 'cat', the known answer is 'dog'; item g1: you answered 'dog', the known answer is 'cat'" \
        in out[0]["reason"]
    assert "is 10% over 10, below the required 50%" in out[0]["reason"]
    assert gold_rejections(batch, stats, GOLD, reject_below=0.5, min_answers=11) == []
    # workers passed over (no gold record yet; nothing missed) do not end the search for later ones
    early = [ann("aaron", "g1", "dog"), ann("abe", "g1", "cat"), *batch]
    more = stats_of({"zed": (5, 0), "amy": (10, 1), "abe": (9, 1)})
    assert [r["worker_id"] for r in gold_rejections(early, more, GOLD, reject_below=0.5, min_answers=5)] == ["amy", "zed"]


def test_block_reasons_state_the_evidence_and_the_bar():
    assert gold_block_reason(0.4, n_gold=6, n_correct=1) == (
        "You answered 1 of 6 known-answer questions correctly (17%). Your accuracy on known-answer questions was "
        "below 40%, so you will get no further tasks from this project; you were paid for all approved work.")
    assert gold_block_reason(0.4, n_gold=5).startswith("You answered 0 of 5 known-answer questions correctly (0%). ")
    assert gold_block_reason(0.4) == gold_block_reason(0.4, n_gold=0, n_correct=0) == (
        "Your accuracy on known-answer questions was below 40%, so you will get no further tasks from this project; "
        "you were paid for all approved work.")
    assert agreement_block_reason(0.5, agreement=0.25) == (
        "Your answers agreed with the other workers' consensus on fewer than 50% of the items several people labeled "
        "(yours: 25%), so you will get no further tasks from this project; you were paid for all approved work.")
    assert agreement_block_reason(0.5) == (
        "Your answers agreed with the other workers' consensus on fewer than 50% of the items several people labeled, "
        "so you will get no further tasks from this project; you were paid for all approved work.")
