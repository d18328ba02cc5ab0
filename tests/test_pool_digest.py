"""A pool that changed between runs is refused in one line naming it (issue 19, point 5).

``project.json`` records a digest of the pool when the project is created: the file's sha256
for CSV/Parquet, the manifest and index for a sharded pool, a listing of an image folder.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_digits

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine import project as project_module
from crowdloop.errors import PoolError
from crowdloop.storage import read_json
from tests.conftest import crowdloop_cmd, small_config

REPO = Path(__file__).resolve().parents[1]


def _digits_csv(path: Path) -> pd.DataFrame:
    X, y = load_digits(return_X_y=True)
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    frame.insert(0, "uid", [f"d{i:04d}" for i in range(len(frame))])
    frame["target"] = y
    frame.to_csv(path, index=False)
    return frame


def _csv_config(path: Path, **overrides) -> dict:
    return small_config(pool={"source": "csv", "path": str(path), "id_column": "uid", "label_column": "target",
                              "test_size": 0.3}, **overrides)


def _new_process() -> None:
    """What a second `crowdloop run` starts with: no project prepared in this process yet."""
    project_module._PREPARED.clear()


@pytest.fixture
def started(tmp_path: Path) -> tuple[Path, pd.DataFrame, str]:
    """A CSV pool and a project that finished its first round on it."""
    pool = tmp_path / "pool.csv"
    frame = _digits_csv(pool)
    location = str(tmp_path / "project")
    p = Project.prepare(parse_config(_csv_config(pool)), location)
    engine.run_round(p, 0)
    _new_process()
    return pool, frame, location


def test_the_digest_is_recorded_at_creation(started) -> None:
    pool, _, location = started
    recorded = read_json(Project.open(location).store, keys.PROJECT)["pool"]
    assert recorded == {"what": str(pool), "how": "sha256 of the file",
                        "sha256": hashlib.sha256(pool.read_bytes()).hexdigest(),
                        # what a csv pool grown by appended rows starts with (tests/test_pool_growth.py)
                        "bytes": pool.stat().st_size, "rows_at_start": 1797, "pool_items_at_start": 1257,
                        "classes": [str(c) for c in range(10)]}  # rows added must not bring another


def test_features_swapped_under_the_same_ids_are_refused(started) -> None:
    pool, frame, location = started
    swapped = frame.copy()
    features = [c for c in frame.columns if c.startswith("px")]
    swapped.loc[[0, 1], features] = frame.loc[[1, 0], features].to_numpy()  # same ids, other pixels
    swapped.to_csv(pool, index=False)
    with pytest.raises(PoolError) as info:
        Project.prepare(parse_config(_csv_config(pool)), location)
    message = str(info.value)
    assert "\n" not in message and str(pool) in message and "not the pool project" in message, message


def test_rows_removed_are_refused_before_anything_runs(started) -> None:
    pool, frame, location = started
    frame.iloc[:-40].to_csv(pool, index=False)
    before = sorted(p.name for p in Path(location).rglob("*"))
    with pytest.raises(PoolError, match=r"pool.path: .*pool.csv is not the pool project"):
        Project.prepare(parse_config(_csv_config(pool)), location)
    assert sorted(p.name for p in Path(location).rglob("*")) == before  # nothing written


def test_the_same_content_rewritten_resumes(started) -> None:
    pool, _, location = started
    data = pool.read_bytes()
    pool.unlink()
    pool.write_bytes(data)  # a copy: new inode and mtime, same bytes
    p = Project.prepare(parse_config(_csv_config(pool)), location)
    engine.run_round(p, 1, until="select")
    assert p.has(1, keys.SELECTION)


def test_the_cli_names_the_changed_file_in_one_line(started, tmp_path: Path) -> None:
    pool, frame, location = started
    frame.assign(px5=frame["px5"] + 1.0).to_csv(pool, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_csv_config(pool)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_")}
    done = subprocess.run([*crowdloop_cmd(), "run", str(config), "--project-dir", location], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {config}: pool.path: {pool} is not the pool project"), done.stderr


@pytest.mark.parametrize("change", ["pool", "field", "record"])
def test_check_refuses_what_a_resume_would_refuse(started, tmp_path: Path, change: str) -> None:
    """`crowdloop check` on an existing project said "ok ... (resume)" while `run` then refused a
    changed pool, a changed frozen field or a missing record: check now says the same line."""
    pool, frame, location = started
    overrides: dict = {}
    if change == "pool":
        frame.assign(px5=frame["px5"] + 1.0).to_csv(pool, index=False)
    elif change == "field":
        overrides = {"sampler.batch_size": 25}
    else:
        Path(location, keys.round_key(0, keys.COLLECTED)).unlink()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_csv_config(pool, **overrides)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_")}
    lines = {}
    for command in ("check", "run"):
        done = subprocess.run([*crowdloop_cmd(), command, str(config), "--project-dir", location], capture_output=True,
                              text=True, env=env, cwd=REPO, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        lines[command] = done.stderr
    assert lines["check"] == lines["run"]
    expected = {"pool": f"error: {config}: pool.path: {pool} is not the pool project",
                "field": f"error: {config}: sampler.batch_size: 25 differs from 20 that project",
                "record": f"error: {config}: {location}: "}[change]
    assert lines["check"].startswith(expected), lines["check"]
    assert read_json(Project.open(location).store, keys.PROJECT)["config"]["sampler"]["batch_size"] == 20  # nothing written


def test_a_rewritten_pool_starts_a_new_project_with_the_labels_bought(started, tmp_path: Path) -> None:
    """A pool that changed otherwise than by appended rows (tests/test_pool_growth.py) — here rows
    appended and one edited — is refused, and the refusal says how to go on: export the labels
    bought as a Ground Truth manifest and start a new project on the new pool with them as seed
    labels. The new project trains on them from round 0 and never asks for them again."""
    pool, frame, location = started
    grown = pd.concat([frame, frame.iloc[:40].assign(uid=[f"n{i:04d}" for i in range(40)])], ignore_index=True)
    grown.loc[1000, "px10"] += 1.0
    grown.to_csv(pool, index=False)
    with pytest.raises(PoolError, match=r"start a new project \(--project-dir\) on this one that keeps the labels bought: "
                                        rf"`crowdloop export -p {location} --format gt-manifest --out labels.manifest`"):
        Project.prepare(parse_config(_csv_config(pool)), location)
    manifest = tmp_path / "labels.manifest"
    done = subprocess.run([*crowdloop_cmd(), "export", "-p", location, "--format", "gt-manifest", "--out", str(manifest)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    bought = {label.item_id: label.label for label in Project.open(location).human_labels(before_round=1)}
    _new_process()
    config = _csv_config(pool, project="tiny-grown", **{"pool.seed_labels": {"path": str(manifest)}})
    fresh = Project.prepare(parse_config(config), str(tmp_path / "grown"))
    imported = {label.item_id: label.label for label in fresh.seed_labels}
    held_out = set(fresh.test.ids.tolist())  # the grown pool's own test split: labels there are not trained on
    assert {i: v for i, v in imported.items() if i in bought} == {i: v for i, v in bought.items() if i not in held_out}
    assert len(imported) > 0.5 * len(bought)
    appended = {f"n{i:04d}": f"d{i:04d}" for i in range(40)}  # an appended row shows what its d-row shows: the
    # export gave it that label (source copied), and the new project imports it
    assert all(appended.get(i) in bought and v == bought[appended[i]] for i, v in imported.items() if i not in bought)
    engine.run_round(fresh, 0)
    asked = set(read_json(fresh.store, keys.round_key(0, keys.SELECTION))["item_ids"])
    assert asked and not asked & set(imported)


def test_a_rewritten_sharded_pool_is_refused(tmp_path: Path) -> None:
    from crowdloop.models.sharded import write_sharded_pool

    X, y = load_digits(return_X_y=True)
    ids = np.array([f"d{i}" for i in range(len(X))], dtype=object)
    classes = tuple(str(c) for c in range(10))
    shards = tmp_path / "shards"
    write_sharded_pool(str(shards), X, ids, y.astype(str).astype(object), classes=classes, rows_per_shard=500)
    cfg = parse_config(small_config(pool={"source": "sharded", "path": str(shards), "test_size": 0.3}))
    Project.prepare(cfg, str(tmp_path / "p"))
    _new_process()
    shutil.rmtree(shards)
    X[:, 10] += 1.0
    write_sharded_pool(str(shards), X, ids, y.astype(str).astype(object), classes=classes, rows_per_shard=500)
    with pytest.raises(PoolError, match=r"shards is not the pool project .*manifest and index"):
        Project.prepare(cfg, str(tmp_path / "p"))


def test_an_image_folder_with_an_image_removed_is_refused(tmp_path: Path) -> None:
    """Images added are a pool that grew (tests/test_pool_growth.py); one removed is not."""
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(folder / label / f"{i}.png")
    cfg = parse_config(small_config(pool={"source": "images", "path": str(folder), "image_mode": "gray",
                                          "test_size": 0.3},
                                    sampler={"name": "margin", "batch_size": 5, "initial_size": 10}))
    Project.prepare(cfg, str(tmp_path / "p"))
    _new_process()
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(folder / "dog" / "extra.png")
    grown = Project.prepare(cfg, str(tmp_path / "p"))
    assert len(grown.pool.ids) + len(grown.test.ids) == 81  # grown by one
    _new_process()
    (folder / "cat" / "7.png").unlink()
    with pytest.raises(PoolError, match=r"images is not the pool project .*folder listing"):
        Project.prepare(cfg, str(tmp_path / "p"))


def _image_classes(root: Path, n: int = 40) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(root / label / f"{i}.png")


def _image_config(folder: Path) -> dict:
    return small_config(pool={"source": "images", "path": str(folder), "image_mode": "gray", "test_size": 0.3},
                        sampler={"name": "margin", "batch_size": 5, "initial_size": 10})


def test_a_changed_image_in_a_linked_class_folder_is_refused(tmp_path: Path) -> None:
    """Class folders that are links to data elsewhere: their images are the pool, and the
    digest lists them (it used to list none, so a swapped image went unnoticed)."""

    _image_classes(tmp_path / "data")
    folder = tmp_path / "images"
    folder.mkdir()
    for label in ("cat", "dog"):
        (folder / label).symlink_to(tmp_path / "data" / label, target_is_directory=True)
    cfg = parse_config(_image_config(folder))
    p = Project.prepare(cfg, str(tmp_path / "p"))
    assert len(p.pool.ids) + len(p.test.ids) == 80
    _new_process()
    swapped = tmp_path / "data" / "dog" / "3.png"
    swapped.write_bytes(swapped.read_bytes() + b"\0")
    with pytest.raises(PoolError, match=r"images is not the pool project .*folder listing"):
        Project.prepare(cfg, str(tmp_path / "p"))


def test_a_project_that_recorded_the_listing_without_linked_folders_still_resumes(tmp_path: Path) -> None:
    """Before links were followed, a linked folder's files were left out of the listing; a
    project that recorded that digest resumes (its pool has not changed)."""
    from crowdloop.models.digest import _listing_sha256

    _image_classes(tmp_path / "data")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat").symlink_to(tmp_path / "data" / "cat", target_is_directory=True)
    shutil.move(str(tmp_path / "data" / "dog"), str(folder / "dog"))
    cfg = parse_config(_image_config(folder))
    location = tmp_path / "p"
    Project.prepare(cfg, str(location))
    record = read_json(Project.open(str(location)).store, keys.PROJECT)
    old = _listing_sha256(str(folder), follow_links=False)
    assert record["pool"]["sha256"] != old
    record["pool"]["sha256"] = old
    (location / keys.PROJECT).write_text(__import__("json").dumps(record))
    _new_process()
    Project.prepare(cfg, str(location))  # resumes
    assert read_json(Project.open(str(location)).store, keys.PROJECT)["pool"]["sha256"] == old


def test_a_text_folder_edited_between_runs_is_refused(tmp_path: Path) -> None:
    """Text folder pools had no digest at all: an edited text was used silently on resume."""
    folder = tmp_path / "texts"
    for label, words in (("sports", "goal match team score"), ("cooking", "oven flour bake salt")):
        (folder / label).mkdir(parents=True)
        for i in range(30):
            (folder / label / f"{i}.txt").write_text(f"{words} {i}\n")
    cfg = parse_config(small_config(pool={"source": "text_folder", "path": str(folder), "test_size": 0.3},
                                    model={"estimator": "sklearn.linear_model.LogisticRegression",
                                           "features": {"kind": "tfidf"}},
                                    sampler={"name": "margin", "batch_size": 5, "initial_size": 10}))
    Project.prepare(cfg, str(tmp_path / "p"))
    record = read_json(Project.open(str(tmp_path / "p")).store, keys.PROJECT)
    assert record["pool"]["how"] == "sha256 of the text files"
    _new_process()
    Project.prepare(cfg, str(tmp_path / "p"))  # the same texts resume
    _new_process()
    (folder / "cooking" / "3.txt").write_text("goal match team score 3\n")  # same size, other words
    with pytest.raises(PoolError, match=r"texts is not the pool project .*text files"):
        Project.prepare(cfg, str(tmp_path / "p"))


def _team_folder(root: Path) -> dict:
    """A team's folder: the pool, seed labels and gold answers beside the config."""
    from crowdloop.config import LoopConfig

    (root / "data").mkdir(parents=True)
    frame = _digits_csv(root / "data" / "pool.csv").rename(columns={"uid": "id", "target": "label"})
    pool = {"source": "csv", "path": str(root / "data" / "pool.csv"), "id_column": "uid", "label_column": "target",
            "test_size": 0.3}
    held_out = set(Project(store=None, config=LoopConfig.model_validate(small_config(pool=pool))).test.ids.tolist())
    labeled = frame[~frame["id"].isin(held_out)][["id", "label"]]
    labeled.iloc[:40].to_csv(root / "data" / "seed.csv", index=False)
    labeled.iloc[100:112].to_csv(root / "data" / "gold.csv", index=False)
    return {"project": "moved", "pool": {**pool, "path": "data/pool.csv", "seed_labels": {"path": "data/seed.csv"}},
            "gold": {"share": 0.1, "path": "data/gold.csv"}, "stopping": {"max_rounds": 1}}


