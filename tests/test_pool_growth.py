"""A CSV pool that grows by appended rows goes on in the same project (``models/digest.py``,
``rows_appended``; ``models/datasets.py``, ``grown_split_indices``).

Teams append this week's tickets to last week's file. The rows the project started with keep
their test split, audit reserve and stop set; an appended row that shows what an earlier row
shows joins that row's side, any other goes to the test split with probability ``test_size``
by a hash of its id, so no growth ever moves an earlier row. Any other change to the file is
refused, as before.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine import project as project_module
from crowdloop.errors import PoolError
from crowdloop.storage import read_json
from tests.conftest import crowdloop_cmd, small_config


def _config(path: Path) -> dict:
    return small_config(pool={"source": "csv", "path": str(path), "id_column": "uid", "label_column": "target",
                              "test_size": 0.3},
                        evaluation={"method": "random", "reserve": 80, "max_items": 40, "batch_size": 20},
                        stopping={"max_rounds": 6, "stabilizing_predictions": {"stop_set": 300}})


def _append(path: Path, frame: pd.DataFrame) -> None:
    with open(path, "a") as fh:  # as a team appends this week's rows
        frame.to_csv(fh, header=False, index=False)


def _reopen(path: Path, location: str) -> Project:
    project_module._PREPARED.clear()  # a second `crowdloop run`
    return Project.prepare(parse_config(_config(path)), location)


@pytest.fixture
def grown(tmp_path: Path):
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(3)
    start = rng.choice(len(X), 1200, replace=False)
    rest = np.setdiff1d(np.arange(len(X)), start)
    frame = pd.DataFrame(X[start], columns=[f"px{i}" for i in range(64)])
    frame.insert(0, "uid", [f"d{i:04d}" for i in start])
    frame["target"] = y[start]
    path = tmp_path / "pool.csv"
    frame.to_csv(path, index=False)
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(_config(path)), location)
    for r in (0, 1):
        assert engine.run_round(p, r) is None
    before = {"test": p.test.ids.tolist(), "pool": p.pool.ids.tolist(), "reserve": p.audit_reserve,
              "stop": p.pool.ids[p.stop_set_rows].tolist()}
    test_copies = frame[frame["uid"].isin(before["test"][:30])].assign(uid=lambda f: "t-" + f["uid"])
    pool_copies = frame[frame["uid"].isin(before["pool"][:30])].assign(uid=lambda f: "p-" + f["uid"])
    new = pd.DataFrame(X[rest], columns=frame.columns[1:-1])
    new.insert(0, "uid", [f"n{i:04d}" for i in rest])
    new["target"] = y[rest]
    week = pd.concat([test_copies, pool_copies, new], ignore_index=True)
    _append(path, week)
    return path, location, before, week


def test_appended_rows_join_the_project_and_nothing_earlier_moves(grown) -> None:
    path, location, before, week = grown
    p = _reopen(path, location)
    assert p.test.ids.tolist()[: len(before["test"])] == before["test"]  # the rows it started with: as they were
    assert p.pool.ids.tolist()[: len(before["pool"])] == before["pool"]
    assert p.audit_reserve == before["reserve"] and p.pool.ids[p.stop_set_rows].tolist() == before["stop"]
    test, pool = set(p.test.ids.tolist()), set(p.pool.ids.tolist())
    assert {i for i in week["uid"] if i.startswith("t-")} <= test  # a copy of a test item is a test item
    assert {i for i in week["uid"] if i.startswith("p-")} <= set(p.copies)  # never asked: it shows a pool item
    new = [i for i in week["uid"] if i.startswith("n")]
    share = len(test & set(new)) / len(new)
    assert len(new) == 597 and 0.24 < share < 0.36  # test_size 0.3 of 597 rows: ±2.5 standard errors
    record = read_json(p.store, keys.PROJECT)["pool"]
    assert record["rows_at_start"] == 1200 and record["bytes"] == path.stat().st_size and len(record["grown"]) == 1
    assert p.store.list(keys.CONFIG_HISTORY)  # the record before the growth is kept
    twin = p.baseline()
    assert twin.test.ids.tolist() == p.test.ids.tolist() and twin.audit_reserve == p.audit_reserve
    assert engine.run_round(p, 2) is None
    eligible = pool - p.reserved_items() - p.dispatched_items()
    assert set(new) & eligible  # new rows can be picked

    again = week[week["uid"].str.startswith("n")].iloc[:50].assign(uid=lambda f: "m-" + f["uid"])
    sides = {i: i in test for i in new}
    _append(path, again)  # a second week: copies of last week's rows
    later = _reopen(path, location)
    later_test = set(later.test.ids.tolist())
    assert {i: i in later_test for i in new} == sides  # last week's rows keep their side
    assert all((("m-" + i) in later_test) == sides[i] for i in again["uid"].str[2:])
    assert len(read_json(later.store, keys.PROJECT)["pool"]["grown"]) == 2


def test_a_row_edited_is_refused_even_with_rows_appended(grown) -> None:
    path, location, _, _ = grown
    text = path.read_text().splitlines(keepends=True)
    text[5] = text[5].replace(",0.0,", ",1.0,", 1)  # one value of an early row changed
    path.write_text("".join(text))
    with pytest.raises(PoolError, match=r"is not the pool project .* was created with"):
        _reopen(path, location)


def test_a_file_cut_short_or_with_its_last_row_continued_is_refused(tmp_path: Path) -> None:
    from crowdloop.models.digest import pool_digest, rows_appended

    path = tmp_path / "pool.csv"
    path.write_text("uid,a\nx,1\ny,2\n")
    recorded = pool_digest(parse_config(small_config(pool={"source": "csv", "path": str(path)})).pool).as_record()
    path.write_text("uid,a\nx,1\ny,2\nz,3\n")
    assert rows_appended(path, recorded)
    path.write_text("uid,a\nx,1\n")  # cut short
    assert not rows_appended(path, recorded)
    path.write_text("uid,a\nx,1\ny,2\nz,3\n")
    assert not rows_appended(path, {k: v for k, v in recorded.items() if k != "bytes"})  # a project from before
    path.write_text("uid,a\nx,1\ny,2")  # a file whose last line has no line end ...
    unended = pool_digest(parse_config(small_config(pool={"source": "csv", "path": str(path)})).pool).as_record()
    path.write_text("uid,a\nx,1\ny,23\n")  # ... continued: its last row changed, none was appended
    assert not rows_appended(path, unended)


def _grows_with_its_featurizer(pool: dict, location: str, grow) -> tuple[tuple[list, list], Project]:
    """A text pool of 150 items: round 0, then ``grow()`` adds 60; the grown project keeps every
    earlier item's side, trains round 1, and its stored TF-IDF is the one fitted at the start."""
    cfg = small_config(pool=pool, model={"estimator": "sklearn.linear_model.LogisticRegression",
                                         "features": {"kind": "tfidf"}},
                       sampler={"name": "margin", "batch_size": 10, "initial_size": 20})
    p = Project.prepare(parse_config(cfg), location)
    assert engine.run_round(p, 0) is None
    fitted = p.store.read_bytes("features/tfidf.pkl")
    before = p.pool.ids.tolist(), p.test.ids.tolist()
    grow()
    project_module._PREPARED.clear()
    grown = Project.prepare(parse_config(cfg), location)
    assert len(grown.pool) + len(grown.test) == 210
    assert grown.pool.ids.tolist()[: len(before[0])] == before[0] and grown.test.ids.tolist()[: len(before[1])] == before[1]
    assert engine.run_round(grown, 1) is None
    assert p.store.read_bytes("features/tfidf.pkl") == fitted
    return before, grown


