"""The store side of the re-ask policy (``crowdloop/engine/quality.py``'s ``reask_plan``) on tiny
hand-written stores, with exact outcomes (issue 21: these decide its mutants in seconds, where
the end-to-end adaptive-redundancy tests take minutes).

The aggregated labels and the label log are written into a real store by hand, in the records
the aggregation and collection steps write (they are those steps' interface)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from crowdloop import keys
from crowdloop.config import parse_config
from crowdloop.consensus.adaptive import combine_with_model
from crowdloop.engine import Project
from crowdloop.engine.quality import annotation_table, gold_rejections, oof_proba, reask_plan
from crowdloop.records import AggregatedLabel, Annotation
from tests.conftest import small_config

ADAPTIVE = {"consensus.confidence_threshold": 0.8, "consensus.min_judgments": 1, "consensus.max_judgments": 3}


def fresh(tmp_path, name: str = "p", **overrides) -> Project:
    return Project.prepare(parse_config(small_config(**{**ADAPTIVE, **overrides})), str(tmp_path / name))


def write_labels(p: Project, r: int, rows: list[tuple[str, str, float, int]]) -> None:
    """Round ``r``'s aggregated human labels: (item, label, confidence, judgments)."""
    labels = [AggregatedLabel(item_id=i, label=lab, confidence=c, n_annotations=n, method="test", round=r)
              for i, lab, c, n in rows]
    p.store.write_bytes(keys.round_key(r, keys.LABELS), "".join(x.model_dump_json() + "\n" for x in labels).encode())


def write_answers(p: Project, r: int, rows: list[tuple[str, str, str]]) -> None:
    """A label-log segment collected in round ``r``: (item, worker, label)."""
    anns = [Annotation(item_id=i, worker_id=w, label=lab, vendor="simulated", assignment_id=f"a{r}-{k}",
                       batch_id=f"b{r}", round=r, submitted_at=datetime(2026, 1, 1, tzinfo=UTC), duration_s=1.0,
                       reward=0.01) for k, (i, w, lab) in enumerate(rows)]
    p.store.write_bytes(keys.segment_key(r, f"hand{r}"), "".join(a.model_dump_json() + "\n" for a in anns).encode())


def test_annotation_table_keeps_each_answer_s_task_worker_and_label_in_order(tmp_path):
    p = fresh(tmp_path)
    write_answers(p, 0, [("x", "w1", "3"), ("y", "w2", "4"), ("x", "w3", "5")])
    table = annotation_table(p.annotations())
    assert list(table.columns) == ["task", "worker", "label"]
    assert table.to_dict("records") == [{"task": "x", "worker": "w1", "label": "3"},
                                        {"task": "x", "worker": "w3", "label": "5"},
                                        {"task": "y", "worker": "w2", "label": "4"}]


@pytest.fixture
def crowd_only(tmp_path) -> Project:
    """Labels after round 0; answers in rounds 0 and 1 (the round-1 answers came after those labels)."""
    p = fresh(tmp_path)
    write_labels(p, 0, [
        ("a", "1", 0.50, 1),   # unsure, one judgment: re-asked
        ("b", "2", 0.90, 1),   # sure: not re-asked
        ("c", "3", 0.50, 3),   # unsure but at max_judgments (3): not re-asked
        ("d", "4", 0.79, 2),   # just below the threshold, below the maximum: re-asked
        ("e", "5", 0.80, 2),   # exactly at the threshold: sure enough
        ("f", "6", 0.30, 2),   # unsure, one below the maximum: re-asked
    ])
    write_answers(p, 0, [("a", "w2", "1"), ("c", "w1", "3"), ("c", "w2", "3"), ("c", "w3", "0"),
                         ("d", "w4", "4"), ("d", "w1", "4"), ("f", "w5", "6"), ("f", "w5", "7")])
    write_answers(p, 1, [("a", "w9", "1"), ("d", "w8", "4")])
    return p


def test_reask_plan_picks_unsure_items_below_the_maximum_and_avoids_who_answered_before_the_round(crowd_only):
    p = crowd_only
    assert reask_plan(p, 0) == []  # no labels before round 0
    assert reask_plan(p, 1) == [
        {"item_id": "a", "exclude_workers": ["w2"]},
        {"item_id": "d", "exclude_workers": ["w1", "w4"]},
        {"item_id": "f", "exclude_workers": ["w5"]},  # a worker who answered twice is named once
    ]
    # round 2 sees the same labels (round 1 wrote none) but also round 1's answers
    assert reask_plan(p, 2) == [
        {"item_id": "a", "exclude_workers": ["w2", "w9"]},
        {"item_id": "d", "exclude_workers": ["w1", "w4", "w8"]},
        {"item_id": "f", "exclude_workers": ["w5"]},
    ]


