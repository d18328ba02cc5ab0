"""Scale-out: sharded pool scoring as parallel tasks, on a local Dask cluster with 2 workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.test_engine import finish_round


def _selection_after_one_round(tmp_path: Path, name: str, shards: int) -> list[str]:
    p = Project.prepare(parse_config(small_config(**{"scale.shards": shards})), str(tmp_path / name))
    finish_round(p, 0)
    engine.train(p, 1)
    engine.evaluate(p, 1)
    return engine.select(p, 1)["item_ids"]


def test_sharded_selection_equals_whole_pool_selection(tmp_path: Path) -> None:
    whole = _selection_after_one_round(tmp_path, "one", 1)
    sharded = _selection_after_one_round(tmp_path, "four", 4)
    assert sorted(sharded) == sorted(whole)  # top-k is decomposable: same items, any order
    p = Project.open(str(tmp_path / "four"))
    assert len(p.store.list(keys.round_key(1, "shards/"))) == 4
    assert read_json(p.store, keys.round_key(1, keys.SELECTION))["shards"] == 4


def test_cold_start_and_diversity_are_not_sharded(tmp_path: Path) -> None:
    p = Project.prepare(parse_config(small_config(**{"scale.shards": 4})), str(tmp_path / "p"))
    assert engine.shard_count(p, 0) == 1  # no model yet


@pytest.mark.slow
def test_flow_scores_shards_on_a_local_dask_cluster(prefect_api_url: str, tmp_path: Path) -> None:
    from crowdloop.flows.loop import with_task_runner

    config = parse_config(small_config(project="dask", **{"scale.shards": 4, "scale.dask_workers": 2,
                                                          "stopping.max_rounds": 2}))
    flow = with_task_runner(config)
    assert type(flow.task_runner).__name__ == "DaskTaskRunner"
    state = flow(config, str(tmp_path / "p"))
    assert [r["n_labeled"] for r in state["rounds"]] == [0, 30, 50]
    p = Project.open(str(tmp_path / "p"))
    assert read_json(p.store, keys.round_key(1, keys.SELECTION))["shards"] == 4
    assert len(p.store.list(keys.round_key(1, "shards/"))) == 4