def test_a_text_pool_grows_with_the_featurizer_it_started_with(tmp_path: Path) -> None:
    """TF-IDF is fitted once, on the texts the project started with, and stored: appended texts are
    featurized with it, so every model of the project sees the same columns."""
    rng = np.random.default_rng(0)
    words = {"billing": "charged refund invoice card twice money", "shipping": "parcel courier late tracking box door"}

    def tickets(prefix: str, n: int) -> pd.DataFrame:
        labels = rng.choice(list(words), n)
        return pd.DataFrame({"id": [f"{prefix}{i:03d}" for i in range(n)], "label": labels,
                             "text": [" ".join(rng.choice(words[c].split(), 5)) + f" #{prefix}{i}" for i, c in
                                      enumerate(labels)]})

    path = tmp_path / "tickets.csv"
    tickets("a", 150).to_csv(path, index=False)
    before, grown_p = _grows_with_its_featurizer(
        {"source": "csv", "path": str(path), "id_column": "id", "text_column": "text", "label_column": "label",
         "test_size": 0.2}, str(tmp_path / "p"), lambda: _append(path, tickets("b", 60)))
    assert grown_p.load_model(1).predict_proba(grown_p.pool.X[len(before[0]):]).shape == (len(grown_p.pool) - len(before[0]), 2)


