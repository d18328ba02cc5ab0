"""Seed labels (``pool.seed_labels``) and gold from a file (``gold.path``) on a pool without ground truth.

The pool is digits written as a CSV with no label column; a simulated crowd answers from an
answer key the loop never sees (``tests/crowd_helpers.KeyedCrowd``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdloop import engine, keys
from crowdloop.config import LabelFileConfig, parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError, LabelFileError, PoolError
from crowdloop.label_files import read_label_file
from crowdloop.report import metrics_csv, status
from tests.crowd_helpers import blind_config, intents, write_blind_digits

N_SEEDS = 60


@pytest.fixture(scope="module")
def blind_digits(tmp_path_factory) -> dict:
    return write_blind_digits(tmp_path_factory.mktemp("blind"), n_seeds=N_SEEDS)


def test_seed_labels_train_from_round_zero_are_counted_apart_and_never_dispatched(blind_digits, tmp_path):
    cfg = blind_config(blind_digits, **{"pool.path": str(blind_digits["seeded"]), "pool.seed_labels": {"column": "old_label"}})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    seeds = {label.item_id: label.label for label in p.seed_labels}
    assert len(seeds) == N_SEEDS and all(blind_digits["truth"][i] == lab for i, lab in seeds.items())
    assert all(label.source == "imported" for label in p.seed_labels)
    assert "old_label" not in p.pool.feature_names  # labels are never features
    train0 = p.record(0, keys.TRAIN)
    assert train0["trained"] and train0["n_imported"] == N_SEEDS and train0["n_labeled"] == 0
    assert p.record(0, keys.SELECTION)["strategy"] == "margin"  # a model from round 0: no cold start
    dispatched = {t["item_id"] for d in intents(p) for t in d["tasks"]}
    assert dispatched and not dispatched & set(seeds)
    state = status(p)
    assert [r["n_imported"] for r in state["rounds"]] == [N_SEEDS] * len(state["rounds"])
    assert [r["n_labeled"] for r in state["rounds"]] == [0, 20, 40, 60]  # bought labels only
    assert state["totals"]["n_imported"] == N_SEEDS and state["totals"]["n_labeled"] == 60
    assert "n_imported" in metrics_csv(state["rounds"]).decode().splitlines()[0].split(",")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _seed_file(kind: str, root: Path, truth: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A file of seed labels in one of the four shapes, and what it should import."""
    items = sorted(truth)[:12]
    expected = {i: truth[i] for i in items}
    if kind == "csv":
        lines = ["item,answer"] + [f"{i},{truth[i]}" for i in items]
        return _write(root / "seeds.csv", "\n".join(lines) + "\n"), expected
    if kind == "parquet":
        pd.DataFrame({"item": items, "answer": [int(truth[i]) for i in items]}).to_parquet(root / "seeds.parquet")
        return root / "seeds.parquet", expected
    if kind == "gt-manifest":
        rows = [{"source-ref": f"s3://bucket/{i}.png", "item-id": i, "old-job": int(truth[i]),
                 "old-job-metadata": {"class-name": truth[i], "confidence": 0.93, "type": "groundtruth/image-classification",
                                      "job-name": "labeling-job/old-job", "human-annotated": "yes"}} for i in items]
        rows.append({"source-ref": "s3://bucket/unlabeled.png", "item-id": "d1700"})  # an object the job did not label
        return _write(root / "seeds.manifest", "\n".join(json.dumps(r) for r in rows) + "\n"), expected
    # Label Studio JSON export, pretty-printed like the app writes it: several annotations per task
    tasks = []
    for k, i in enumerate(items):
        wrong = str((int(truth[i]) + 1) % 10)
        anns = [{"result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [truth[i]]}}],
                 "was_cancelled": False} for _ in range(2)]
        anns.append({"result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [wrong]}}],
                     "was_cancelled": False})
        anns.append({"result": [], "was_cancelled": True})  # skipped: no vote
        tasks.append({"id": 100 + k, "data": {"crowdloop_item": i}, "annotations": anns})
    tasks.append({"id": 999, "data": {"crowdloop_item": "d1701"}, "annotations": []})  # nobody answered it
    return _write(root / "seeds.json", json.dumps(tasks, indent=2)), expected


