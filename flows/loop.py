"""``active_learning_loop``: the whole active-learning loop as one Prefect flow.

Each step of a round is a small task over (store URL, round); the store is the source of
truth, so a rerun of the flow continues where the last one stopped. Only steps that talk to
the outside (dispatch, collect, pay) retry, and never on permanent errors.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from crowdloop import engine, report
from crowdloop.config import LoopConfig
from crowdloop.engine import PROJECT_KEY, Project
from crowdloop.errors import CrowdloopError
from crowdloop.storage import read_json, write_json

_open_projects: dict[str, Project] = {}


def _project(url: str) -> Project:
    """One Project object per store in this process, so tasks share caches (pool, models)."""
    if url not in _open_projects:
        _open_projects[url] = Project.open(url)
    return _open_projects[url]


def _retry_transient(task_, task_run, state) -> bool:
    """Retry I/O failures, but not CrowdloopErrors: those are permanent (bad data, bad config)."""
    try:
        state.result()
    except CrowdloopError:
        return False
    except Exception:  # noqa: BLE001 - anything else (network, throttling, 5xx) is worth a retry
        return True
    return True


_IO = dict(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)


@task(name="reference", cache_policy=NO_CACHE)
def reference_task(url: str) -> dict[str, Any]:
    return engine.reference(_project(url))


@task(name="train", cache_policy=NO_CACHE)
def train_task(url: str, round_: int) -> dict[str, Any]:
    return engine.train(_project(url), round_)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(url: str, round_: int) -> dict[str, Any]:
    return engine.evaluate(_project(url), round_)


@task(name="stop-check", cache_policy=NO_CACHE)
def stop_task(url: str, round_: int, metrics: dict[str, Any]) -> str | None:
    return engine.stop_reason(_project(url), round_, metrics)


@task(name="score-shard", cache_policy=NO_CACHE)
def score_shard_task(url: str, round_: int, shard: int) -> int:
    return len(engine.score_shard(_project(url), round_, shard)["item_ids"])


@task(name="select", cache_policy=NO_CACHE)
def select_task(url: str, round_: int) -> dict[str, Any]:
    return engine.select(_project(url), round_)


@task(name="autolabel", cache_policy=NO_CACHE)
def autolabel_task(url: str, round_: int) -> dict[str, Any]:
    return engine.autolabel(_project(url), round_)


@task(name="dispatch", **_IO)
def dispatch_task(url: str, round_: int) -> dict[str, Any]:
    return engine.dispatch(_project(url), round_)


@task(name="collect", **_IO)
def collect_task(url: str, round_: int, wait: bool = True) -> dict[str, Any]:
    return engine.collect(_project(url), round_, wait=wait)


@task(name="aggregate", cache_policy=NO_CACHE)
def aggregate_task(url: str, round_: int) -> dict[str, Any]:
    return engine.aggregate(_project(url), round_)


@task(name="pay", **_IO)
def pay_task(url: str, round_: int) -> dict[str, Any]:
    return engine.pay(_project(url), round_)


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


def run_rounds(url: str, *, label: str = "main") -> str:
    """Run rounds from the first unfinished one until a stopping rule holds; return the reason."""
    p = _project(url)
    r = engine.first_open_round(p)
    while True:
        train_task(url, r)
        metrics = evaluate_task(url, r)
        reason = stop_task(url, r, metrics)
        _publish_round(p, label)
        if reason:
            return reason
        n_shards = engine.sharded_scoring(p, r)
        if n_shards > 1 and not p.store.exists(engine.round_key(r, "selection.json")):
            # Shards are scored as parallel tasks: threads by default, Dask workers with scale.dask_*.
            futures = [score_shard_task.submit(url, r, s) for s in range(n_shards)]
            for future in futures:
                future.result()
        select_task(url, r)
        if p.config.autolabel.enabled:
            autolabel_task(url, r)
        dispatch_task(url, r)
        collected = collect_task(url, r, wait=p.config.collect.mode == "wait")
        if collected.get("pending"):
            # collect.mode=defer: no process sleeps through human hours; the scheduled collect
            # flow (flows/collect.py) polls and starts the next round when answers are in.
            return f"waiting for answers in round {r}"
        aggregate_task(url, r)
        pay_task(url, r)
        _publish_workers(p, label, r)
        r += 1


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
    location = engine.default_location(config, project_dir)
    project = Project.prepare(config, location)
    _open_projects.clear()
    url = project.store.url
    with project.running():
        reference_task(url)
        outcome = run_rounds(url)
        if config.baseline.random and not outcome.startswith("waiting"):
            main = _project(url)
            twin = main.baseline()
            if read_json(twin.store, PROJECT_KEY, default=None) is None:
                write_json(twin.store, PROJECT_KEY, {"config": twin.config.model_dump(mode="json"), "format": 1})
            reference = read_json(main.store, engine.REFERENCE_KEY)
            if not twin.store.exists(engine.REFERENCE_KEY):
                write_json(twin.store, engine.REFERENCE_KEY, reference)
            run_rounds(twin.store.url, label="baseline")
        state = report.write_outputs(_project(url))
    create_markdown_artifact(key=_artifact_key(config.project, "summary"), markdown=_summary_markdown(state),
                             description="crowdloop run summary")
    return state
