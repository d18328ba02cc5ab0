"""The Prefect flow under a real (test-harness) Prefect server: rounds, outputs, artifacts, resume."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from crowdloop.config import parse_config
from crowdloop.engine import Project
from tests.conftest import small_config

pytestmark = pytest.mark.slow


async def _artifacts(prefix: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))


def test_flow_runs_rounds_writes_outputs_and_artifacts(prefect_api_url: str, tmp_path: Path) -> None:
    from crowdloop.flows.loop import active_learning_loop

    config = parse_config(small_config(project="flowtest", **{"baseline.random": True, "stopping.max_rounds": 3}))
    state = active_learning_loop(config, str(tmp_path / "p"))

    rounds = state["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["n_labeled"] for r in rounds] == [0, 30, 50, 70]
    assert [r["n_judgments"] for r in rounds] == [0, 90, 150, 210]
    assert rounds[0]["accuracy"] is None and all(0 < r["accuracy"] <= 1 for r in rounds[1:])
    assert all(b["cost"] > a["cost"] for a, b in itertools.pairwise(rounds[1:]))
    assert state["reference_accuracy"] > 0.9
    assert state["stop_reason"] == "max_rounds=3 reached"
    assert [r["n_labeled"] for r in state["baseline"]["rounds"]][-1] == 70

    out = tmp_path / "p"
    assert json.loads((out / "metrics.json").read_text())["rounds"] == rounds
    assert (out / "metrics.csv").read_text().splitlines()[0] == "round,n_labeled,n_judgments,cost,accuracy"
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 70 and {"source", "label", "label-metadata"} <= set(labels[0])
    assert {"class-name", "confidence", "human-annotated", "creation-date", "type"} <= set(labels[0]["label-metadata"])
    assert len((out / "annotations.jsonl").read_text().splitlines()) == 210

    keys = {a.key for a in asyncio.run(_artifacts("crowdloop-flowtest-%"))}
    assert {"crowdloop-flowtest-main-rounds", "crowdloop-flowtest-baseline-rounds", "crowdloop-flowtest-summary"} <= keys
    table = [a for a in asyncio.run(_artifacts("crowdloop-flowtest-main-rounds")) if a.type == "table"]
    latest = max(table, key=lambda a: a.created)  # one version per round was published
    assert len(table) >= 4 and len(json.loads(latest.data)) == 4
    summary = max(asyncio.run(_artifacts("crowdloop-flowtest-summary")), key=lambda a: a.created)
    agreement = state["annotator_agreement"]  # three judgments per item: the annotators' agreement is reported
    assert (f"annotators' agreement: Krippendorff's alpha {agreement['alpha']} over {agreement['n_items']} items"
            in summary.data)


def test_rerun_of_a_finished_project_dispatches_nothing_and_raised_limits_resume(prefect_api_url: str, tmp_path: Path) -> None:
    from crowdloop.flows.loop import active_learning_loop

    location = str(tmp_path / "p")
    config = parse_config(small_config(project="resume", **{"stopping.max_rounds": 2}))
    first = active_learning_loop(config, location)
    tasks_before = Project.open(location).vendor.ledger()["tasks"]
    again = active_learning_loop(config, location)
    assert again["rounds"] == first["rounds"]
    assert Project.open(location).vendor.ledger()["tasks"] == tasks_before == 50

    more = parse_config(small_config(project="resume", **{"stopping.max_rounds": 3}))
    extended = active_learning_loop(more, location)
    assert extended["rounds"][:3] == first["rounds"] and len(extended["rounds"]) == 4
    assert Project.open(location).vendor.ledger()["tasks"] == 70


def test_a_cli_run_loads_the_pool_once_and_builds_one_project(prefect_api_url: str, tmp_path: Path, monkeypatch) -> None:
    """One `crowdloop run` (CLI checks, flow, every task) prepares one Project and reads the pool once."""
    import yaml
    from typer.testing import CliRunner

    from crowdloop import registry
    from crowdloop.cli import app
    from crowdloop.engine import pools
    from crowdloop.engine import project as project_module
    from crowdloop.models.datasets import load_sklearn_pool

    loads: list[str] = []

    def counting_loader(cfg):
        loads.append(cfg.name)
        return load_sklearn_pool(cfg)

    built: list[str] = []
    real_init = project_module.Project.__init__

    def counting_init(self, store, config, *args, **kwargs):
        built.append(getattr(store, "url", None))
        real_init(self, store, config, *args, **kwargs)

    monkeypatch.setitem(registry.pools._overrides, "sklearn", counting_loader)
    monkeypatch.setattr(project_module.Project, "__init__", counting_init)
    pools._load_split_cached.cache_clear()
    cfg = small_config(project="once", **{"pool.name": "wine", "sampler.initial_size": 9, "sampler.batch_size": 9,
                                          "stopping.max_rounds": 2})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "c.yaml"), "--project-dir", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert loads == ["wine"]
    assert len(built) == 1 and built[0].endswith("/p")


@pytest.mark.parametrize("failure, submits, raised", [
    (TypeError("a bug in the vendor"), 1, TypeError),             # a bug fails the task at once
    (ConnectionError("connection reset by peer"), 3, None),      # the network is retried, then the run goes on
])
def test_only_transient_failures_are_retried(failure, submits, raised, prefect_api_url: str, tmp_path: Path,
                                             monkeypatch) -> None:
    from crowdloop.flows import loop
    from crowdloop.flows.loop import active_learning_loop
    from crowdloop.vendors.simulated import SimulatedCrowd

    monkeypatch.setitem(loop.STEP_TASKS, "dispatch", loop.STEP_TASKS["dispatch"].with_options(retry_delay_seconds=0))
    calls: list[str] = []
    real_submit = SimulatedCrowd.submit

    def failing_submit(self, tasks, *, batch_id):
        calls.append(batch_id)
        if isinstance(failure, TypeError) or len(calls) < 3:
            raise failure
        return real_submit(self, tasks, batch_id=batch_id)

    monkeypatch.setattr(SimulatedCrowd, "submit", failing_submit)
    config = parse_config(small_config(project=f"retry-{type(failure).__name__.lower()}", **{"stopping.max_rounds": 1}))
    if raised is None:
        state = active_learning_loop(config, str(tmp_path / "p"))
        assert state["totals"]["n_judgments"] == 90
    else:
        with pytest.raises(raised):
            active_learning_loop(config, str(tmp_path / "p"))
    assert calls == [f"{config.project}-r0000"] * submits


def test_vendor_warnings_and_step_summaries_reach_the_flow_run_logs(prefect_api_url: str, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """The ``crowdloop`` logger tree goes to the run's logs: a vendor's warning under the task run
    that caused it, and a one-line summary per step; task runs are named by step and round."""
    from crowdloop.flows.loop import active_learning_loop
    from tests.flows.prefect_helpers import flow_run_logs, task_run_names, wait_for
    from tests.vendors.mturk_server import FakeMTurkServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with FakeMTurkServer(answer=lambda item, replica: "3" if replica == 0 else "not-a-digit") as server:
        config = parse_config(small_config(project="logged", **{
            "vendor": {"name": "mturk", "params": {"endpoint_url": server.url, "max_requests_per_second": 100,
                                                   "assignment_duration_s": 30}},
            "stopping.max_rounds": 1, "sampler.initial_size": 4, "consensus.redundancy": 2,
            # 90 s: the shortest deadline a HIT can be listed under (assignment_duration_s + 60 s)
            "consensus.method": "majority_vote", "collect.timeout_s": 90, "collect.poll_interval_s": 0.2}))
        state = active_learning_loop(config, str(tmp_path / "p"), return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id

    def shipped() -> list | None:  # Prefect ships log lines to the API in batches, after the run may have ended
        found = asyncio.run(flow_run_logs(run_id))
        return found if sum(name == "crowdloop.flows.loop" for name, _, _ in found) >= 9 else None

    logs = wait_for(shipped, timeout=60, what="the run's step summaries to reach the API")
    warnings = [m for name, level, m in logs if name == "crowdloop.vendors.mturk" and level == 30]
    assert len(warnings) == 4 and all("skipping assignment" in m and "not-a-digit" in m for m in warnings)
    summaries = [m for name, _, m in logs if name == "crowdloop.flows.loop"]
    assert [m.split(":")[0] for m in summaries[:9]] == ["reference · r0", "train · r0", "evaluate · r0", "stop · r0",
                                                        "select · r0", "dispatch · r0", "collect · r0", "aggregate · r0",
                                                        "pay · r0"]
    assert "4 of 8 judgments collected, 4 items short" in summaries[6]
    assert {"dispatch · r0", "collect · r0", "stop · r1"} <= set(asyncio.run(task_run_names(run_id)))
