"""A reviewer's corrections (``crowdloop correct``, ``crowdloop/corrections.py``): they win over the
consensus from the next aggregation, train, label items nobody was asked about (never sent out
then), become an audit item's certain label, are exported as ``reviewed``; bad rows are refused in
one line, all or nothing; the same corrections recorded twice are recorded once.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.corrections import latest
from crowdloop.engine import Project
from crowdloop.engine.auditing import audit_labels
from crowdloop.export import export_labels
from tests.conftest import crowdloop_cmd, small_config


def _correct(location: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*crowdloop_cmd(), "correct", "-p", location, *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _other_class(p: Project, label: str) -> str:
    return next(c for c in p.classes if c != label)


@pytest.fixture
def after_round_0(tmp_path: Path) -> tuple[Project, str]:
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(small_config(**{"stopping.max_rounds": 3, "gold.share": 0.1, "gold.n_items": 20,
                                                     "gold.min_answers": 50})), location)
    assert engine.run_round(p, 0) is None
    return p, location


def test_corrections_win_train_and_label_items_nobody_was_asked_about(after_round_0) -> None:
    p, location = after_round_0
    bought = {label.item_id: label for label in p.human_labels(before_round=1)}
    fixed = sorted(bought)[0]
    wrong = _other_class(p, bought[fixed].label)
    taken = p.dispatched_items() | p.reserved_items() | set(p.test.ids.tolist())
    never_asked = next(i for i in p.pool.ids.tolist() if i not in taken)
    done = _correct(location, "--item", fixed, "--label", wrong, "--by", "ana", "--note", "blurred scan")
    assert done.returncode == 0 and "recorded 1 correction(s) by ana" in done.stdout, done.stderr
    assert _correct(location, "--item", never_asked, "--label", "3", "--by", "ana").returncode == 0
    again = _correct(location, "--item", fixed, "--label", wrong, "--by", "ana", "--note", "blurred scan")
    assert again.returncode == 0 and "already in force" in again.stdout
    assert len(p.store.list("corrections/")) == 2

    assert engine.run_round(p, 1) is None
    labels = {label.item_id: label for label in p.human_labels(before_round=2)}
    assert (labels[fixed].label, labels[fixed].source, labels[fixed].confidence) == (wrong, "reviewed", 1.0)
    assert labels[fixed].n_annotations == bought[fixed].n_annotations  # the judgments stay counted
    assert (labels[never_asked].label, labels[never_asked].source, labels[never_asked].n_annotations) == ("3", "reviewed", 0)
    assert p.record(1, keys.AGGREGATE)["n_corrected"] == 2
    assert engine.run_round(p, 2) is None
    asked = {t["item_id"] for r in p.rounds() for t in p.record(r, keys.DISPATCH)["tasks"]}
    assert never_asked not in asked  # labeled by the reviewer: never sent out
    assert p.record(2, keys.TRAIN)["n_labeled"] == len(p.human_labels(before_round=2))
    rows = {row["item_id"]: row for row in csv.DictReader(export_labels(p, "csv").data.decode().splitlines())}
    assert rows[fixed]["source"] == rows[never_asked]["source"] == "reviewed" and rows[fixed]["label"] == wrong
    assert sum(row["source"] == "reviewed" for row in rows.values()) == 2
    manifest = {line["item-id"]: line for line in map(json.loads, export_labels(p, "gt-manifest").data.splitlines())}
    made = latest(p)
    assert manifest[never_asked]["tiny-metadata"]["creation-date"] == made[never_asked].at.isoformat()  # nobody answered it
    assert manifest[fixed]["tiny-metadata"]["creation-date"] == made[fixed].at.isoformat()  # the label is the reviewer's


def test_a_later_correction_of_the_same_item_wins_even_back_to_an_earlier_label(after_round_0) -> None:
    p, location = after_round_0
    item = sorted(label.item_id for label in p.human_labels(before_round=1))[0]
    first, second = list(p.classes)[:2]
    for label in (first, second, first):  # the third is the first command again: it must count
        assert _correct(location, "--item", item, "--label", label, "--by", "ana").returncode == 0
    assert len(p.store.list("corrections/")) == 3
    assert engine.run_round(p, 1) is None
    assert {label.item_id: label.label for label in p.human_labels(before_round=2)}[item] == first


def test_bad_corrections_are_one_line_and_nothing_is_recorded(after_round_0, tmp_path: Path) -> None:
    p, location = after_round_0
    labeled = sorted(label.item_id for label in p.human_labels(before_round=1))
    test_item = p.test.ids.tolist()[0]
    gold_item = sorted(p.gold_set)[0]
    cases = {
        ("--item", "nope", "--label", "3"): "crowdloop correct: --item: unknown item id 'nope': not in the pool",
        ("--item", labeled[0], "--label", "cat"): "unknown class 'cat'",
        ("--item", test_item, "--label", "3"): f"item {test_item!r} is in the held-out test split",
        ("--item", gold_item, "--label", "3"): f"item {gold_item!r} is a gold item",
        ("--item", labeled[0]): "expected --item ID --label CLASS, or --file FILE",
    }
    for args, message in cases.items():
        done = _correct(location, *args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"id,label\n{labeled[0]},3\n{labeled[1]},4\n{test_item},5\n")
    done = _correct(location, "--file", str(fixes))
    assert done.returncode == 2 and f"{fixes}: line 4: item {test_item!r} is in the held-out test split" in done.stderr
    assert p.store.list("corrections/") == []  # all or nothing


def test_a_copy_is_corrected_through_its_original(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    rows = pd.DataFrame({"uid": [f"u{i:03d}" for i in range(120)], "x": np.arange(120) % 60 / 60.0,
                         "y": np.arange(120) % 60 % 7 / 7.0, "label": ["a" if i % 60 < 30 else "b" for i in range(120)]})
    pool = tmp_path / "pool.csv"
    rows.to_csv(pool, index=False)  # u060..u119 repeat u000..u059
    location = str(tmp_path / "p")
    config = small_config(pool={"source": "csv", "path": str(pool), "id_column": "uid", "label_column": "label",
                                "test_size": 0.2}, **{"sampler.initial_size": 10, "sampler.batch_size": 10})
    p = Project.prepare(parse_config(config), location)
    copy, original = next(iter(sorted(p.copies.items())))
    done = _correct(location, "--item", copy, "--label", "a")
    assert done.returncode == 2 and f"item {copy!r} shows what {original!r} shows" in done.stderr
    assert f"correct {original!r}" in done.stderr


def test_a_correction_of_an_audit_item_becomes_its_certain_audit_label(tmp_path: Path) -> None:
    location = str(tmp_path / "p")
    config = small_config(**{"evaluation": {"method": "random", "max_items": 60, "batch_size": 30, "redundancy": 3},
                             "stopping.max_rounds": 3})
    p = Project.prepare(parse_config(config), location)
    assert engine.run_round(p, 0) is None
    audited = audit_labels(p, 1)
    item = sorted(audited)[0]
    right = _other_class(p, audited[item].label)
    assert _correct(location, "--item", item, "--label", right, "--by", "ana").returncode == 0
    assert engine.run_round(p, 1) is None
    after = audit_labels(p, 2)[item]
    assert (after.label, after.source) == (right, "reviewed")
    assert after.proba == {c: float(c == right) for c in p.classes}
    assert item not in {label.item_id for label in p.human_labels(before_round=2)}  # audit items never train
    exported = {row["item_id"]: row for row in csv.DictReader(export_labels(p, "csv").data.decode().splitlines())}
    assert exported[item]["source"] == "reviewed" and exported[item]["label"] == right


def test_a_corrected_item_is_never_asked_again(tmp_path: Path) -> None:
    """Adaptive redundancy asks again where the consensus is unsure; a reviewer's label is final."""
    from collections import defaultdict

    from crowdloop.engine.quality import reask_plan

    location = str(tmp_path / "p")
    config = small_config(**{"consensus.method": "majority_vote", "consensus.confidence_threshold": 0.99,
                             "consensus.min_judgments": 2, "consensus.max_judgments": 3, "consensus.model_weight": 0.0})
    p = Project.prepare(parse_config(config), location)
    engine.run_round(p, 0, until="collect")
    votes: dict[str, set[str]] = defaultdict(set)
    for a in p.annotations():
        votes[a.item_id].add(a.label)
    split = sorted(item for item, labels in votes.items() if len(labels) == 2 and item not in p.gold_set)
    assert len(split) >= 2  # two judgments that disagree: majority vote is 0.5 sure
    assert _correct(location, "--item", split[0], "--label", "3", "--by", "ana").returncode == 0
    assert engine.run_round(p, 0) is None  # aggregates with the correction, pays
    again = {item["item_id"] for item in reask_plan(p, 1)}
    assert split[0] not in again and set(split[1:]) <= again


