"""``crowdloop serve`` against a real Prefect server: deployments appear, a run triggered through
the API completes, deferred collection is driven by the collect deployment, artifacts exist."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from crowdloop.engine import Project
from tests.conftest import crowdloop_cmd, small_config
from tests.flows.prefect_helpers import deployment_ids

pytestmark = pytest.mark.slow


async def _artifact_keys(prefix: str) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
    return {a.key for a in arts}


def test_serve_trigger_and_deferred_collection(cli_env: dict, tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    config = small_config(project="served", **{
        "stopping.max_rounds": 2,
        "collect.mode": "defer",
        "vendor.params": {"n_workers": 12, "latency_s": 2.0},
    })
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    project_dir = tmp_path / "p"
    server = subprocess.Popen(
        [*crowdloop_cmd(), "serve", str(tmp_path / "c.yaml"), "--project-dir", str(project_dir), "--collect-every", "3"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        names = ["crowdloop-active-learning/served", "crowdloop-collect/served-collect"]
        assert len(asyncio.run(deployment_ids(names, timeout=120))) == 2, "deployments were not served"

        run = run_deployment(names[0], timeout=180)
        assert run.state.is_completed(), run.state
        # The loop dispatched round 0 and finished instead of sleeping through the wait.
        assert not (project_dir / "rounds" / "0000" / "collected.json").exists()
        assert not (project_dir / "stop.json").exists()

        # The collect deployment (triggered through the API, as its schedule would) polls until the
        # answers are in, then starts the next round through the loop deployment.
        deadline = time.monotonic() + 240
        while not (project_dir / "stop.json").exists() and time.monotonic() < deadline:
            run_deployment(names[1], timeout=120)
            time.sleep(1)
        assert (project_dir / "stop.json").exists(), "the deferred loop never finished"
        # the loop run that wrote stop.json writes metrics.json after it: wait for that run's outputs
        metrics, deadline = project_dir / "metrics.json", time.monotonic() + 120
        while time.monotonic() < deadline and not (metrics.exists() and json.loads(metrics.read_text()).get("finished")):
            time.sleep(1)
        state = json.loads(metrics.read_text())
        p = Project.open(str(project_dir))
        assert [m["n_labeled"] for m in p.metrics()] == [0, 30, 50]
        assert p.vendor.ledger()["tasks"] == 50
        keys = asyncio.run(_artifact_keys("crowdloop-served-%"))
        assert {"crowdloop-served-main-rounds", "crowdloop-served-collect-progress"} <= keys
        assert state["project"] == "served" and state["finished"] is True
        assert [row["n_labeled"] for row in state["rounds"]] == [0, 30, 50]
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
