"""A project's two deployments: the loop and the collect flow, served or on a work pool.

* the loop deployment (``crowdloop-active-learning/<project>``): manual or on ``cron``; its
  ``config`` parameter is the project's config, stored with the deployment as a typed value
  (the UI shows a form of its fields; ``enforce_parameter_schema`` rejects a bad edit before a
  run starts);
* the collect deployment (``crowdloop-collect/<project>-collect``): a trigger runs it when a
  vendor's event says a batch may be complete (``crowdloop.flows.events``), and an interval
  schedule runs it as the fallback.

``serve_project`` serves both from this process (``crowdloop serve``); ``deploy_project``
registers them on a work pool (``crowdloop deploy``), where any worker of the pool whose
environment has crowdloop installed runs them: the entrypoints are module paths
(``crowdloop.flows.loop.active_learning_loop``), so no code is uploaded or pulled.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from crowdloop.config import LoopConfig
from crowdloop.errors import ConfigError
from crowdloop.flows.collect import collect_answers
from crowdloop.flows.events import batch_answered_trigger
from crowdloop.flows.loop import active_learning_loop

LOOP_FLOW = "crowdloop-active-learning"
COLLECT_FLOW = "crowdloop-collect"
DEFAULT_COLLECT_EVERY_S = 300.0


def loop_deployment_name(project: str) -> str:
    return f"{LOOP_FLOW}/{project}"


def build_deployments(config: LoopConfig, project_dir: str, *, cron: str | None = None,
                      collect_every_s: float | None = DEFAULT_COLLECT_EVERY_S,
                      entrypoint_type: EntrypointType = EntrypointType.FILE_PATH,
                      source: str | None = None, config_path: str | None = None) -> list[RunnerDeployment]:
    """The loop deployment (manual or ``cron``) and the collect deployment (event trigger + interval).

    The loop's ``config`` parameter is ``config`` itself, or ``config_path`` (read at each run).
    """
    tags = ["crowdloop", config.project]
    origin = f" (from {source})" if source else ""
    loop = active_learning_loop.to_deployment(
        name=config.project,
        parameters={"config": config_path or config.model_dump(mode="json"), "project_dir": project_dir},
        cron=cron,
        enforce_parameter_schema=True,
        tags=tags,
        description=f"crowdloop active-learning loop for project {config.project}{origin}",
        entrypoint_type=entrypoint_type,
    )
    collect_parameters = {"project_dir": project_dir, "loop_deployment": loop_deployment_name(config.project)}
    collect = collect_answers.to_deployment(
        name=f"{config.project}-collect",
        parameters=collect_parameters,
        interval=collect_every_s,
        triggers=[batch_answered_trigger(config.project, collect_parameters)],
        enforce_parameter_schema=True,
        tags=tags,
        description=("collects the answers of a dispatched round and starts the next one: on a vendor's "
                     "batch-answered event, and on the interval as the fallback"),
        entrypoint_type=entrypoint_type,
    )
    return [loop, collect]


def serve_project(config: LoopConfig, project_dir: str, *, cron: str | None = None,
                  collect_every_s: float | None = DEFAULT_COLLECT_EVERY_S) -> None:
    """Block, serving both deployments; runs can be triggered and scheduled from the Prefect UI."""
    serve(*build_deployments(config, project_dir, cron=cron, collect_every_s=collect_every_s))


def deploy_project(config: LoopConfig, project_dir: str, *, pool: str, cron: str | None = None,
                   collect_every_s: float | None = DEFAULT_COLLECT_EVERY_S, source: str | None = None,
                   config_path: str | None = None, job_variables: dict[str, Any] | None = None) -> list[str]:
    """Create or update both deployments on work pool ``pool``; their full names.

    A missing pool is a one-line error naming the command that creates one.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            raise ConfigError(f"--pool {pool!r}: no such work pool; create it with: "
                              f"prefect work-pool create {pool} --type process") from None
    deployments = build_deployments(config, project_dir, cron=cron, collect_every_s=collect_every_s,
                                    entrypoint_type=EntrypointType.MODULE_PATH, source=source, config_path=config_path)
    for deployment in deployments:
        if job_variables:
            deployment.job_variables = dict(job_variables)
        deployment.apply(work_pool_name=pool)
    return [f"{d.flow_name}/{d.name}" for d in deployments]
