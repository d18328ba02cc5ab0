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


def dask_task_counts(address: str) -> dict[str, int]:
    """Tasks the Dask scheduler at ``address`` has finished, by key prefix (a Prefect task's function)."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        counts = client.run_on_scheduler(
            lambda dask_scheduler: {name: prefix.state_counts["memory"]
                                    for name, prefix in dask_scheduler.task_prefixes.items()})
    return counts


@pytest.mark.slow
def test_flow_scores_shards_on_the_dask_cluster_of_its_config(prefect_api_url: str, tmp_path: Path) -> None:
    """The flow itself takes its task runner from ``scale``: plain ``active_learning_loop(config)``
    scores the shards on the Dask scheduler the config names (no decorator option, no wrapper)."""
    from distributed import LocalCluster

    from crowdloop.flows.loop import active_learning_loop

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = parse_config(small_config(project="dask", **{"scale.shards": 4, "scale.dask_address": cluster.scheduler_address,
                                                              "stopping.max_rounds": 2}))
        state = active_learning_loop(config, str(tmp_path / "p"))
        ran_on_dask = dask_task_counts(cluster.scheduler_address)
    assert [r["n_labeled"] for r in state["rounds"]] == [0, 30, 50]
    p = Project.open(str(tmp_path / "p"))
    assert read_json(p.store, keys.round_key(1, keys.SELECTION))["shards"] == 4
    assert len(p.store.list(keys.round_key(1, "shards/"))) == 4
    # round 1's four shard parts ran on the cluster; round 0 (cold start) and the steps ran in the flow
    assert ran_on_dask == {"part_task": 4}, ran_on_dask


@pytest.mark.slow
def test_flow_starts_the_local_dask_cluster_its_config_asks_for(prefect_api_url: str, tmp_path: Path) -> None:
    import asyncio

    from crowdloop.flows.loop import active_learning_loop
    from tests.flows.prefect_helpers import flow_run_logs, wait_for

    config = parse_config(small_config(project="daskw", **{"scale.shards": 3, "scale.dask_workers": 2,
                                                           "stopping.max_rounds": 2}))
    state = active_learning_loop(config, str(tmp_path / "p"), return_state=True)
    assert state.is_completed()
    line = "scale-out: parts run on Dask, a local cluster of 2 worker process(es)"

    def shipped() -> bool:  # Prefect ships log lines to the API in batches, after the run may have ended
        return line in [m for _, _, m in asyncio.run(flow_run_logs(state.state_details.flow_run_id))]

    assert wait_for(shipped, timeout=60, what=f"the log line {line!r}")
    p = Project.open(str(tmp_path / "p"))
    assert read_json(p.store, keys.round_key(1, keys.SELECTION))["shards"] == 3
