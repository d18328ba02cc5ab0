"""``active_learning_loop``: the whole active-learning loop as one Prefect flow.

The flow walks the engine's table of steps (``ROUND_STEPS`` in ``crowdloop/engine/rounds.py``)
and runs each step as a small Prefect task over (store URL, round); the store is the source of
truth, so a rerun of the flow continues where the last one stopped. Only the steps that talk to
a vendor retry, and only on transient failures (``crowdloop.errors.is_transient``): a bad
config, bad data or a bug fails the task at once.

Task runs are named ``<step> · r<round>`` and log a one-line summary of their record; flow runs
are named after the project. The parts of a step (shard scoring) run where ``config.scale``
says (``PartsRunner``), whoever started the flow; after ``evaluate``, a vendor that spends real
money waits for a person's approval (``crowdloop.flows.approval``).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from crowdloop import report
from crowdloop.config import LoopConfig, ScaleConfig, load_config
from crowdloop.engine import (
    REFERENCE_STEP,
    ROUND_STEPS,
    Project,
    Step,
    default_location,
    run_rounds,
    run_step,
    start_baseline,
)
from crowdloop.errors import CrowdloopError, is_transient
from crowdloop.flows.logs import send_logs_to_prefect, step_summary

_STEPS: dict[str, Step] = {s.name: s for s in (REFERENCE_STEP, *ROUND_STEPS)}
log = logging.getLogger("crowdloop.flows.loop")


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
        send_logs_to_prefect()
        out = run_step(step, Project.shared(url), round_)
        log.info(step_summary(step.name, round_, out))
        return out

    run.__name__ = run.__qualname__ = f"{step.name}_step"
    return task(**options)(run)


# One task per step; looked up at call time, so a test harness may swap one (shorter retry delays).
STEP_TASKS = {name: _step_task(step) for name, step in _STEPS.items()}


@task(name="part", cache_policy=NO_CACHE, task_run_name="{step} part {part} · r{round_}")
def part_task(url: str, step: str, round_: int, part: int) -> dict[str, Any]:
    """One part of a step that fans out (e.g. scoring one shard of the pool before ``select``)."""
    send_logs_to_prefect()  # also on a Dask worker
    return _STEPS[step].part(Project.shared(url), round_, part)


class PartsRunner:
    """Where the parts of a step run: the flow's threads, or the Dask cluster ``scale`` names.

    The task runner comes from the project's config inside the flow, not from the flow's
    decorator, so every way of starting the flow (``crowdloop run``, ``serve``, ``deploy``,
    ``prefect deploy``, a trigger) scales out the same way. The cluster starts at the first
    fan-out and closes with the run (``close``); steps themselves run in the flow's process,
    where the project is already open.
    """

    def __init__(self, scale: ScaleConfig) -> None:
        self.scale = scale
        self._dask: Any = None
        self._stack = ExitStack()

    @property
    def on_dask(self) -> bool:
        return bool(self.scale.dask_workers or self.scale.dask_address)

    def submit(self, task_: Any, **parameters: Any) -> PrefectFuture:
        if not self.on_dask:
            return task_.submit(**parameters)
        if self._dask is None:
            self._dask = self._stack.enter_context(dask_task_runner(self.scale))
            where = self.scale.dask_address or f"a local cluster of {self.scale.dask_workers} worker process(es)"
            log.info(f"scale-out: parts run on Dask, {where}")
        return self._dask.submit(task_, parameters)

    def close(self) -> None:
        self._stack.close()


def dask_task_runner(scale: ScaleConfig):
    """The Dask task runner for ``scale``: an existing scheduler, or a local cluster of processes."""
    try:
        from prefect_dask import DaskTaskRunner
    except ModuleNotFoundError as exc:
        raise CrowdloopError("scale.dask_*: needs the Dask extra: pip install 'crowdloop[dask]'") from exc
    if scale.dask_address:
        return DaskTaskRunner(address=scale.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": scale.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def _step_runner(parts: PartsRunner):
    def run_as_task(step: Step, p: Project, r: int) -> dict[str, Any]:
        """Fan out the step's parts as parallel tasks, then run the step's own task."""
        if step.parts is not None and step.part is not None:
            n_parts = step.parts(p, r)
            if n_parts > 1:
                futures = [parts.submit(part_task, url=p.store.url, step=step.name, round_=r, part=k)
                           for k in range(n_parts)]
                for future in futures:
                    future.result()
        return STEP_TASKS[step.name](p.store.url, r)

    return run_as_task


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
        *([f"* annotators' agreement: Krippendorff's alpha {'n/a' if a['alpha'] is None else a['alpha']} over "
           f"{a['n_items']} items (first asks)"]
          if (a := state.get("annotator_agreement")) else []),
        "",
        "| round | labeled | judgments | cost | accuracy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in state["rounds"]:
        a = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        lines.append(f"| {r['round']} | {r['n_labeled']} | {r['n_judgments']} | {r['cost']:.2f} | {a} |")
    return "\n".join(lines)


def run_project_rounds(p: Project, *, label: str = "main", parts: PartsRunner | None = None) -> str:
    """Run ``p``'s rounds as Prefect tasks until one halts; publish the round and worker tables.

    Before a round's stop check, a vendor that spends real money waits for a person's approval
    of the forecast spend (``crowdloop.flows.approval``); a refusal ends the run there.
    """
    from crowdloop.flows.approval import approve_spending

    runner = parts or PartsRunner(p.config.scale)

    def publish(step: Step, r: int, out: dict[str, Any]) -> str | None:
        if step.name == "evaluate":
            return approve_spending(p.store.url, r)
        if step.name == "stop":
            _publish_round(Project.shared(p.store.url), label)
        elif step.name == "pay":
            _publish_workers(Project.shared(p.store.url), label, r)
        return None

    try:
        return run_rounds(p, call=_step_runner(runner), after=publish)
    finally:
        if parts is None:
            runner.close()


def resolve_config(config: LoopConfig | str) -> LoopConfig:
    """The flow's ``config`` parameter: a config, or the path/URL of a YAML config file."""
    return config if isinstance(config, LoopConfig) else load_config(config)


