"""``collect_answers``: a short, scheduled flow for human waits of hours or days.

With ``collect.mode: defer`` the loop flow dispatches a round and finishes. This flow runs on
a schedule (``crowdloop serve`` gives it an interval): it polls the vendor once, publishes a
progress artifact, and when the round is complete (or its deadline has passed) starts the
next round — through the loop deployment when one is named, else as a subflow. No process
sleeps while people work; the store says where things stand, so any worker can pick it up.

Event-driven: vendors that can tell when answers arrive (the local app on each answer, Label
Studio through its webhook, ``crowdloop.flows.events``) emit ``crowdloop.batch.answered`` when a
batch may be complete, and the collect deployment's trigger runs this flow at once with
``wait_s``: it polls for up to that long while the last answers become final (the local app
returns an answer only after its undo window). The interval schedule stays as the fallback
for vendors that cannot notify and for events lost on the way.

Why not ``suspend_flow_run``: a suspended run must persist its results and be resumed with
the same code and infrastructure hours later; a fresh short run that reads the store needs
neither, survives redeploys, and is exactly what a crash-resume already exercises.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE

from crowdloop import keys
from crowdloop.engine import Project, collect, first_open_round
from crowdloop.errors import CrowdloopError, ProjectLockedError
from crowdloop.flows.logs import send_logs_to_prefect, step_summary
from crowdloop.flows.loop import _artifact_key, _retry_transient, active_learning_loop

log = logging.getLogger("crowdloop.flows.collect")


@task(name="poll", cache_policy=NO_CACHE, task_run_name="poll · r{round_}", retries=3, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=_retry_transient)
def poll_task(url: str, round_: int) -> dict[str, Any]:
    """Poll the vendor once for round ``round_``'s answers (never waits)."""
    send_logs_to_prefect()
    out = collect(Project.shared(url), round_, wait=False)
    log.info(step_summary("collect", round_, out))
    return out


def collect_run_name() -> str:
    """``<project> · collect · <two random words>``: the project as its store names it."""
    from prefect.runtime import flow_run
    from prefect.utilities.names import generate_slug

    where = str(flow_run.parameters.get("project_dir") or "crowdloop")
    try:
        project = Project.open(where).config.project
    except CrowdloopError:  # not a project (yet): the run itself reports that; name it by its folder
        project = where.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return f"{project} · collect · {generate_slug(2)}"


def _next_round_pending(loop_deployment: str) -> bool:
    """Whether the loop deployment has a run about to start or running (another collect run's).

    A run its schedule (``--cron``) placed later in the future does not count.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    busy = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    soon = datetime.now(UTC) + timedelta(seconds=60)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(loop_deployment)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                                         type=FlowRunFilterStateType(any_=busy))), limit=50)
    return any(not (run.state and run.state.is_scheduled() and run.expected_start_time
                    and run.expected_start_time > soon) for run in runs)


@flow(name="crowdloop-collect", flow_run_name=collect_run_name, validate_parameters=True)
def collect_answers(project_dir: str, loop_deployment: str | None = None, wait_s: float = 0.0) -> dict[str, Any]:
    """Poll the open round of ``project_dir``; continue the loop when its answers are in.

    ``wait_s`` > 0 (runs started by an answer event): poll again every ``collect.poll_interval_s``
    for up to that long while answers are still missing.
    """
    send_logs_to_prefect()
    project = Project.open(project_dir).register()
    url = project.store.url
    try:
        with project.running():
            r = first_open_round(project)
            if not project.has(r, keys.REFS):
                return {"status": "idle", "round": r}
            until = time.monotonic() + max(wait_s, 0.0)
            result = poll_task(url, r)
            while result.get("pending") and time.monotonic() < until:
                time.sleep(min(project.config.collect.poll_interval_s, max(until - time.monotonic(), 0.0)))
                result = poll_task(url, r)
            have, wanted = result["n_annotations"], result["expected"]
            create_progress_artifact(
                progress=100.0 * have / max(wanted, 1),
                key=_artifact_key(project.config.project, "collect-progress"),
                description=f"round {r}: {have} of {wanted} judgments collected",
            )
            if result.get("pending"):
                return {"status": "waiting", "round": r, "collected": have, "expected": wanted}
    except ProjectLockedError:
        return {"status": "busy"}  # the loop itself is running; try again at the next tick
    if loop_deployment:
        from prefect.deployments import run_deployment

        if _next_round_pending(loop_deployment):  # two answer events, two collect runs: one next round
            log.info(f"round {r} collected; the next round was started already")
            return {"status": "next round already started", "round": r}
        # The deployment's own config (its defaults, as edited in the UI) drives the next round.
        run = run_deployment(loop_deployment, parameters={"project_dir": project_dir}, timeout=0)
        log.info(f"round {r} collected; next round started: flow run {run.name!r}")
        return {"status": "next round started", "round": r, "flow_run_id": str(run.id)}
    state = active_learning_loop(project.config, project_dir)
    return {"status": "advanced", "round": r, "stop_reason": state["stop_reason"]}
