"""``active_learning_loop``: the whole active-learning loop as one Prefect flow.

The flow walks the engine's table of steps (``ROUND_STEPS`` in ``crowdloop/engine/rounds.py``)
and runs each step as a small Prefect task over (store URL, round); the store is the source of
truth, so a rerun of the flow continues where the last one stopped. Only the steps that talk to
a vendor retry, and only on transient failures (``crowdloop.errors.is_transient``): a bad
config, bad data or a bug fails the task at once.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from crowdloop import keys, report
from crowdloop.config import LoopConfig
from crowdloop.engine import REFERENCE_STEP, ROUND_STEPS, Project, Step, default_location, run_rounds, run_step
from crowdloop.errors import CrowdloopError, is_transient
from crowdloop.storage import read_json, write_json

_STEPS: dict[str, Step] = {s.name: s for s in (REFERENCE_STEP, *ROUND_STEPS)}


def _retry_transient(task_, task_run, state) -> bool:
    """Retry network trouble, throttling, 5xx and timeouts; never a bad input or a bug."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified below; anything not transient fails the task
        return is_transient(exc)
    return False


def _step_task(step: Step):
    """A Prefect task that runs ``step`` for (store URL, round) in this process's project."""
    options: dict[str, Any] = {"name": step.name, "cache_policy": NO_CACHE, "task_run_name": f"{step.name} · r{{round_}}"}
    if step.outside:
        options.update(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient)

    def run(url: str, round_: int) -> dict[str, Any]:
        return run_step(step, Project.shared(url), round_)

    run.__name__ = run.__qualname__ = f"{step.name}_step"
    return task(**options)(run)


# One task per step; looked up at call time, so a test harness may swap one (shorter retry delays).
STEP_TASKS = {name: _step_task(step) for name, step in _STEPS.items()}


@task(name="part", cache_policy=NO_CACHE, task_run_name="{step} part {part} · r{round_}")
def part_task(url: str, step: str, round_: int, part: int) -> dict[str, Any]:
    """One part of a step that fans out (e.g. scoring one shard of the pool before ``select``)."""
    return _STEPS[step].part(Project.shared(url), round_, part)


def _run_as_task(step: Step, p: Project, r: int) -> dict[str, Any]:
    """The flow's step runner: fan out the step's parts as parallel tasks, then run the step's task."""
    if step.parts is not None and step.part is not None:
        n_parts = step.parts(p, r)
        if n_parts > 1:  # threads by default, Dask workers with scale.dask_*
            futures = [part_task.submit(p.store.url, step.name, r, k) for k in range(n_parts)]
            for future in futures:
                future.result()
    return STEP_TASKS[step.name](p.store.url, r)


def _artifact_key(project: str, what: str) -> str:
    return f"crowdloop-{project.replace('_', '-')}-{what}"


def _publish_round(p: Project, label: str) -> None:
    rows = report.round_table(p)
    create_table_artifact(
        key=_artifact_key(p.config.project, f"{label}-rounds"),
        table=[{k: ("" if v is None else v) for k, v in row.items()} for row in rows],
        description=(f"crowdloop {label}: labeled items, judgments, money ({p.config.pay.currency}), "
                     "test accuracy and workers' effective hourly wage per round"),
    )


def _publish_workers(p: Project, label: str, round_: int) -> None:
    """Per-round table: each worker's judgments, gold accuracy, skill, pay and effective wage."""
    from crowdloop.workers import worker_accounts

    state = worker_accounts(p, through_round=round_)
    create_table_artifact(
        key=_artifact_key(p.config.project, f"{label}-workers"),
        table=[{k: ("" if v is None else v) for k, v in row.items()} for row in state["workers"]],
        description=(f"crowdloop {label} after round {round_}: workers ({p.config.pay.currency}); median effective wage "
                     f"{state['median_wage']} {p.config.pay.currency}/h, target {state['target_wage']:g}"),
    )


def _summary_markdown(state: dict[str, Any]) -> str:
    t = state["totals"]
    last = state["rounds"][-1] if state["rounds"] else {}
    acc = last.get("accuracy")
    ref = state["reference_accuracy"]
    lines = [
        f"# crowdloop `{state['project']}`",
        "",
        f"* stopped: {state['stop_reason']}",
        f"* final test accuracy: {acc:.4f}" if acc is not None else "* final test accuracy: n/a",
        f"* whole pool with true labels: {ref:.4f}" if ref is not None else "* whole pool with true labels: n/a",
        f"* human-labeled items: {t['n_labeled']}, judgments: {t['n_judgments']}",
        f"* money: {t['cost']:.2f} {state['currency']}, effective wage: {t['effective_hourly_wage']} {state['currency']}/h",
        "",
        "| round | labeled | judgments | cost | accuracy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in state["rounds"]:
        a = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['round']} | {r['n_labeled']} | {r['n_judgments']} | {r['cost']:.2f} | {a} |")
    return "\n".join(lines)


def run_project_rounds(p: Project, *, label: str = "main") -> str:
    """Run ``p``'s rounds as Prefect tasks until one halts; publish the round and worker tables."""

    def publish(step: Step, r: int, out: dict[str, Any]) -> None:
        if step.name == "stop":
            _publish_round(p, label)
        elif step.name == "pay":
            _publish_workers(p, label, r)

    return run_rounds(p, call=_run_as_task, after=publish)


def with_task_runner(config: LoopConfig):
    """The loop flow with the task runner ``config.scale`` asks for (Dask when configured)."""
    if not (config.scale.dask_workers or config.scale.dask_address):
        return active_learning_loop
    try:
        from prefect_dask import DaskTaskRunner
    except ModuleNotFoundError as exc:
        raise CrowdloopError("scale.dask_*: needs the Dask extra: pip install 'crowdloop[dask]'") from exc
    if config.scale.dask_address:
        runner = DaskTaskRunner(address=config.scale.dask_address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": config.scale.dask_workers, "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None})
    return active_learning_loop.with_options(task_runner=runner)


@flow(name="crowdloop-active-learning", validate_parameters=True)
def active_learning_loop(config: LoopConfig, project_dir: str | None = None) -> dict[str, Any]:
    """Train → evaluate → select → dispatch → collect → aggregate → pay, round after round.

    ``project_dir`` (or ``config.storage.url``) is the project store; rerunning on the same
    store resumes. Returns the project status (see ``crowdloop status --json``).
    """
    project = Project.prepare(config, default_location(config, project_dir))
    with project.running():
        outcome = run_project_rounds(project)
        if config.baseline.random and not outcome.startswith("waiting"):
            twin = project.baseline()
            if read_json(twin.store, keys.PROJECT, default=None) is None:
                write_json(twin.store, keys.PROJECT, {"config": twin.config.model_dump(mode="json"), "format": 1})
            if not twin.store.exists(keys.REFERENCE):
                write_json(twin.store, keys.REFERENCE, read_json(project.store, keys.REFERENCE))
            run_project_rounds(Project.open(twin.store.url).register(), label="baseline")
        state = report.write_outputs(project)
    create_markdown_artifact(key=_artifact_key(config.project, "summary"), markdown=_summary_markdown(state),
                             description="crowdloop run summary")
    return state
