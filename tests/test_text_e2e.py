"""A text pool through the real ``crowdloop run`` (subprocesses, a real Prefect server): the
fortunes sample, TF-IDF features stored once with the project, the ``best`` sampler on their
dense view, label spreading, a simulated crowd and the random baseline; then a resume with a
higher round limit that reuses the stored featurizer. And an embedding pool from a local
model folder named relative to the config file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from crowdloop.engine import Project
from tests.conftest import REPO
from tests.test_cli_e2e import run_cli, status

pytestmark = pytest.mark.slow

SAMPLE = REPO / "tests" / "data" / "fortunes"
CATEGORIES = ["computers", "definitions", "politics", "science", "songs-poems", "startrek"]


def text_config(**model) -> dict:
    return {
        "project": "fortunes-e2e",
        "seed": 3,
        "pool": {"source": "fortunes", "path": str(SAMPLE), "classes": CATEGORIES, "test_size": 0.3},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression",
                  "params": {"C": 10, "solver": "newton-cg", "max_iter": 1000},
                  "features": {"kind": "tfidf", "dense_dim": 32}, **model},
        "sampler": {"name": "best", "initial_size": 30, "batch_size": 30},
        "semi_supervised": {"method": "label_spreading"},
        "vendor": {"name": "simulated", "params": {"n_workers": 12, "accuracy": [0.8, 0.95]}},
        "consensus": {"method": "one_coin_dawid_skene", "redundancy": 3},
        "stopping": {"max_rounds": 3},
        "baseline": {"random": True},
    }


def test_a_text_pool_runs_through_the_cli_and_resumes_on_its_stored_features(cli_env, tmp_path: Path) -> None:
    config = tmp_path / "fortunes.yaml"
    config.write_text(yaml.safe_dump(text_config()))
    project_dir = tmp_path / "project"
    result = run_cli(["run", str(config), "--project-dir", str(project_dir)], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    featurizer = project_dir / "features" / "tfidf.pkl"
    digest = hashlib.sha256(featurizer.read_bytes()).hexdigest()
    assert sorted(p.name for p in (project_dir / "features").iterdir()) == ["tfidf.pkl"]  # one, shared with the baseline
    assert not (project_dir / "baseline" / "features").exists()
    state = status(project_dir, cli_env)
    rounds = state["rounds"]
    assert [r["n_labeled"] for r in rounds] == [0, 30, 60, 90]
    chance = 1 / len(CATEGORIES)
    assert rounds[-1]["accuracy"] > 2 * chance, rounds  # 6 classes: learned from the texts, far above chance
    assert state["baseline"]["rounds"][-1]["n_labeled"] == 90

    p = Project.open(str(project_dir))
    selected = [json.loads((project_dir / "rounds" / f"{r:04d}" / "selection.json").read_text())["item_ids"]
                for r in range(3)]
    assert all(i.rsplit("-", 1)[0] in CATEGORIES for ids in selected for i in ids)
    spread = p.round_labels(3, "spread_labels.jsonl")
    assert spread is not None and all(label.source == "machine" for label in spread)

    config.write_text(yaml.safe_dump({**text_config(), "stopping": {"max_rounds": 5}}))  # resume for two more rounds
    result = run_cli(["run", str(config), "--project-dir", str(project_dir)], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hashlib.sha256(featurizer.read_bytes()).hexdigest() == digest  # the same featurizer, not refitted
    rounds = status(project_dir, cli_env)["rounds"]
    assert [r["n_labeled"] for r in rounds] == [0, 30, 60, 90, 120, 150]
    again = [json.loads((project_dir / "rounds" / f"{r:04d}" / "selection.json").read_text())["item_ids"] for r in range(3)]
    assert again == selected


def test_an_embedding_pool_reads_its_local_model_folder_relative_to_the_config(cli_env, tmp_path: Path) -> None:
    from crowdloop.config import PoolConfig
    from crowdloop.models.text_pools import load_fortunes_pool
    from tests.models.test_text import _tiny_model2vec

    texts = load_fortunes_pool(PoolConfig(source="fortunes", path=str(SAMPLE), classes=CATEGORIES)).content
    vocabulary = sorted({w.lower() for t in texts for w in t.split() if w.isalpha()})
    _tiny_model2vec(tmp_path / "models" / "tiny", vocabulary)
    cfg = text_config(features={"kind": "embedding", "model_path": "models/tiny"})
    cfg["semi_supervised"] = {"method": "none"}
    cfg["baseline"] = {"random": False}
    config = tmp_path / "embed.yaml"
    config.write_text(yaml.safe_dump(cfg))
    project_dir = tmp_path / "project"
    result = run_cli(["run", str(config), "--project-dir", str(project_dir)], cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = list((project_dir / "features" / "embedding").rglob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (len(texts), 12)

    cfg["model"]["features"]["model_path"] = "models/missing"
    config.write_text(yaml.safe_dump(cfg))
    result = run_cli(["run", str(config), "--project-dir", str(tmp_path / "other")], cli_env)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and str(tmp_path / "models" / "missing") in line and "never downloads" in line
    assert not (tmp_path / "other").exists()
