"""Items that show annotators the same thing are asked once (``pool.duplicates: ask_once``):
the same text, image file bytes or row of values. The copies are never dispatched, and the
export gives each the label of the item that was asked (source ``copied``)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from crowdloop import engine, keys
from crowdloop.config import PoolConfig, parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError
from crowdloop.export import export_labels
from crowdloop.models.datasets import Pool, copies_of
from crowdloop.storage import read_json
from tests.conftest import crowdloop_cmd, small_config

TEXTS = {"shipping": "Where is my order? It was due on Monday.", "billing": "I was charged twice for one month.",
         "bug": "The app crashes when I log in.", "account": "I cannot reset my password."}


def _tickets(path: Path, copies: int = 3, unique: int = 60) -> pd.DataFrame:
    """Each class's stock text ``copies`` times, plus ``unique`` tickets of their own."""
    rng = np.random.default_rng(0)
    rows = [{"id": f"s{c}-{k}", "text": text, "label": c} for c, text in TEXTS.items() for k in range(copies)]
    names = list(TEXTS)
    for i in range(unique):
        c = names[int(rng.integers(len(names)))]
        rows.append({"id": f"u{i:03d}", "text": f"{TEXTS[c]} Ticket {i}, {rng.integers(1000)} words more.", "label": c})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    frame.to_csv(path, index=False)
    return frame


def _config(path: Path, **overrides) -> dict:
    return small_config(**{"pool": {"source": "csv", "path": str(path), "id_column": "id", "text_column": "text",
                                    "label_column": "label", "test_size": 0.2},
                           "model": {"estimator": "sklearn.linear_model.LogisticRegression", "features": {"kind": "tfidf"}},
                           "sampler": {"name": "random", "batch_size": 10, "initial_size": 10},
                           "stopping.max_rounds": 5, **overrides})


def test_copies_are_what_an_annotator_would_see_twice(tmp_path: Path) -> None:
    def pool(**kw) -> Pool:
        n = len(kw.get("ids", []))
        return Pool(ids=np.array(kw.pop("ids"), dtype=object), X=kw.pop("X", np.zeros((n, 0))), y=None, classes=("a", "b"),
                    feature_names=[], **kw)

    texts = pool(ids=["t1", "t2", "t3", "t4"], content_kind="text",
                 content=np.array(["same", "other", "same", "Same"], dtype=object), X=np.arange(8.0).reshape(4, 2))
    assert copies_of(texts) == {"t3": "t1"}  # the text decides, not the other columns; case counts
    rows = np.array([[1.0, 2.0], [1.0, 2.5], [1.0, 2.0], [1.0, 2.0]])
    assert copies_of(pool(ids=["r1", "r2", "r3", "r4"], X=rows)) == {"r3": "r1", "r4": "r1"}
    for name, data in (("a.png", b"png-bytes"), ("b.png", b"png-bytes"), ("c.png", b"other")):
        (tmp_path / name).write_bytes(data)
    files = pool(ids=["a", "b", "c", "gone"], content_kind="image", X=np.ones((4, 3)),  # identical pixels: not the test
                 content=np.array([str(tmp_path / n) for n in ("a.png", "b.png", "c.png", "missing.png")], dtype=object))
    assert copies_of(files) == {"b": "a"}


def test_a_stock_text_is_asked_once_and_its_copies_get_its_label(tmp_path: Path) -> None:
    frame = _tickets(tmp_path / "tickets.csv")
    p = engine.run_in_process(Project.prepare(parse_config(_config(tmp_path / "tickets.csv")), str(tmp_path / "p")))
    text_of = dict(zip(frame["id"], frame["text"], strict=True))
    sent = [t["item_id"] for r in p.rounds() if (d := p.record(r, keys.DISPATCH, default=None)) for t in d["tasks"]]
    assert len({text_of[i] for i in sent}) == len(sent)  # never the same text twice
    assert set(p.copies) and not set(p.copies) & set(sent)
    done = export_labels(p, "jsonl")
    rows = {row["item_id"]: row for row in map(json.loads, done.data.decode().splitlines())}
    copied = {i: row for i, row in rows.items() if row["source"] == "copied"}
    assert copied, "no stock text was asked in five rounds of ten: the test proves nothing"
    for item, row in copied.items():
        original = rows[p.copies[item]]
        assert original["source"] == "human" and row["label"] == original["label"] and row["n_judgments"] == 0
        assert text_of[item] == text_of[original["item_id"]]
    assert done.by_source["copied"] == len(copied)
    manifest = {line["item-id"]: line for line in map(json.loads, export_labels(p, "gt-manifest").data.splitlines())}
    answered = {}
    for a in p.annotations():
        answered[a.item_id] = max(a.submitted_at.isoformat(), answered.get(a.item_id, ""))
    meta = next(k for k in next(iter(manifest.values())) if k.endswith("-metadata"))
    for item in copied:  # a copy's label was made when the item it copies was answered
        assert manifest[item][meta]["creation-date"] == answered[p.copies[item]]