def test_reask_plan_reads_the_latest_labels_before_the_round(crowd_only):
    p = crowd_only
    write_labels(p, 1, [("a", "1", 0.95, 2), ("d", "4", 0.60, 3), ("g", "8", 0.10, 1)])
    assert reask_plan(p, 1) == [{"item_id": "a", "exclude_workers": ["w2"]}, {"item_id": "d", "exclude_workers": ["w1", "w4"]},
                                {"item_id": "f", "exclude_workers": ["w5"]}]
    assert reask_plan(p, 2) == [{"item_id": "g", "exclude_workers": []}]  # nobody answered g yet


def test_reask_plan_is_decided_once_per_round(crowd_only):
    p = crowd_only
    first = reask_plan(p, 1)
    write_answers(p, 0, [("b", "w7", "2")])  # a late segment: the plan of a started round does not move
    write_labels(p, 0, [("b", "2", 0.1, 1)])
    assert reask_plan(p, 1) is first
    assert reask_plan(Project(p.store, p.config), 1) == [
        {"item_id": "b", "exclude_workers": ["w7"]}]  # a new process reads the store again


def test_without_a_model_weight_no_model_is_fitted(crowd_only):
    p = crowd_only
    p.__dict__["model_template"] = object()  # cloning this would fail: nothing may fit a model
    assert [t["item_id"] for t in reask_plan(p, 1)] == ["a", "d", "f"]


def test_with_a_model_weight_but_no_out_of_fold_model_the_crowd_alone_decides(tmp_path):
    p = fresh(tmp_path, **{"consensus.model_weight": 0.7, "autolabel.folds": 2})
    write_labels(p, 0, [(i, "1", c, 1) for i, c in zip(p.pool.ids[:4].astype(str), (0.5, 0.9, 0.79, 0.8), strict=True)])
    assert oof_proba(p, 1) is None  # one class: no model to ask
    assert [t["item_id"] for t in reask_plan(p, 1)] == [p.pool.ids[0], p.pool.ids[2]]


@pytest.fixture
def with_model(tmp_path) -> Project:
    """60 digits labeled before round 1, every third with a wrong label the crowd is 0.85 sure of:
    the crowd alone re-asks none of them; the model's out-of-fold probability disagrees."""
    p = fresh(tmp_path, **{"consensus.model_weight": 0.7, "autolabel.folds": 2})
    ids, truth = p.pool.ids[:60].astype(str), p.pool.y[:60].astype(str)
    rows = []
    for k, (item, y) in enumerate(zip(ids, truth, strict=True)):
        label = str((int(y) + 1) % 10) if k % 3 == 0 else y
        rows.append((item, label, 0.85, 1))
    write_labels(p, 0, rows)
    write_answers(p, 0, [(item, f"w{k % 4}", label) for k, (item, label, _, _) in enumerate(rows)])
    return p


def test_the_model_s_out_of_fold_probability_of_each_item_s_own_label_enters_the_confidence(with_model):
    p = with_model
    labels = sorted(p.human_labels(before_round=1), key=lambda lab: lab.item_id)
    ids, proba, classes = oof_proba(p, 1)
    assert ids == [lab.item_id for lab in labels]
    of_label = np.array([proba[k, classes.index(lab.label)] for k, lab in enumerate(labels)])
    combined = combine_with_model(np.full(len(labels), 0.85), of_label, n_classes=10, weight=0.7)
    expected = [lab.item_id for lab, c in zip(labels, combined, strict=True) if c < 0.8]
    wrong = {lab.item_id for k, lab in enumerate(labels) if lab.label != str(p.pool.y[p.index_of[lab.item_id]])}
    assert set(expected) & wrong  # the model doubts wrong labels
    assert len(expected) < len(labels)  # and not all: it is the per-item probability that counts
    answered = {a.item_id: a.worker_id for a in p.annotations()}  # one answer per item here
    assert reask_plan(p, 1) == [{"item_id": i, "exclude_workers": [answered[i]]} for i in expected]
    crowd_only = Project(p.store, p.config.model_copy(update={"consensus": p.config.consensus.model_copy(
        update={"model_weight": 0.0})}))
    assert reask_plan(crowd_only, 1) == []  # 0.85 >= 0.8 for every item: the crowd alone asks nothing


