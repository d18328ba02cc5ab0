"""Serve a project's deployments (loop + scheduled collect) from one process."""

from __future__ import annotations

from prefect import serve

from crowdloop.config import LoopConfig
from crowdloop.flows.collect import collect_answers
from crowdloop.flows.loop import active_learning_loop

LOOP_FLOW = "crowdloop-active-learning"


def build_deployments(config: LoopConfig, project_dir: str, *, cron: str | None = None,
                      collect_every_s: float | None = 300.0) -> list:
    """The loop deployment (manual or ``cron``) and the collect deployment (every ``collect_every_s``)."""
    loop = active_learning_loop.to_deployment(
        name=config.project,
        parameters={"config": config.model_dump(mode="json"), "project_dir": project_dir},
        cron=cron,
        enforce_parameter_schema=True,
        tags=["crowdloop", config.project],
        description=f"crowdloop active-learning loop for project {config.project}",
    )
    collect = collect_answers.to_deployment(
        name=f"{config.project}-collect",
        parameters={"project_dir": project_dir, "loop_deployment": f"{LOOP_FLOW}/{config.project}"},
        interval=collect_every_s,
        enforce_parameter_schema=True,
        tags=["crowdloop", config.project],
        description="polls annotation vendors; starts the next round when a round's answers are in",
    )
    return [loop, collect]


def serve_project(config: LoopConfig, project_dir: str, *, cron: str | None = None,
                  collect_every_s: float | None = 300.0) -> None:
    """Block, serving both deployments; runs can be triggered and scheduled from the Prefect UI."""
    serve(*build_deployments(config, project_dir, cron=cron, collect_every_s=collect_every_s))
