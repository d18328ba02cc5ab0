"""``crowdloop deploy`` on a process work pool: a worker runs the deployed loop, on the config's Dask cluster.

A real Prefect server (the session's), a real work pool and ``prefect worker start`` in a
subprocess: the same path a team's deployment takes, with the project's config stored in the
deployment as a typed parameter and ``scale.dask_address`` honoured by the deployed run.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
import yaml

from crowdloop import keys
from crowdloop.engine import Project
from tests.conftest import crowdloop_cmd, small_config
from tests.flows.prefect_helpers import create_process_pool, flow_run_logs, task_run_names, wait_for, worker
from tests.flows.test_scale import dask_task_counts

pytestmark = pytest.mark.slow


async def _deployment(name: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(name)
        automations = await client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
    return deployment, automations


def _summaries_once_shipped(run_id) -> list[str] | None:
    """The run's step summaries once its last one (``stop`` after the final round) is on the API."""
    summaries = [m for name, _, m in asyncio.run(flow_run_logs(run_id)) if name.startswith("crowdloop.flows")]
    return summaries if any(m.startswith("stop · r2") for m in summaries) else None


def test_deploy_creates_both_deployments_and_a_worker_completes_the_rounds_on_dask(cli_env: dict, tmp_path: Path) -> None:
    from distributed import LocalCluster
    from prefect.deployments import run_deployment

    pool = "crowdloop-test-pool"
    create_process_pool(pool, cli_env)
    project_dir = tmp_path / "p"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = small_config(project="deployed", **{"stopping.max_rounds": 2, "scale.shards": 4,
                                                     "scale.dask_address": cluster.scheduler_address})
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        deployed = subprocess.run([*crowdloop_cmd(), "deploy", str(tmp_path / "c.yaml"), "--pool", pool,
                                   "-p", str(project_dir), "--cron", "0 6 * * *"],
                                  env=cli_env, capture_output=True, text=True, timeout=180)
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        assert "crowdloop-active-learning/deployed" in deployed.stdout and "crowdloop-collect/deployed-collect" in deployed.stdout

        loop, _ = asyncio.run(_deployment("crowdloop-active-learning/deployed"))
        collect, automations = asyncio.run(_deployment("crowdloop-collect/deployed-collect"))
        assert loop.work_pool_name == collect.work_pool_name == pool
        assert loop.entrypoint == "crowdloop.flows.loop.active_learning_loop"  # nothing to upload or pull
        assert [s.schedule.cron for s in loop.schedules] == ["0 6 * * *"]
        assert loop.parameters["config"]["scale"]["shards"] == 4 and loop.enforce_parameter_schema
        assert "LoopConfig" in str(loop.parameter_openapi_schema)  # typed: the UI shows the config's fields
        assert [s.schedule.interval.total_seconds() for s in collect.schedules] == [300.0]
        [trigger] = automations
        assert trigger.trigger.expect == {"crowdloop.batch.answered"}

        with worker(pool, cli_env, tmp_path / "worker.log"):
            run = run_deployment("crowdloop-active-learning/deployed", timeout=600)
            # the run's process ships its last log lines after its state is Completed; stopping the
            # worker (SIGINT to its process group) before they arrive would cut them off
            summaries = wait_for(lambda: _summaries_once_shipped(run.id), timeout=60,
                                 what="the deployed run's step summaries to reach the API")
        ran_on_dask = dask_task_counts(cluster.scheduler_address)

    assert run.state.is_completed(), (run.state, (tmp_path / "worker.log").read_text()[-3000:])
    assert run.name.startswith("deployed · ")  # flow run names carry the project
    p = Project.open(str(project_dir))
    assert [m["n_labeled"] for m in p.metrics()] == [0, 30, 50]
    assert p.has(1, keys.PAY)
    assert ran_on_dask == {"part_task": 4}, ran_on_dask  # round 1's shards were scored on the config's cluster

    names = asyncio.run(task_run_names(run.id))
    assert {"train · r0", "dispatch · r0", "select · r1", "pay · r1"} <= set(names)
    assert any(m.startswith("dispatch · r1: batch deployed-r0001 sent") for m in summaries), summaries
    assert any(m.startswith("pay · r1: ") and "approved" in m for m in summaries), summaries
    assert any("scale-out: parts run on Dask" in m for m in summaries)