# -- folder pools: files added -------------------------------------------------------------------


def _digit_images(folder: Path, rows: np.ndarray, X: np.ndarray, y: np.ndarray) -> None:
    from PIL import Image

    for i in rows:
        (folder / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((X[i].reshape(8, 8) * 16).clip(0, 255).astype(np.uint8)).save(folder / str(y[i]) / f"d{i:04d}.png")


def _folder_config(folder: Path) -> dict:
    return small_config(pool={"source": "images", "path": str(folder), "image_mode": "gray", "test_size": 0.3},
                        evaluation={"method": "random", "reserve": 60, "max_items": 40, "batch_size": 20},
                        stopping={"max_rounds": 6, "stabilizing_predictions": {"stop_set": 200}})


def _reopen_folder(folder: Path, location: str) -> Project:
    project_module._PREPARED.clear()  # a second `crowdloop run`
    return Project.prepare(parse_config(_folder_config(folder)), location)


def _state(p: Project) -> dict:
    return {"test": p.test.ids.tolist(), "pool": p.pool.ids.tolist(), "reserve": p.audit_reserve,
            "stop": p.pool.ids[p.stop_set_rows].tolist()}


def test_images_added_to_a_folder_join_the_project_and_nothing_earlier_moves(tmp_path: Path) -> None:
    """Files sort by name, so added images land among the first ones in the folder's listing; the
    rows the project started with still come first, growth after growth."""
    X, y = load_digits(return_X_y=True)
    folder, location = tmp_path / "images", str(tmp_path / "p")
    start = np.arange(0, 1400, 2)  # the even rows now; odd rows later, named between them
    _digit_images(folder, start, X, y)
    p = Project.prepare(parse_config(_folder_config(folder)), location)
    for r in (0, 1):
        assert engine.run_round(p, r) is None
    before = _state(p)
    test_image = next(folder.glob(f"*/{before['test'][0].split('/')[1]}"))
    (test_image.parent / "copy-of-a-test-image.png").write_bytes(test_image.read_bytes())
    _digit_images(folder, np.arange(1, 601, 2), X, y)  # 300 new images, named among the first ones

    p = Project.open(location)  # a command that only reads, before the next run records the growth
    assert _state(p)["test"][: len(before["test"])] == before["test"]
    assert p.audit_reserve == before["reserve"]

    p = _reopen_folder(folder, location)
    now = _state(p)
    assert now["test"][: len(before["test"])] == before["test"] and now["pool"][: len(before["pool"])] == before["pool"]
    assert now["reserve"] == before["reserve"] and now["stop"] == before["stop"]
    copy_id = f"{test_image.parent.name}/copy-of-a-test-image.png"
    assert copy_id in now["test"]  # a copy of a test image is a test image
    added = set(now["test"] + now["pool"]) - set(before["test"] + before["pool"])
    assert len(added) == 301
    share = len(added & set(now["test"])) / len(added)
    assert 0.22 < share < 0.38  # test_size 0.3, by a hash of each id
    from crowdloop.report import status

    assert status(p)["pool_growth"] == {"items_at_start": len(before["pool"]), "items_now": len(now["pool"]),
                                        "estimate_covers": "items_at_start"}
    record = read_json(p.store, keys.PROJECT)["pool"]
    assert record["rows_at_start"] == 700 and sorted(name for name, _ in record["grown"][0]["added"]) == sorted(added)
    assert engine.run_round(p, 2) is None
    shown = subprocess.run([*crowdloop_cmd(), "status", location], capture_output=True, text=True, timeout=120, check=True)
    assert (f"the pool grew: {len(before['pool'])} items at the start, {len(now['pool'])} now; the accuracy estimate is "
            f"for the {len(before['pool'])} it started with") in " ".join(shown.stdout.split())
    picked = {t["item_id"] for t in p.record(2, keys.DISPATCH)["tasks"]}
    assert picked and picked <= set(now["pool"])

    _digit_images(folder, np.arange(601, 700, 2), X, y)  # a second growth
    again = _state(_reopen_folder(folder, location))
    assert again["test"][: len(now["test"])] == now["test"] and again["pool"][: len(now["pool"])] == now["pool"]
    assert again["reserve"] == before["reserve"]


@pytest.mark.parametrize("change", ["removed", "rewritten"])
def test_an_image_removed_or_rewritten_is_refused_even_with_images_added(tmp_path: Path, change: str) -> None:
    X, y = load_digits(return_X_y=True)
    folder, location = tmp_path / "images", str(tmp_path / "p")
    _digit_images(folder, np.arange(0, 400, 2), X, y)
    assert engine.run_round(Project.prepare(parse_config(_folder_config(folder)), location), 0) is None
    _digit_images(folder, np.arange(1, 101, 2), X, y)
    victim = folder / "3" / f"d{next(i for i in range(0, 400, 2) if y[i] == 3):04d}.png"  # one it started with
    if change == "removed":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(PoolError, match=r"is not the pool project .*folder listing"):
        _reopen_folder(folder, location)


def test_a_text_folder_grows_with_the_featurizer_it_started_with(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    words = {"billing": "charged refund invoice card twice money", "shipping": "parcel courier late tracking box door"}
    folder = tmp_path / "tickets"

    def write(prefix: str, n: int) -> None:
        for i in range(n):
            label = str(rng.choice(list(words)))
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / f"{prefix}{i:03d}.txt").write_text(" ".join(rng.choice(words[label].split(), 5)) + f" #{i}\n")

    write("m", 150)
    pool = {"source": "text_folder", "path": str(folder), "test_size": 0.2}
    _, grown = _grows_with_its_featurizer(pool, str(tmp_path / "p"), lambda: write("a", 60))  # named before the first
    (sorted(folder.glob("billing/m*.txt"))[0]).write_text("an edited ticket\n")
    project_module._PREPARED.clear()
    with pytest.raises(PoolError, match="is not the pool project"):
        Project.prepare(grown.config, str(tmp_path / "p"))


def test_rows_or_images_that_bring_a_new_class_are_refused(tmp_path: Path) -> None:
    """A class that appears with the added items: the items asked before could not be given it."""
    X, y = load_digits(return_X_y=True)
    folder, location = tmp_path / "images", str(tmp_path / "p")
    _digit_images(folder, np.flatnonzero(y < 9)[:400], X, y)
    assert Project.prepare(parse_config(_folder_config(folder)), location).classes == tuple("012345678")
    _digit_images(folder, np.flatnonzero(y == 9)[:20], X, y)
    with pytest.raises(PoolError, match=r"bring class\(es\) \['9'\] that project .* did not start with"):
        _reopen_folder(folder, location)


def test_a_parquet_pool_rewritten_with_rows_added_grows_and_an_edited_one_is_refused(tmp_path: Path) -> None:
    """Parquet files are rewritten whole, so their bytes cannot tell rows added from rows changed:
    the first rows, read back equal, can."""
    X, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    frame.insert(0, "uid", [f"d{i:04d}" for i in range(len(X))])
    frame["target"] = y
    path, location = tmp_path / "pool.parquet", str(tmp_path / "p")
    frame.iloc[:1000].to_parquet(path, index=False)
    config = {**_config(path), "pool": {**_config(path)["pool"], "source": "parquet"}}

    def reopen() -> Project:
        project_module._PREPARED.clear()
        return Project.prepare(parse_config(config), location)

    p = Project.prepare(parse_config(config), location)
    assert engine.run_round(p, 0) is None
    before = {"test": p.test.ids.tolist(), "pool": p.pool.ids.tolist(), "reserve": p.audit_reserve}
    frame.iloc[:1300].to_parquet(path, index=False, compression="gzip")  # rewritten: other bytes, 300 rows more
    p = reopen()
    assert p.test.ids.tolist()[: len(before["test"])] == before["test"]
    assert p.pool.ids.tolist()[: len(before["pool"])] == before["pool"] and p.audit_reserve == before["reserve"]
    assert len(p.pool) + len(p.test) == 1300
    record = read_json(p.store, keys.PROJECT)["pool"]
    assert record["rows"] == 1300 and record["grown"][0]["rows"] == 1000
    assert engine.run_round(p, 1) is None
    edited = frame.iloc[:1400].copy()
    edited.loc[5, "px10"] += 1.0  # one value of an early row
    edited.to_parquet(path, index=False)
    with pytest.raises(PoolError, match=r"is not the pool project .* was created with"):
        reopen()
    frame.iloc[:1200].to_parquet(path, index=False)  # rows removed
    with pytest.raises(PoolError, match=r"is not the pool project .* was created with"):
        reopen()
