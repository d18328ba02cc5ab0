"""prefect.yaml: entrypoints load, parameters pass the flows' schemas, and the demo stays in sync."""

from __future__ import annotations

import os

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from crowdloop.config import LoopConfig, load_config
from tests.conftest import CONFIGS, REPO

SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_entrypoint_loads_and_parameters_validate(deployment: dict) -> None:
    cwd = os.getcwd()
    os.chdir(REPO)  # entrypoints are relative to the project root, as after the pull step
    try:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
    finally:
        os.chdir(cwd)
    params = flow.validate_parameters(deployment["parameters"])
    assert deployment["enforce_parameter_schema"] is True
    if "config" in params:
        assert isinstance(params["config"], LoopConfig)


def test_demo_deployment_matches_configs_digits() -> None:
    loop = next(d for d in SPEC["deployments"] if d["entrypoint"].endswith(":active_learning_loop"))
    assert LoopConfig.model_validate(loop["parameters"]["config"]) == load_config(CONFIGS / "digits.yaml")


def test_collect_deployment_points_at_the_loop_deployment() -> None:
    loop = next(d for d in SPEC["deployments"] if d["entrypoint"].endswith(":active_learning_loop"))
    collect = next(d for d in SPEC["deployments"] if d["entrypoint"].endswith(":collect_answers"))
    assert collect["parameters"]["loop_deployment"] == f"crowdloop-active-learning/{loop['name']}"
    assert collect["schedules"][0]["interval"] > 0
