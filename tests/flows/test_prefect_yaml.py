"""prefect.yaml: a short example that references configs/digits.yaml, in step with `crowdloop deploy`."""

from __future__ import annotations

import os

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from crowdloop.config import LoopConfig, load_config
from tests.conftest import CONFIGS, REPO

SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
LOOP = next(d for d in SPEC["deployments"] if d["entrypoint"].endswith(":active_learning_loop"))
COLLECT = next(d for d in SPEC["deployments"] if d["entrypoint"].endswith(":collect_answers"))


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_entrypoint_loads_and_parameters_validate(deployment: dict) -> None:
    cwd = os.getcwd()
    os.chdir(REPO)  # entrypoints and the config path are relative to the project root, as after the pull step
    try:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        params = flow.validate_parameters(deployment["parameters"])
        if "config" in params:
            from crowdloop.flows.loop import resolve_config

            assert isinstance(resolve_config(params["config"]), LoopConfig)
    finally:
        os.chdir(cwd)
    assert "enforce_parameter_schema" not in deployment or deployment["enforce_parameter_schema"] is True


def test_the_demo_references_configs_digits_instead_of_copying_it() -> None:
    assert LOOP["parameters"]["config"] == "configs/digits.yaml"
    assert load_config(CONFIGS / "digits.yaml").project == LOOP["name"]
    text = (REPO / "prefect.yaml").read_text()
    assert "estimator" not in text and "sampler" not in text  # no config fields inline
    assert len([line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]) <= 40


def test_collect_runs_on_the_same_trigger_and_schedule_as_crowdloop_deploy() -> None:
    from crowdloop.flows.events import batch_answered_trigger
    from crowdloop.flows.serve import loop_deployment_name

    assert COLLECT["parameters"] == {"project_dir": LOOP["parameters"]["project_dir"],
                                     "loop_deployment": loop_deployment_name(LOOP["name"])}
    assert COLLECT["schedules"][0]["interval"] > 0
    [declared] = COLLECT["triggers"]
    built = batch_answered_trigger(LOOP["name"], COLLECT["parameters"])
    assert set(declared["expect"]) == built.expect
    assert declared["match"] == dict(built.match.model_dump().items())
    assert declared["parameters"] == built.parameters