@pytest.mark.parametrize("kind", ["csv", "parquet", "gt-manifest", "label-studio"])
def test_each_shape_of_seed_file_imports_the_same_labels(kind, blind_digits, tmp_path):
    path, expected = _seed_file(kind, tmp_path, blind_digits["truth"])
    seeds: dict = {"path": str(path)}
    if kind in ("csv", "parquet"):
        seeds.update(id_column="item", label_column="answer")
    p = Project.prepare(parse_config(blind_config(blind_digits, **{"pool.seed_labels": seeds})), str(tmp_path / "p"))
    assert {label.item_id: label.label for label in p.seed_labels} == expected
    stored = [json.loads(line) for line in p.store.read_bytes(keys.SEED_LABELS).splitlines()]
    assert {r["item_id"] for r in stored} == set(expected) and {r["source"] for r in stored} == {"imported"}
    if kind == "label-studio":  # two of three votes, the skip left out
        assert {r["n_annotations"] for r in stored} == {3} and {r["confidence"] for r in stored} == {round(2 / 3, 6)}
    if kind == "gt-manifest":
        assert {r["confidence"] for r in stored} == {0.93}


def test_a_file_with_a_bad_row_imports_nothing_and_names_file_and_line(blind_digits, tmp_path):
    truth = blind_digits["truth"]
    good = [f"{i},{truth[i]}" for i in sorted(truth)[:5]]
    cases = {
        "unknown id": ([*good, "nope-17,3"], "line 7", "unknown item id 'nope-17'"),
        "unknown class": ([*good[:2], "d0005,eleven", *good[2:]], "line 4", "unknown class 'eleven'"),
        "conflict": ([*good, f"d0001,{(int(truth['d0001']) + 1) % 10}"], "line 7", "at line 3"),
    }
    for name, (rows, line, words) in cases.items():
        path = _write(tmp_path / f"{name.replace(' ', '_')}.csv", "\n".join(["id,label", *rows]) + "\n")
        location = tmp_path / f"p-{name.replace(' ', '_')}"
        cfg = parse_config(blind_config(blind_digits, **{"pool.seed_labels": {"path": str(path)}}))
        with pytest.raises(LabelFileError) as err:
            Project.prepare(cfg, str(location))
        message = str(err.value)
        assert "\n" not in message and str(path) in message and line in message and words in message, (name, message)
        assert not location.exists()  # nothing imported, no project left behind


def test_label_studio_export_line_numbers_and_a_tie_is_refused(blind_digits, tmp_path):
    tasks = [{"id": 1, "data": {"crowdloop_item": "d0000"},
              "annotations": [{"result": [{"type": "choices", "value": {"choices": [c]}}]} for c in ("0", "1")]}]
    path = _write(tmp_path / "tie.json", "[\n" + json.dumps(tasks[0]) + "\n]\n")
    cfg = parse_config(blind_config(blind_digits, **{"pool.seed_labels": {"path": str(path)}}))
    with pytest.raises(LabelFileError, match=r"tie\.json: line 2: the annotations of task 1 tie"):
        Project.prepare(cfg, str(tmp_path / "p"))


def test_a_label_studio_annotation_with_two_choices_is_refused_not_dropped(tmp_path):
    """A multi-choice answer was left out without a word (the task imported nothing, or fewer votes)."""
    task = {"id": 7, "data": {"crowdloop_item": "d0000"},
            "annotations": [{"id": 71, "result": [{"type": "choices", "value": {"choices": ["0"]}}]},
                            {"id": 72, "result": [{"type": "choices", "value": {"choices": ["0", "1"]}}]}]}
    path = _write(tmp_path / "multi.json", "[\n" + json.dumps(task) + "\n]\n")
    with pytest.raises(LabelFileError, match=r"multi\.json: line 2: annotation 72 of task 7 chose 2 classes "
                                             r"\['0', '1'\]; expected one"):
        read_label_file(LabelFileConfig(path=str(path)))