def _project_of(config: Any) -> str:
    """The project name in a run's ``config`` parameter, however it was given (for run names)."""
    if isinstance(config, LoopConfig):
        return config.project
    if isinstance(config, dict) and isinstance(config.get("project"), str):
        return config["project"]
    if isinstance(config, str):
        try:
            return load_config(config).project
        except CrowdloopError:
            return config.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    return "crowdloop"


def loop_run_name() -> str:
    """``<project> · <two random words>``: the project shows in the runs list of the UI."""
    from prefect.runtime import flow_run
    from prefect.utilities.names import generate_slug

    return f"{_project_of(flow_run.parameters.get('config'))} · {generate_slug(2)}"


@flow(name="crowdloop-active-learning", flow_run_name=loop_run_name, validate_parameters=True)
def active_learning_loop(config: LoopConfig | str, project_dir: str | None = None) -> dict[str, Any]:
    """Train → evaluate → select → dispatch → collect → aggregate → pay, round after round.

    ``config`` is a project config or the path/URL of its YAML file; ``project_dir`` (or
    ``config.storage.url``) is the project store, and rerunning on the same store resumes.
    Pool scoring scales out as ``config.scale`` says. Returns the project status (see
    ``crowdloop status --json``).
    """
    send_logs_to_prefect()
    config = resolve_config(config)
    project = Project.prepare(config, default_location(config, project_dir))
    parts = PartsRunner(config.scale)
    try:
        with project.running():
            outcome = run_project_rounds(project, parts=parts)
            project = Project.shared(project.store.url)  # an approval may have set a new money budget
            if config.baseline.random and not outcome.startswith("waiting"):
                twin_url = start_baseline(project)  # raised limits on a resume: the twin follows
                run_project_rounds(Project.open(twin_url).register(), label="baseline", parts=parts)
            state = report.write_outputs(project)
    finally:
        parts.close()
    log.info(f"{config.project}: {outcome}")
    create_markdown_artifact(key=_artifact_key(config.project, "summary"), markdown=_summary_markdown(state),
                             description="crowdloop run summary")
    return state
