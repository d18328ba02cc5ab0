"""A redone selection picks the same items, in a round with a trained model (README, "How it works").

README: "selection for round *r* depends only on (seed, *r*, store contents), so a redone
selection picks the same items". Round 2 here has a model trained on two rounds of crowd
labels. Its selection is redone twice from a fresh ``Project`` (a new process's view: no
cached model, no cached records): once with only ``selection.json`` deleted, once with the whole
round deleted (training, evaluation, the stop check, selection: what a crash before any of
them was recorded leaves). Both must pick the original items in the original order. The
comparison can fail: with another model (a different ``C``) the same round picks other items,
and for a sampler that draws random numbers (k-means margin) so does another seed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine.selection import select
from crowdloop.models.sklearn import build_model
from tests.conftest import small_config

ROUND = 2  # the model of round 2 was trained on rounds 0 and 1


def _started(tmp_path: Path, sampler: str) -> tuple[str, list[str]]:
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(small_config(**{"sampler.name": sampler})), location)
    for r in range(ROUND):
        assert engine.run_round(p, r) is None
    engine.run_round(p, ROUND, until="select")
    assert p.record(ROUND, keys.TRAIN)["trained"] and p.load_model(ROUND) is not None
    picked = p.record(ROUND, keys.SELECTION)["item_ids"]
    assert len(picked) == 20 and len(set(picked)) == 20
    return location, picked


def _delete(p: Project, names: list[str]) -> None:
    for name in names:
        p.store.delete(keys.round_key(ROUND, name))


@pytest.mark.parametrize("sampler", ["margin", "kmeans_margin"])
def test_a_redone_selection_with_a_trained_model_picks_the_same_items(tmp_path: Path, sampler: str) -> None:
    location, original = _started(tmp_path, sampler)

    fresh = Project.open(location)
    _delete(fresh, [keys.SELECTION])
    assert select(fresh, ROUND)["item_ids"] == original

    fresh = Project.open(location)
    recorded = sorted(fresh.store.list(keys.round_key(ROUND, "")))
    assert keys.round_key(ROUND, keys.MODEL) in recorded
    _delete(fresh, [key.rsplit("/", 1)[1] for key in recorded])  # the whole round, its model too
    assert not fresh.store.list(keys.round_key(ROUND, ""))
    engine.run_round(fresh, ROUND, until="select")
    assert fresh.record(ROUND, keys.SELECTION)["item_ids"] == original
    assert sorted(fresh.store.list(keys.round_key(ROUND, ""))) == recorded


@pytest.mark.parametrize("sampler", ["margin", "kmeans_margin"])
def test_the_comparison_can_fail_another_model_picks_other_items(tmp_path: Path, sampler: str) -> None:
    location, original = _started(tmp_path, sampler)
    p = Project.open(location)
    labels = sorted(p.known_labels(before_round=ROUND), key=lambda label: label.item_id)
    other = build_model(p.config.model.model_copy(update={"params": {"C": 100.0, "max_iter": 500}}))
    other.fit(p.pool.X[p.rows_of([label.item_id for label in labels])], [label.label for label in labels])
    _delete(p, [keys.SELECTION])
    p._models[ROUND] = other  # the same store, another model in memory
    assert len(set(select(p, ROUND)["item_ids"]) - set(original)) >= 5  # measured: 18 of 20 (margin, kmeans_margin)


def test_the_comparison_can_fail_another_seed_picks_other_items(tmp_path: Path) -> None:
    location, original = _started(tmp_path, "kmeans_margin")
    p = Project.open(location)
    _delete(p, [keys.SELECTION])
    reseeded = Project(p.store, p.config.model_copy(update={"seed": p.config.seed + 1}))
    reseeded._models = copy.copy(p._models)
    assert reseeded.load_model(ROUND) is not None  # the stored model of round 2, unchanged
    assert len(set(select(reseeded, ROUND)["item_ids"]) - set(original)) >= 5  # measured: 16 of 20