def test_ask_each_asks_every_copy(tmp_path: Path) -> None:
    _tickets(tmp_path / "tickets.csv", copies=20, unique=0)
    cfg = _config(tmp_path / "tickets.csv", **{"pool.duplicates": "ask_each", "stopping.max_rounds": 2,
                                               "sampler.initial_size": 20})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    assert p.copies == {}
    sent = [t["item_id"] for t in p.record(0, keys.DISPATCH)["tasks"]]
    assert len(sent) == 20  # four texts, twenty items: copies asked


def test_a_project_from_before_keeps_asking_every_copy_and_cannot_switch(tmp_path: Path) -> None:
    _tickets(tmp_path / "tickets.csv")
    cfg = _config(tmp_path / "tickets.csv", **{"stopping.max_rounds": 1})
    location = tmp_path / "p"
    Project.prepare(parse_config(cfg), str(location))
    record = read_json(Project.open(str(location)).store, keys.PROJECT)
    del record["config"]["pool"]["duplicates"]  # as a project created before the field
    (location / keys.PROJECT).write_text(json.dumps(record))
    from crowdloop.engine import project as project_module

    project_module._PREPARED.clear()
    p = Project.prepare(parse_config(cfg), str(location))  # the field unset: the project's own way
    assert p.config.pool.duplicates == "ask_each" and p.copies == {}
    project_module._PREPARED.clear()
    with pytest.raises(ConfigError, match=r"^pool\.duplicates: 'ask_once' differs from 'ask_each' that project "):
        Project.prepare(parse_config({**cfg, "pool": {**cfg["pool"], "duplicates": "ask_once"}}), str(location))