def _write_config(root: Path, config: dict, **overrides) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(small_config(**copy.deepcopy(config), **overrides)))
    return path


def test_a_project_folder_moved_elsewhere_resumes_with_the_same_files(tmp_path: Path) -> None:
    """The team moves (or copies) the folder holding config, data and project: the files are
    the ones the project started with, so it resumes and records where they are now."""
    from crowdloop.config import load_config

    team = tmp_path / "team"
    config = _team_folder(team)
    engine.run_round(Project.prepare(load_config(_write_config(team, config)), str(team / "project")), 0)
    _new_process()
    moved = tmp_path / "elsewhere" / "team"
    moved.parent.mkdir()
    shutil.move(str(team), str(moved))
    p = Project.prepare(load_config(_write_config(moved, config, **{"stopping.max_rounds": 2})), str(moved / "project"))
    engine.run_round(p, 1)
    record = read_json(p.store, keys.PROJECT)
    assert record["config"]["pool"]["path"] == str(moved / "data" / "pool.csv")
    assert record["config"]["gold"]["path"] == str(moved / "data" / "gold.csv")
    history = [read_json(p.store, k) for k in p.store.list(keys.CONFIG_HISTORY)]
    assert [h["config"]["pool"]["path"] for h in history] == [str(team / "data" / "pool.csv")]