def test_manifest_and_label_studio_rows_match_pool_items_by_content(tmp_path):
    """Without an id, a manifest's ``source`` (text) or ``source-ref`` (image file name) and a
    Label Studio task's ``text``/``image`` find the pool item."""
    texts = [f"review number {i} says {'good' if i % 2 else 'bad'}" for i in range(40)]
    pool = pd.DataFrame({"id": [f"t{i}" for i in range(40)], "text": texts, "f": np.arange(40.0)})
    pool.to_csv(tmp_path / "pool.csv", index=False)
    manifest = [{"source": texts[i], "sent": 0, "sent-metadata": {"class-name": "good" if i % 2 else "bad"}} for i in range(6)]
    _write(tmp_path / "seeds.manifest", "\n".join(json.dumps(r) for r in manifest) + "\n")
    cfg = {"project": "texts", "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id",
                                        "text_column": "text", "classes": ["bad", "good"],
                                        "seed_labels": {"path": str(tmp_path / "seeds.manifest")}},
           "vendor": {"name": "local"}, "sampler": {"batch_size": 4}}
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    assert {s.item_id: s.label for s in p.seed_labels} == {f"t{i}": "good" if i % 2 else "bad" for i in range(6)}
    ls = [{"id": i, "data": {"text": texts[i]},
           "annotations": [{"result": [{"type": "choices", "value": {"choices": ["good" if i % 2 else "bad"]}}]}]}
          for i in range(6, 10)]
    _write(tmp_path / "seeds.json", json.dumps(ls))
    cfg["pool"]["seed_labels"] = {"path": str(tmp_path / "seeds.json")}
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p2"))
    assert {s.item_id for s in p.seed_labels} == {f"t{i}" for i in range(6, 10)}