# --- out-of-fold probabilities: folds by class counts, seeded per round, truly out of fold ----------

def labeled(p: Project, per_class: int, classes: int = 10) -> list[str]:
    """Label the first ``per_class`` pool items of each of the first ``classes`` classes before round 1,
    with their true labels; the item ids, in store order."""
    rows = []
    for c in p.classes[:classes]:
        for item in p.pool.ids[p.pool.y.astype(str) == c][:per_class].astype(str):
            rows.append((item, c, 0.9, 1))
    write_labels(p, 0, rows)
    return sorted(r[0] for r in rows)


def test_folds_keep_every_class_in_every_training_fold_when_each_has_enough_labels(tmp_path):
    p = fresh(tmp_path, **{"autolabel.folds": 2})
    ids = labeled(p, per_class=2)  # 2 labels of each class, 2 folds: stratified, one of each class per fold
    got, proba, classes = oof_proba(p, 1)
    assert got == ids and classes == list(p.classes)
    assert (proba > 0).all()  # every model saw every class (shuffled plain folds would miss some)
    again = Project(p.store, p.config)  # a new process: the same folds from (seed, round, store)
    assert np.array_equal(oof_proba(again, 1)[1], proba)
    assert not np.allclose(oof_proba(again, 2)[1], proba)  # round 2 (same labels) draws its own folds


# plain folds may leave a class out of a training fold: sklearn says so, as it should here
@pytest.mark.filterwarnings("ignore:Number of classes in training fold:RuntimeWarning")
def test_rarer_classes_than_folds_use_plain_shuffled_folds(tmp_path):
    p = fresh(tmp_path, **{"autolabel.folds": 3})
    ids = labeled(p, per_class=2)  # 2 labels a class, 3 folds: stratified folds cannot be made
    got, proba, classes = oof_proba(p, 1)
    assert got == ids and classes == list(p.classes) and proba.shape == (20, 10)
    assert np.allclose(proba.sum(axis=1), 1.0)
    again = Project(p.store, p.config)
    assert np.array_equal(oof_proba(again, 1)[1], proba)
    assert not np.allclose(oof_proba(again, 2)[1], proba)  # shuffled by the round's own seed


def test_each_probability_comes_from_a_model_that_never_saw_the_item(tmp_path):
    from sklearn.base import clone

    p = fresh(tmp_path, **{"autolabel.folds": 20})
    ids = labeled(p, per_class=2, classes=6)  # 12 labels, at most 20 folds: leave-one-out
    got, proba, classes = oof_proba(p, 1)
    assert got == ids and classes == list(p.classes[:6])
    X, y = p.pool.X[p.rows_of(ids)], np.array([str(p.pool.y[p.index_of[i]]) for i in ids], dtype=object)
    for k in range(len(ids)):
        others = np.arange(len(ids)) != k
        model = clone(p.model_template).fit(X[others], y[others])
        assert np.allclose(proba[k], model.predict_proba(X[k:k + 1])[0])


# --- rejections follow the configured evidence level ----------------------------------------------

def test_rejections_use_the_configured_evidence_level(tmp_path):
    cfg = {"gold.share": 0.2, "gold.n_items": 4, "gold.reject_below": 0.9, "gold.min_answers": 2}
    observed = fresh(tmp_path, "observed", **cfg, **{"gold.evidence_level": 1.0})  # 1: the observed share decides
    binomial = fresh(tmp_path, "binomial", **cfg)  # default 0.05: 1 of 2 right is no evidence against 0.9
    for p in (observed, binomial):
        (g1, a1), (g2, a2) = sorted(p.gold_set.items())[:2]
        wrong = str((int(a2) + 1) % 10)
        write_answers(p, 1, [(g1, "w1", a1), (g2, "w1", wrong)])
    batch = [a for a in observed.annotations() if a.round == 1]
    out = gold_rejections(observed, 1, batch)
    assert [(r["worker_id"], r["missed_gold"]) for r in out] == [("w1", [g2])]
    assert gold_rejections(binomial, 1, [a for a in binomial.annotations() if a.round == 1]) == []