def test_a_moved_file_with_other_content_is_refused(tmp_path: Path) -> None:
    from crowdloop.config import load_config
    from crowdloop.errors import ConfigError

    team = tmp_path / "team"
    config = _team_folder(team)
    Project.prepare(load_config(_write_config(team, config)), str(team / "project"))
    _new_process()
    project_json = (team / "project" / keys.PROJECT).read_bytes()
    shutil.copytree(team / "data", team / "data2")
    gold = pd.read_csv(team / "data2" / "gold.csv")
    gold.loc[0, "label"] = (gold.loc[0, "label"] + 1) % 10
    gold.to_csv(team / "data2" / "gold.csv", index=False)
    with pytest.raises(ConfigError, match=r"^gold\.path: '.*/data2/gold\.csv' does not hold the labels project "
                                          r".* imported from '.*/data/gold\.csv' \(12 labels\); "):
        Project.prepare(load_config(_write_config(team, config, **{"gold.path": "data2/gold.csv"})),
                        str(team / "project"))
    _new_process()
    frame = pd.read_csv(team / "data2" / "pool.csv")
    frame.loc[5, "px10"] += 1
    frame.to_csv(team / "data2" / "pool.csv", index=False)
    with pytest.raises(PoolError, match=r"pool\.path: .*/data2/pool\.csv is not the pool project .* was created with"):
        Project.prepare(load_config(_write_config(team, config, **{"pool.path": "data2/pool.csv"})),
                        str(team / "project"))
    assert (team / "project" / keys.PROJECT).read_bytes() == project_json  # nothing written
    _new_process()
    Project.prepare(load_config(_write_config(team, config, **{"pool.seed_labels.path": "data2/seed.csv"})),
                    str(team / "project"))  # the same seed labels elsewhere: fine


