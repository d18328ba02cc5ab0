"""Approval before real money: MTurk production pauses the run for a form; the sandbox never does.

MTurk is the fake MTurk server (real boto3 client, real HTTP); "production" is
``sandbox: false`` pointed at it, which is what makes the vendor spend real money.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from crowdloop import keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine.approval import approval_needed, forecast_spend, latest_approval
from tests.conftest import crowdloop_cmd, small_config
from tests.vendors.mturk_server import FakeMTurkServer

pytestmark = pytest.mark.slow


def mturk_config(project: str, url: str, *, sandbox: bool, **overrides: Any) -> dict:
    return small_config(project=project, **{
        "vendor": {"name": "mturk", "params": {"endpoint_url": url, "sandbox": sandbox, "max_requests_per_second": 100,
                                               "assignment_duration_s": 60}},  # twice the pilot's 30 s
        "stopping.max_rounds": 3, "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.redundancy": 2,
        "consensus.method": "majority_vote", "collect.timeout_s": 120, "collect.poll_interval_s": 0.05,
        "pay.pilot_seconds_per_task": 30, **overrides})


async def _paused_run(flow_name: str, timeout: float) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            if runs:
                return runs[0]
            await asyncio.sleep(0.5)
    raise AssertionError("the run never paused")


async def _run_inputs(flow_run_id) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        found = await client.filter_flow_run_input(flow_run_id=flow_run_id, key_prefix="", limit=50, exclude_keys=set())
    return {i.key: i.decoded_value for i in found}


def _run_in_thread(config, location: str) -> tuple[threading.Thread, dict]:
    from crowdloop.flows.loop import active_learning_loop

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["state"] = active_learning_loop(config, location)
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.parametrize("answer", [{"approve": True, "money_budget": 0.9}, {"approve": False, "money_budget": 5.0}],
                         ids=["approved-with-a-smaller-budget", "declined"])
def test_production_mturk_pauses_for_the_form_before_the_first_dispatch(answer: dict, prefect_api_url: str,
                                                                        tmp_path: Path, monkeypatch) -> None:
    from prefect.flow_runs import resume_flow_run

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # the fake server's key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    with FakeMTurkServer(answer=lambda item, replica: "3") as server:
        name = f"realmoney-{'yes' if answer['approve'] else 'no'}"
        config = parse_config(mturk_config(name, server.url, sandbox=False))
        location = str(tmp_path / "p")
        thread, box = _run_in_thread(config, location)
        run = asyncio.run(_paused_run("crowdloop-active-learning", timeout=180))
        assert server.ledger()["n_hits"] == 0  # nothing was sent before the approval
        inputs = asyncio.run(_run_inputs(run.id))
        description = next(v for k, v in inputs.items() if k.endswith("-description"))
        schema = next(v for k, v in inputs.items() if k.endswith("-schema"))
        assert "spends real money" in description and "| 0 | 6 | 12 |" in description  # round 0: 6 items, 12 judgments
        assert set(schema["properties"]) == {"approve", "money_budget"}
        resume_flow_run(run.id, run_input=answer)
        thread.join(timeout=300)
        ledger = server.ledger()
    assert "error" not in box, box.get("error")
    p = Project.open(location)
    if answer["approve"]:
        record = latest_approval(p)
        assert record["money_budget"] == 0.9 and record["by"].startswith("Prefect UI (flow run ")
        assert p.config.stopping.money_budget == 0.9  # the edited budget holds the run
        assert 0 < p.spent(len(p.rounds())) <= 0.9 and ledger["n_hits"] > 0
        # the budget reserves each judgment's worst case (reward, top-up bonus, MTurk's minimum fees):
        # it cut the 14 items the unbudgeted forecast planned, and the run never went over it
        assert ledger["n_hits"] < 14
    else:
        assert latest_approval(p) is None and ledger["n_hits"] == 0 and not p.has(0, keys.DISPATCH)


def test_sandbox_simulated_and_local_never_need_an_approval(tmp_path: Path) -> None:
    for name, vendor in [("sandbox", {"name": "mturk", "params": {"endpoint_url": "http://127.0.0.1:9", "sandbox": True}}),
                         ("simulated", {"name": "simulated", "params": {"n_workers": 5}}),
                         ("local", {"name": "local", "params": {}})]:
        p = Project.prepare(parse_config(small_config(project=name, vendor=vendor)), str(tmp_path / name))
        assert approval_needed(p, 0) is None, name
    production = mturk_config("production", "http://127.0.0.1:9", sandbox=False)
    p = Project.prepare(parse_config(production), str(tmp_path / "production"))
    forecast = approval_needed(p, 0)
    assert forecast == forecast_spend(p, 0)
    # 3 rounds: 6, 4, 4 items at 2 judgments; reward for 30 s at 12/h = 0.10, MTurk's fee 20 % (min 0.01)
    assert [(row["items"], row["judgments"]) for row in forecast["rounds"]] == [(6, 12), (4, 8), (4, 8)]
    assert forecast["total"] == pytest.approx(28 * 0.12)


def test_cli_needs_yes_for_real_money_and_records_the_approval(cli_env: dict, tmp_path: Path) -> None:
    with FakeMTurkServer(answer=lambda item, replica: "3") as server:
        cfg = mturk_config("cliyes", server.url, sandbox=False, **{"stopping.money_budget": 2.0, "stopping.max_rounds": 2})
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        env = {**cli_env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        command = [*crowdloop_cmd(), "run", str(tmp_path / "c.yaml"), "-p", str(tmp_path / "p")]
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.startswith("error: vendor 'mturk' spends real money: forecast ")
        assert "rerun with --yes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert server.ledger()["n_hits"] == 0
        approved = subprocess.run([*command, "--yes"], env=env, capture_output=True, text=True, timeout=300,
                                  stdin=subprocess.DEVNULL)
        assert approved.returncode == 0, approved.stderr[-2000:]
        assert 0 < server.ledger()["n_hits"] <= 10  # 6 + 4 planned; the budget's worst-case reserve may shrink them
    p = Project.open(str(tmp_path / "p"))
    record = latest_approval(p)
    assert record["money_budget"] == 2.0 and record["by"] == "crowdloop run --yes"
    assert 0 < p.spent(2) <= 2.0