def test_crowdloop_check_counts_the_copies(tmp_path: Path) -> None:
    _tickets(tmp_path / "tickets.csv")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(tmp_path / "tickets.csv")))
    done = subprocess.run([*crowdloop_cmd(), "check", str(tmp_path / "c.yaml"), "-p", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "; 8 item(s) show what an earlier one shows (e.g. " in done.stdout and "): asked once" in done.stdout


def test_the_duplicates_field_takes_two_values() -> None:
    assert PoolConfig(name="iris", duplicates="ask_each").duplicates == "ask_each"
    with pytest.raises(ConfigError, match=r"pool\.duplicates: Input should be 'ask_once' or 'ask_each'"):
        parse_config(small_config(**{"pool.duplicates": "dedupe"}))


def test_a_pool_of_copies_says_so_when_too_few_items_are_left(tmp_path: Path) -> None:
    _tickets(tmp_path / "tickets.csv", copies=20, unique=0)  # 80 tickets, four texts: one held out for testing, whole
    with pytest.raises(ConfigError, match=r"the pool has 3 items left for labeling after seed labels, gold and the audit "
                                          r"reserve, and 57 copies of other items \(pool.duplicates\); expected at least "
                                          r"sampler.initial_size=10"):
        Project.prepare(parse_config(_config(tmp_path / "tickets.csv")), str(tmp_path / "p"))


def _shows(frame: pd.DataFrame, items) -> set[str]:
    text_of = dict(zip(frame["id"], frame["text"], strict=True))
    return {text_of[i] for i in items}


def test_no_model_sees_an_audit_items_content_under_another_id(tmp_path: Path) -> None:
    """The audit estimates accuracy on items no model has seen. A stock ticket in the audit
    reserve whose copy was seed-labeled, or whose original a sampler picked, is an item the
    model trained on, and the estimate reads high. Such copies are left out of the reserve, and
    what shows the same as a reserve item is never selected."""
    frame = _tickets(tmp_path / "tickets.csv", copies=12, unique=100)
    seeded = frame[frame["text"] == TEXTS["shipping"]]["id"].iloc[0]
    pd.DataFrame({"id": [seeded], "label": ["shipping"]}).to_csv(tmp_path / "seeds.csv", index=False)
    cfg = _config(tmp_path / "tickets.csv", **{"pool.seed_labels": {"path": str(tmp_path / "seeds.csv")}, "pool.test_size": 0.1,
                                               "evaluation": {"method": "random", "reserve": 40, "max_items": 20},
                                               "stopping.max_rounds": 4})
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    reserve = set(p.audit_reserve)
    assert p.format == 2 and len(reserve) == 40
    assert TEXTS["shipping"] not in _shows(frame, reserve)  # the seed label trains on that text
    stock = _shows(frame, reserve) & set(TEXTS.values())
    assert stock, "no stock text in the reserve: the test proves nothing"
    engine.run_in_process(p)
    trained = {label.item_id for label in p.human_labels(before_round=max(p.rounds()) + 1)}
    assert len(trained) >= 30 and not _shows(frame, trained) & _shows(frame, reserve), (p.rounds(), len(trained))

    # a project made before: its reserve stays what it was, whatever it holds, and so does its format
    record = read_json(p.store, keys.PROJECT)
    old = tmp_path / "old"
    Project.prepare(parse_config(cfg), str(old))
    (old / keys.PROJECT).write_text(json.dumps({**record, "format": 1}))
    from crowdloop.engine import project as project_module

    project_module._PREPARED.clear()
    before = Project.prepare(parse_config(cfg), str(old))
    assert before.format == 1 and read_json(before.store, keys.PROJECT)["format"] == 1
    assert TEXTS["shipping"] in _shows(frame, before.audit_reserve), "the old draw kept the seed's copies"


def test_an_item_and_its_copies_fall_on_one_side_of_the_test_split(tmp_path: Path) -> None:
    """A test item whose text a model trained on under another id measures memory: with stock
    tickets on both sides the test accuracy read high. A pool without copies splits as before."""
    from crowdloop.engine.pools import load_pool
    from crowdloop.models.datasets import split_pool

    frame = _tickets(tmp_path / "tickets.csv", copies=12, unique=100)
    cfg = _config(tmp_path / "tickets.csv", **{"pool.test_size": 0.3})
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    test_texts, pool_texts = _shows(frame, p.test.ids.tolist()), _shows(frame, p.pool.ids.tolist())
    assert not test_texts & pool_texts
    assert test_texts & set(TEXTS.values()) and pool_texts & set(TEXTS.values())  # stock texts on each side, whole
    assert len(test_texts) == math.ceil(0.3 * frame["text"].nunique())  # the share asked for, of the texts

    record = read_json(p.store, keys.PROJECT)
    old = tmp_path / "old"
    Project.prepare(parse_config(cfg), str(old))
    (old / keys.PROJECT).write_text(json.dumps({**record, "format": 1}))
    from crowdloop.engine import project as project_module

    project_module._PREPARED.clear()
    before = Project.open(str(old))
    assert before.format == 1 and _shows(frame, before.test.ids.tolist()) & _shows(frame, before.pool.ids.tolist())

    digits = parse_config(small_config())
    grouped = Project.prepare(digits, str(tmp_path / "digits"))
    assert grouped.format == 2 and grouped.copies == {}
    assert grouped.test.ids.tolist() == split_pool(load_pool(digits.pool), 0.3, 7)[1].ids.tolist()  # as before


def test_an_audit_item_that_shows_what_an_asked_one_shows_is_labeled_not_asked(tmp_path: Path) -> None:
    """A stock ticket drawn twice into the audit weighs twice in the estimate (it comes that often),
    but is asked about once: the second copy gets the first one's label, with no judgment of its own."""
    from crowdloop.engine.auditing import audit_followers, audit_labels

    frame = _tickets(tmp_path / "tickets.csv", copies=12, unique=100)
    cfg = _config(tmp_path / "tickets.csv", **{"pool.test_size": 0.1, "stopping.max_rounds": 3,
                                               "evaluation": {"method": "random", "reserve": 60, "max_items": 60,
                                                              "batch_size": 30}})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    text_of = dict(zip(frame["id"], frame["text"], strict=True))
    reserve = set(p.audit_reserve)
    asked = [t["item_id"] for r in p.rounds() if (d := p.record(r, keys.DISPATCH, default=None)) for t in d["tasks"]
             if t["item_id"] in reserve]
    assert len({text_of[i] for i in asked}) == len(set(asked))  # no text asked twice in the audit
    followers = audit_followers(p, max(p.rounds()))
    assert followers, "no stock text drawn twice: the test proves nothing"
    labels = audit_labels(p, max(p.rounds()) + 1)
    for item, first in followers.items():
        assert text_of[item] == text_of[first] and item not in asked
        assert (labels[item].label, labels[item].source, labels[item].n_annotations) == (labels[first].label, "copied", 0)
    drawn = {i for r in p.rounds() if (rec := p.record(r, keys.AUDIT, default=None)) for i in rec["draws"]}
    assert set(labels) == drawn  # every drawn item counts in the estimate, copies as often as they were drawn
    rows = {row["item_id"]: row for row in map(json.loads, export_labels(p, "jsonl").data.decode().splitlines())}
    assert all(rows[item]["source"] == "copied" for item in followers)
