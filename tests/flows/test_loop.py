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
