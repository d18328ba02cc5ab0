"""The flow retries transient failures only, through the real ``crowdloop run`` (issue 21).

README and docs/reliability.md promise that the steps that talk to a vendor (dispatch, collect,
pay) are retried on transient failures (``crowdloop.errors.is_transient``: network trouble,
throttling, 5xx, timeouts) and that anything else — a bad input or a bug — fails at once. Here
the vendor fails in round 1 of a real run (``python -m tests.faults run``: ``crowdloop run``
with ``CROWDLOOP_FAULT_RAISE``; the flow's retry options are left exactly as they ship), and the
attempts are counted twice: by the injector's trace of every vendor call, and by Prefect's own
``run_count`` of the step's task run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from crowdloop import keys
from crowdloop.engine import Project
from tests.fault_harness import Scenario, clean_cli_scenario, compare, compare_records, outcome
from tests.faults import RAISE_ENV, TRACE_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean(tmp_path_factory, prefect_api_url: str) -> Scenario:
    return clean_cli_scenario("simulated", tmp_path_factory, prefect_api_url)


def _faulty_run(s: Scenario, name: str, raises: str) -> tuple[Any, str, str]:
    """``crowdloop run`` on a fresh project with ``raises`` injected: (process, trace, location)."""
    location = s.location(name)
    trace = s.workdir / name / "trace.txt"
    trace.parent.mkdir(parents=True, exist_ok=True)
    done = s.run(name, location, None, s.env(**{RAISE_ENV: raises, TRACE_ENV: str(trace)}))
    return done, trace.read_text(), location


def _task_runs(location: str) -> dict[str, Any]:
    """Task runs of the last flow run on ``location``, by name (``pay · r1``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["crowdloop-active-learning"])),
                                               sort=FlowRunSort.START_TIME_DESC, limit=50)
            mine = [r for r in runs if r.parameters.get("project_dir") == location]
            assert mine, f"no flow run on {location} among the last {len(runs)}"
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[mine[0].id])))
            return {t.name: t for t in tasks}

    return asyncio.run(read())


def test_transient_vendor_failures_are_retried_and_change_nothing(clean: Scenario) -> None:
    """In round 1 the submit fails before it acts, the poll and the top-up bonus after they acted
    (the answers handed out and lost, the bonus paid and the answer lost): each step is retried
    once by the flow, and the run ends equal to the uninterrupted one: same items, answers,
    labels, records, and the bonus paid once."""
    methods = {"SimulatedCrowd.submit": "transient", "SimulatedCrowd.poll": "transient_after",
               "SimulatedCrowd.bonus": "transient_after"}
    raises = ",".join(f"{m}@1={kind}" for m, kind in methods.items())
    done, trace, location = _faulty_run(clean, "transient", raises)
    assert done.returncode == 0, done.stderr[-3000:]
    for method, kind in methods.items():
        assert trace.count(f"raise {kind} {method}@1\n") == 1, (method, trace)
        assert trace.count(f"vendor-call {method}@1\n") == 2, (method, trace)  # the failed attempt and its retry
    tasks = _task_runs(location)
    for step in ("dispatch", "collect", "pay"):
        run = tasks[f"{step} · r1"]
        assert (run.run_count, run.state_type.value) == (2, "COMPLETED"), (step, run.run_count, run.state)
    assert tasks["aggregate · r1"].run_count == 1
    assert compare(outcome(location), clean.clean) == []
    assert compare_records(location, clean.location("clean")) == []


def test_a_bug_in_a_step_fails_the_run_at_once_without_a_retry(clean: Scenario) -> None:
    """A ``ValueError`` from the vendor's approval call (a bug, not an outside failure) in round 1:
    the pay task runs once, the run exits 1 with the traceback, nothing of round 1 is paid or
    recorded as paid; the rerun without the bug finishes equal to the uninterrupted run."""
    done, trace, location = _faulty_run(clean, "bug", "SimulatedCrowd.acknowledge@1=bug")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "InjectedBug: SimulatedCrowd.acknowledge: injected bug in round 1" in done.stderr
    assert trace.count("vendor-call SimulatedCrowd.acknowledge@1\n") == 1, trace
    pay_task = _task_runs(location)["pay · r1"]
    assert (pay_task.run_count, pay_task.state_type.value) == (1, "FAILED"), pay_task.state
    p = Project.open(location)
    assert not p.has(1, keys.PAY) and p.has(1, keys.AGGREGATE) and 2 not in p.rounds()
    round_0_paid = p.record(0, keys.PAY)["rewards"]
    assert p.vendor.ledger()["paid"] == pytest.approx(round_0_paid, abs=0.001)  # nothing of round 1 was approved

    rerun = clean.run("bug", location, None, clean.env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert compare(outcome(location), clean.clean) == []
    assert compare_records(location, clean.location("clean")) == []