def test_a_project_without_a_pool_digest_cannot_move_its_pool(tmp_path: Path) -> None:
    team = tmp_path / "team"
    team.mkdir()
    _digits_csv(team / "pool.csv")
    location = tmp_path / "project"
    Project.prepare(parse_config(_csv_config(team / "pool.csv")), str(location))
    record = read_json(Project.open(str(location)).store, keys.PROJECT)
    del record["pool"]  # as a project from before pool digests
    (location / keys.PROJECT).write_text(__import__("json").dumps(record))
    _new_process()
    shutil.copy(team / "pool.csv", tmp_path / "copy.csv")
    with pytest.raises(PoolError, match=r"^pool\.path: '.*/copy\.csv' differs from '.*/team/pool\.csv' that project .* "
                                        r"has no digest of its pool"):
        Project.prepare(parse_config(_csv_config(tmp_path / "copy.csv")), str(location))


def test_verify_on_a_project_whose_pool_moved_says_how_to_resume_it(started) -> None:
    from crowdloop.engine.verify import problems

    pool, _, location = started
    pool.rename(pool.with_name("moved.csv"))
    (found,) = problems(Project.open(location), deep=True)
    assert found.message.startswith(f"pool.path: cannot read '{pool}'")
    assert found.message.endswith("; if it moved, `crowdloop run CONFIG` with pool.path naming its new place resumes "
                                  "the project (the pool's digest checks it is the same)")