def _disputed(location: str, *args: str) -> list[dict]:
    done = subprocess.run([*crowdloop_cmd(), "disputed", "-p", location, "--top", "500", "--json", *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_disputed_lists_the_labels_most_likely_wrong_first_and_drops_them_once_corrected(after_round_0) -> None:
    p, location = after_round_0
    anns = p.annotations()
    split = {i for i in {a.item_id for a in anns} - set(p.gold_set) if len({a.label for a in anns if a.item_id == i}) >= 2}
    by_crowd = _disputed(location, "--rank", "crowd")
    assert by_crowd and {row["item_id"] for row in by_crowd} == split  # every split item, nothing else (gold left out)
    assert [row["confidence"] for row in by_crowd] == sorted(row["confidence"] for row in by_crowd)
    rows = _disputed(location)  # both: the crowd's confidence times the out-of-fold model's probability of the label
    labeled = {label.item_id for label in p.human_labels(before_round=1)}
    assert {row["item_id"] for row in rows} == labeled  # unanimous labels too: the model may doubt them
    assert all(abs(row["score"] - row["model_proba_of_label"] * row["confidence"]) < 1e-3 for row in rows)
    assert [row["score"] for row in rows] == sorted(row["score"] for row in rows)
    first = rows[0]
    assert sum(first["votes"].values()) == sum(len(ws) for ws in first["workers"].values()) >= 1
    table = subprocess.run([*crowdloop_cmd(), "disputed", "-p", location, "--top", "3"], capture_output=True, text=True,
                           timeout=120, check=True).stdout
    assert first["item_id"] in table and "crowdloop correct -p" in table
    assert _correct(location, "--item", first["item_id"], "--label", first["label"], "--by", "ana").returncode == 0
    assert [row["item_id"] for row in _disputed(location)] == [row["item_id"] for row in rows[1:]]
    bad = subprocess.run([*crowdloop_cmd(), "disputed", "-p", location, "--rank", "loudest"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--rank: 'loudest': expected one of both, crowd, model" in bad.stderr


def test_a_deleted_correction_record_stops_the_resume_instead_of_undoing_the_review(after_round_0) -> None:
    """An aggregation lists the correction records it applied; one deleted since (by hand, a sync
    tool) would let the next aggregation put the crowd's label back without a word."""
    from crowdloop.engine.project import MissingRecordError
    from crowdloop.engine.verify import check_resumable, problems

    p, location = after_round_0
    item = sorted(label.item_id for label in p.human_labels(before_round=1))[0]
    assert _correct(location, "--item", item, "--label", _other_class(p, "x"), "--by", "ana").returncode == 0
    assert engine.run_round(p, 1) is None
    (record,) = p.store.list("corrections/")
    assert p.record(1, keys.AGGREGATE)["corrections_read"] == [record]
    assert problems(p) == []
    p.store.delete(record)
    found = problems(p)
    assert [f.key for f in found] == [record]
    assert f"{keys.round_key(1, keys.AGGREGATE)} applied its corrections" in found[0].message
    with pytest.raises(MissingRecordError, match=f"{record} is missing"):
        check_resumable(Project.open(location))
    out = subprocess.run([*crowdloop_cmd(), "verify", location], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0 and record in out.stdout + out.stderr


def test_a_correction_teaches_the_consensus_about_the_workers_who_answered_it() -> None:
    """Two workers answer c whenever the truth is b; a third is right. On the b items the votes say
    c 2:1 and nothing in the answers alone says who is right; once a reviewer has corrected five of
    them, the consensus model holds those fixed, learns the pair the two confuse, and the other
    fifteen b items nobody reviewed get b."""
    import pandas as pd

    from crowdloop.consensus.aggregators import AutoDawidSkene
    from crowdloop.engine.aggregation import known_truths

    rows = []
    truth = {f"a{i}": "a" for i in range(30)} | {f"c{i}": "c" for i in range(30)} | {f"b{i}": "b" for i in range(20)}
    for item, label in truth.items():
        for worker in ("w1", "w2", "w3"):
            confused = label == "b" and worker != "w3"
            rows.append({"task": item, "worker": worker, "label": "c" if confused else label})
    table = pd.DataFrame(rows)
    reviewed = {f"b{i}": type("Fix", (), {"label": "b"})() for i in range(5)}
    unreviewed_b = [f"b{i}" for i in range(5, 20)]

    def labels(fixes: dict) -> pd.Series:
        return AutoDawidSkene(classes=["a", "b", "c"]).fit(table, true_labels=known_truths(table, {}, fixes)).labels_

    assert (labels({})[unreviewed_b] == "c").all()  # the majority's confusion wins without a reviewer
    learned = labels(reviewed)
    assert (learned[unreviewed_b] == "b").all()
    assert (learned[[f"a{i}" for i in range(30)]] == "a").all() and (learned[[f"c{i}" for i in range(30)]] == "c").all()


@pytest.mark.parametrize("learn", [True, False])
def test_corrections_are_held_as_truth_by_the_consensus_and_counted_per_worker(tmp_path: Path, learn: bool,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from crowdloop.engine import aggregation
    from crowdloop.workers import worker_accounts

    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(small_config(**{"gold.share": 0.1, "gold.n_items": 20,
                                                     "consensus.learn_from_corrections": learn,
                                                     "consensus.block_below_agreement": 0.3})), location)
    assert engine.run_round(p, 0) is None
    anns = p.annotations()
    items = sorted({a.item_id for a in anns} - set(p.gold_set))[:6]
    fixes = {item: p.classes[k % 3] for k, item in enumerate(items)}
    assert _correct(location, "--item", items[0], "--label", fixes[items[0]], "--by", "ana").returncode == 0
    sheet = tmp_path / "fixes.csv"
    sheet.write_text("id,label\n" + "".join(f"{item},{label}\n" for item, label in list(fixes.items())[1:]))
    assert _correct(location, "--file", str(sheet), "--by", "ana").returncode == 0

    seen: list = []
    real = Project.aggregator

    def spying(self):
        aggregator = real(self)
        fit = aggregator.fit
        aggregator.fit = lambda table, true_labels=None: (seen.append(true_labels), fit(table, true_labels))[1]
        return aggregator

    monkeypatch.setattr(Project, "aggregator", spying)
    judged_for_blocking: list = []
    real_low = aggregation.low_agreement_workers
    monkeypatch.setattr(aggregation, "low_agreement_workers",
                        lambda table, *a, **k: (judged_for_blocking.append(set(table["task"])), real_low(table, *a, **k))[1])
    p = Project.open(location)
    assert engine.run_round(p, 1) is None
    assert judged_for_blocking[-1] and not judged_for_blocking[-1] & set(fixes)  # a correction never blocks anyone
    held = dict(seen[-1].items())
    answered_gold = {a.item_id for a in p.annotations() if a.item_id in p.gold_set}
    assert {i: held[i] for i in answered_gold} == {i: p.gold_set[i] for i in answered_gold}
    assert ({i: held.get(i) for i in fixes} == fixes) if learn else not set(held) & set(fixes)

    expected: dict[str, list[int]] = {}
    for a in p.annotations():
        if a.item_id in fixes:
            n = expected.setdefault(a.worker_id, [0, 0])
            n[0], n[1] = n[0] + 1, n[1] + int(a.label == fixes[a.item_id])
    record = p.record(1, keys.AGGREGATE)["reviewed"]
    assert {w: [v["n_reviewed"], v["n_agreed"]] for w, v in record.items()} == expected
    rows = {row["worker_id"]: row for row in worker_accounts(p)["workers"]}
    for worker, (n, agreed) in expected.items():
        assert rows[worker]["reviewed_answers"] == n and rows[worker]["reviewer_agreement"] == round(agreed / n, 4)
    assert all(row["reviewed_answers"] == 0 and row["reviewer_agreement"] is None
               for w, row in rows.items() if w not in expected)
    shown = subprocess.run([*crowdloop_cmd(), "workers", "-p", location], capture_output=True, text=True, timeout=120,
                           check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "gold acc." in shown and "rev. agr." in shown  # the columns appear where the project has such answers


def test_the_workers_table_leaves_out_gold_and_review_columns_a_project_does_not_use(tmp_path: Path) -> None:
    location = str(tmp_path / "p")
    assert engine.run_round(Project.prepare(parse_config(small_config()), location), 0) is None
    shown = subprocess.run([*crowdloop_cmd(), "workers", "-p", location], capture_output=True, text=True, timeout=120,
                           check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "judgments" in shown and "gold" not in shown and "reviewed" not in shown