def test_seed_labels_of_test_items_are_left_out(tmp_path):
    """With ground truth there is a test split; seed labels of its items never train."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(X, columns=list("abcd"))
    frame.insert(0, "id", [f"i{k}" for k in range(len(X))])
    frame["truth"] = y.astype(str)
    frame.to_csv(tmp_path / "pool.csv", index=False)
    _write(tmp_path / "seeds.csv", "id,label\n" + "".join(f"i{k},{y[k]}\n" for k in range(0, len(X), 2)))
    cfg = {"project": "iris", "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id",
                                       "label_column": "truth", "seed_labels": {"path": str(tmp_path / "seeds.csv")}},
           "sampler": {"batch_size": 4}}
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    imported = {s.item_id for s in p.seed_labels}
    assert imported == {f"i{k}" for k in range(0, len(X), 2)} - set(p.test.ids.tolist())
    assert imported and not imported & set(p.test.ids.tolist())


def test_gold_from_a_file_needs_no_ground_truth(blind_digits, tmp_path):
    truth = blind_digits["truth"]
    gold_items = sorted(truth)[100:120]
    _write(tmp_path / "gold.csv", "id,label\n" + "".join(f"{i},{truth[i]}\n" for i in gold_items))
    cfg = blind_config(blind_digits, gold={"share": 0.2, "path": str(tmp_path / "gold.csv"), "min_answers": 2})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    assert p.gold_set == {i: truth[i] for i in gold_items}
    tasks = [t for d in intents(p) for t in d["tasks"]]
    asked = {t["item_id"] for t in tasks if t["is_gold"]}
    assert asked and asked <= set(gold_items)
    assert not {t["item_id"] for t in tasks if not t["is_gold"]} & set(gold_items)  # gold is never selected
    assert p.record(2, keys.AGGREGATE)["gold"]  # workers were measured on it
    with pytest.raises(PoolError, match=r"has no ground truth, but gold questions \(gold.share\).*gold.path"):
        Project.prepare(parse_config(blind_config(blind_digits, gold={"share": 0.2})), str(tmp_path / "q"))


def test_a_gold_file_sharing_items_with_the_seed_labels_is_refused_before_anything_is_written(blind_digits, tmp_path):
    """A seed item is never asked; a gold item is asked to check workers: one item cannot be both."""
    truth = blind_digits["truth"]
    items = sorted(truth)
    seeds = _write(tmp_path / "seeds.csv", "id,label\n" + "".join(f"{i},{truth[i]}\n" for i in items[:40]))
    gold = _write(tmp_path / "gold.csv", "id,label\n" + "".join(f"{i},{truth[i]}\n" for i in items[30:50]))
    cfg = parse_config(blind_config(blind_digits, **{"pool.seed_labels": {"path": str(seeds)}},
                                    gold={"share": 0.1, "path": str(gold)}))
    location = tmp_path / "p"
    with pytest.raises(ConfigError) as err:
        Project.prepare(cfg, str(location))
    message = str(err.value)
    assert "\n" not in message and str(gold) in message and str(seeds) in message, message
    assert "10 item(s) are also seed labels" in message and repr(items[30]) in message, message
    assert not location.exists()


def test_gold_drawn_from_ground_truth_never_takes_a_seed_labeled_item(tmp_path):
    """With ground truth, gold is drawn by seed from the pool, but not from the seed-labeled
    items: they are never sent to anyone, as gold or otherwise."""
    from tests.conftest import small_config

    probe = Project.prepare(parse_config(small_config()), str(tmp_path / "probe"))
    ids, y = [str(i) for i in probe.pool.ids], [str(v) for v in probe.pool.y]
    rows = "".join(f"{i},{lab}\n" for i, lab in list(zip(ids, y, strict=True))[:300])
    seeds = _write(tmp_path / "seeds.csv", "id,label\n" + rows)
    cfg = small_config(**{"pool.seed_labels": {"path": str(seeds)}, "stopping.max_rounds": 2},
                       gold={"share": 0.2, "n_items": 500, "min_answers": 2})
    p = engine.run_in_process(Project.prepare(parse_config(cfg), str(tmp_path / "p")))
    seeded = {label.item_id for label in p.seed_labels}
    assert len(seeded) > 150 and len(p.gold_set) == 500 and not set(p.gold_set) & seeded
    asked = {t["item_id"] for d in intents(p) for t in d["tasks"]}
    assert {t["item_id"] for d in intents(p) for t in d["tasks"] if t["is_gold"]} and not asked & seeded


def test_a_label_file_separated_by_semicolons_says_so(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id;label\ndigits-000001;3\n")
    with pytest.raises(LabelFileError, match=r"labels.csv: column\(s\) \['id', 'label'\] not found; columns: "
                                             r"\['id;label'\] \(the header is separated by ';', not ','; save the "
                                             r"file comma-separated\)$"):
        read_label_file(LabelFileConfig(path=str(path)))


def test_ids_match_across_unicode_composed_and_decomposed_forms():
    """'café.png' typed into a label file was refused as an unknown id beside the pool's file name
    'cafe' + U+0301, which prints the same."""
    import unicodedata

    from crowdloop.label_files import LabelRow, resolve

    decomposed = unicodedata.normalize("NFD", "photos/café.png")
    typed = [LabelRow("line 2", "photos/café.png", "b"), LabelRow("line 3", "x", "a")]
    found = resolve(typed, source="labels.csv", pool_ids=[decomposed, "x"], held_out=set(), classes=("a", "b"))
    assert {item: row.label for item, row in found.labels.items()} == {decomposed: "b", "x": "a"}
    composed_pool = resolve([LabelRow("line 2", decomposed, "b")], source="labels.csv",  # and the other way round
                            pool_ids=["photos/café.png"], held_out=set(), classes=("a", "b"))
    assert list(composed_pool.labels) == ["photos/café.png"]
    with pytest.raises(LabelFileError, match=r"line 3: unknown item id 'x': not in the pool \(the pool has ' x': spaces "
                                             r"differ\)$"):
        resolve(typed, source="labels.csv", pool_ids=[decomposed, " x"], held_out=set(), classes=("a", "b"))
    held = resolve(typed[:1], source="labels.csv", pool_ids=["x"], held_out={decomposed}, classes=("a", "b"))
    assert held.n_held_out == 1 and held.labels == {}
    one, other = "photos/e\u0323\u0302.png", "photos/e\u0302\u0323.png"  # two spellings of one composed name
    assert unicodedata.normalize("NFC", one) == unicodedata.normalize("NFC", other) != one
    with pytest.raises(LabelFileError, match=r"line 2: unknown item id"):  # no guess between them
        resolve([LabelRow("line 2", unicodedata.normalize("NFC", one), "a")], source="labels.csv",
                pool_ids=[one, other], held_out=set(), classes=("a", "b"))


@pytest.mark.parametrize("dtype", ["Int64", "float32", "string"])
def test_a_parquet_seed_column_with_pandas_missing_values_imports_the_labeled_rows(tmp_path, dtype):
    """pandas writes partial labels as a nullable ``Int64`` (or ``string``) column whose empty
    cells are ``pd.NA``, or float32 NaN: they were read as a class named '<NA>' / 'nan'."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    frame.insert(0, "id", np.arange(1000, 1000 + len(frame)))
    values = pd.array([int(v) if i % 5 == 0 else None for i, v in enumerate(y)], dtype="Int64")
    frame["seed"] = values.astype(dtype)
    frame.to_parquet(tmp_path / "pool.parquet")
    cfg = parse_config({"project": "nullable", "seed": 1,
                        "pool": {"source": "parquet", "path": str(tmp_path / "pool.parquet"), "id_column": "id",
                                 "feature_columns": ["a", "b", "c", "d"], "seed_labels": {"column": "seed"},
                                 "classes": [0, 1, 2]},
                        "model": {"estimator": "sklearn.linear_model.LogisticRegression"},
                        "sampler": {"name": "margin", "batch_size": 5, "initial_size": 5},
                        "vendor": {"name": "manifest", "params": {"url": str(tmp_path / "exchange")}},
                        "stopping": {"max_rounds": 1}})
    p = Project.prepare(cfg, str(tmp_path / "p"))
    seeds = {label.item_id: label.label for label in p.seed_labels}
    assert seeds == {str(1000 + i): str(int(v)) for i, v in enumerate(y) if i % 5 == 0}


