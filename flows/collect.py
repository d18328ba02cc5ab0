"""``collect_answers``: a short, scheduled flow for human waits of hours or days.

With ``collect.mode: defer`` the loop flow dispatches a round and finishes. This flow runs on
a schedule (``crowdloop serve`` gives it an interval): it polls the vendor once, publishes a
progress artifact, and when the round is complete (or its deadline has passed) starts the
next round — through the loop deployment when one is named, else as a subflow. No process
sleeps while people work; the store says where things stand, so any worker can pick it up.

Why not ``suspend_flow_run``: a suspended run must persist its results and be resumed with
the same code and infrastructure hours later; a fresh short run that reads the store needs
neither, survives redeploys, and is exactly what a crash-resume already exercises.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_progress_artifact
from prefect.cache_policies import NO_CACHE

from crowdloop import keys
from crowdloop.engine import Project, collect, first_open_round
from crowdloop.errors import ProjectLockedError
from crowdloop.flows.loop import _artifact_key, _retry_transient, active_learning_loop


@task(name="poll", cache_policy=NO_CACHE, task_run_name="poll · r{round_}", retries=3, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=_retry_transient)
def poll_task(url: str, round_: int) -> dict[str, Any]:
    """Poll the vendor once for round ``round_``'s answers (never waits)."""
    return collect(Project.shared(url), round_, wait=False)


@flow(name="crowdloop-collect")
def collect_answers(project_dir: str, loop_deployment: str | None = None) -> dict[str, Any]:
    """Poll the open round of ``project_dir`` once; continue the loop when its answers are in."""
    project = Project.open(project_dir).register()
    url = project.store.url
    try:
        with project.running():
            r = first_open_round(project)
            if not project.has(r, keys.REFS):
                return {"status": "idle", "round": r}
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

        run = run_deployment(
            loop_deployment,
            parameters={"config": project.config.model_dump(mode="json"), "project_dir": project_dir},
            timeout=0,
        )
        return {"status": "next round started", "round": r, "flow_run_id": str(run.id)}
    state = active_learning_loop(project.config, project_dir)
    return {"status": "advanced", "round": r, "stop_reason": state["stop_reason"]}