def test_crowdloop_check_reads_the_seed_file_as_run_does(blind_digits, tmp_path):
    """`check` said ok for a seed file that `run` then refused: it now reads it, writing nothing."""
    import subprocess

    import yaml

    from tests.conftest import crowdloop_cmd

    truth = blind_digits["truth"]
    bad = _write(tmp_path / "seeds.csv", "\n".join(["id,label", *[f"{i},{truth[i]}" for i in sorted(truth)[:3]],
                                                    "d0009,eleven"]) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(blind_config(blind_digits, **{"pool.seed_labels": {"path": str(bad)}, "vendor": {
        "name": "manifest", "params": {"url": str(tmp_path / "exchange")}}})))
    done = subprocess.run([*crowdloop_cmd(), "check", str(config), "-p", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"error: {config}: pool.seed_labels: {bad}: line 5: unknown class 'eleven' for item "
                                   "'d0009'; expected one of ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']")
    assert not (tmp_path / "p").exists()
    bad.write_text("\n".join(["id,label", *[f"{i},{truth[i]}" for i in sorted(truth)[:3]]]) + "\n")
    done = subprocess.run([*crowdloop_cmd(), "check", str(config), "-p", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith(f"{config}: ok;"), done.stderr
    assert not (tmp_path / "p").exists()
