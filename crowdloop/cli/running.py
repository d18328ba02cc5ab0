"""``crowdloop run``, ``check``, ``serve`` and ``deploy``: a config file in, a loop out (here,
or as Prefect deployments). Reference: docs/cli.md."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from crowdloop.cli.common import (
    CONFIG_PROJECT_DIR_HELP,
    agreement_lines,
    app,
    console,
    err_console,
    estimate_text,
    fmt_value,
    one_line_errors,
    project_option,
    rounds_table,
    shown,
)
from crowdloop.errors import ConfigError, CrowdloopError


def _live_view(project) -> Callable[[], Any]:
    from crowdloop.engine import phase as phase_of
    from crowdloop.report import status

    def render() -> Any:
        try:
            state = status(project)
            phase = phase_of(project)
        except (CrowdloopError, OSError, ValueError) as exc:  # a record being written; show the last good view
            return Text(f"reading progress… ({exc.__class__.__name__})")
        last = state["rounds"][-1] if state["rounds"] else None
        t = state["totals"]
        head = Text.assemble(
            ("crowdloop ", "bold"), (state["project"], "bold cyan"), f"  {phase}\n",
            f"labeled {t['n_labeled']}  judgments {t['n_judgments']}  money {t['cost']:.2f} {state['currency']}  "
            f"accuracy {fmt_value(last['accuracy'] if last else None)}"
            + (f"  estimated {estimate_text(last)}" if last and last.get("estimated_accuracy") is not None else ""),
        )
        return Group(head, rounds_table(state, "rounds"))

    return render


def _prefect_process_defaults() -> None:
    """Settings for a command that may start Prefect's temporary API server in this process.

    Set when the command runs, never at import: the temporary server takes 10–30 s to start on a
    small machine (Prefect's 20 s default is too tight), and usage telemetry cannot leave an
    offline machine. A user's own values win.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _approve_real_money(project, *, yes: bool) -> None:
    """Before a run on a vendor that spends real money: the forecast, and a yes (``--yes`` or the terminal)."""
    from crowdloop import keys
    from crowdloop.engine import first_open_round
    from crowdloop.engine.approval import covered, forecast_spend, record_approval, spends_real_money

    if not spends_real_money(project) or covered(project):
        return
    r = first_open_round(project)
    if project.has(r, keys.DISPATCH):
        r += 1
    forecast = forecast_spend(project, r)
    cur = forecast["currency"]
    budget = project.config.stopping.money_budget or forecast["worst_case"]  # covers every planned item
    what = (f"vendor {forecast['vendor']!r} spends real money: forecast {forecast['total']:.2f} {cur} "
            f"(at most {forecast['worst_case']:.2f} with every top-up bonus) over "
            f"{len(forecast['rounds'])} round(s) from round {r}; money budget {budget:g} {cur}")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"{what}; rerun with --yes to approve it (or lower stopping.money_budget)")
        err_console.print(what, soft_wrap=True)
        if not typer.confirm("Approve this money budget?", default=False, err=True):
            raise ConfigError("spending not approved; nothing was dispatched")
    record_approval(project, budget, by="crowdloop run --yes" if yes else "crowdloop run (terminal)", forecast=forecast)


@app.command()
@one_line_errors
def run(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/digits.yaml"),
    project_dir: str | None = project_option(CONFIG_PROJECT_DIR_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's logs on the console"),
    yes: bool = typer.Option(False, "--yes", "-y",
                             help="approve the money budget of a vendor that spends real money (MTurk production)"),
) -> None:
    """Run (or resume) the active-learning loop of CONFIG until its stopping rule holds."""
    from crowdloop.config import load_config
    from crowdloop.engine import Project, default_location

    _stop_on_sigterm()
    _prefect_process_defaults()  # before anything may reach Prefect (a named secret block is read in prepare)
    cfg = load_config(config)
    location = default_location(cfg, project_dir)
    project = Project.prepare(cfg, location, source=str(config))  # one-line errors name the config file
    with project.running():  # fail fast, before Prefect starts, if another run holds the project
        pass
    _approve_real_money(project, yes=yes)  # the flow would pause for the Prefect UI; here the terminal answers
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # The temporary API server logs event-flush cancellations when it shuts down after the
        # run; they are noise on the console (the run's own logs stay in the Prefect UI).
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
        # A failed task's traceback goes to the Prefect UI, not the console: a permanent fault
        # (bad credentials, missing bucket) ends the run with the one-line error below.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from crowdloop.flows.loop import active_learning_loop

    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.update(active_learning_loop(cfg, location))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            failure.append(exc)

    worker = threading.Thread(target=target, name="crowdloop-flow", daemon=True)
    view = _live_view(project)  # the project prepared above: one per process, the pool loaded once
    with Live(get_renderable=view, console=console, refresh_per_second=2, transient=console.is_terminal):
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    if failure:
        raise failure[0]
    _print_summary(result, location)


def _stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, systemd, Docker, a CI runner) end a run the way Ctrl-C does.

    Python's default for SIGTERM is to die on the spot, skipping ``atexit``, so the temporary
    Prefect API server (a uvicorn child process the flow starts) was left running under init.
    As a KeyboardInterrupt in the main thread, the run unwinds and the server is stopped; the
    store needs nothing more, a rerun resumes where the run was stopped.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (a test calling the command in a thread)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)


def _print_summary(state: dict[str, Any], location: str) -> None:
    console.print(rounds_table(state, f"crowdloop {state['project']}: rounds"))
    t = state["totals"]
    last = state["rounds"][-1]["accuracy"] if state["rounds"] else None
    summary = Table(show_header=False, title="summary", title_justify="left")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("stopped because", shown(state["stop_reason"]))
    summary.add_row("final test accuracy", fmt_value(last))
    final = state["rounds"][-1] if state["rounds"] else {}
    if final.get("estimated_accuracy") is not None:  # from the human-labeled audit (``evaluation``)
        summary.add_row("estimated accuracy (95 % CI)", estimate_text(final))
    grown = state.get("pool_growth")
    if grown:  # what the figures drawn at the start (audit reserve, reference) speak for
        summary.add_row("pool items: at the start / now", f"{grown['items_at_start']:,} / {grown['items_now']:,}")
    summary.add_row("whole pool, true labels", fmt_value(state["reference_accuracy"]))
    summary.add_row("human-labeled items", str(t["n_labeled"]))
    if t.get("n_imported"):
        summary.add_row("imported labels (pool.seed_labels)", str(t["n_imported"]))
    if t.get("n_reviewed"):
        summary.add_row("of them set by a reviewer (crowdloop correct)", str(t["n_reviewed"]))
    summary.add_row("human judgments", str(t["n_judgments"]))
    summary.add_row(f"money spent ({state['currency']})", f"{t['cost']:.2f}")
    summary.add_row(f"effective wage ({state['currency']}/h)", fmt_value(t["effective_hourly_wage"], 2))
    if state.get("baseline") and state["baseline"]["rounds"]:
        b = state["baseline"]["rounds"][-1]
        summary.add_row("random baseline accuracy", f"{fmt_value(b['accuracy'])} at {b['n_labeled']} labels")
    console.print(summary)
    for line in agreement_lines(state.get("annotator_agreement"), state["store"]):
        console.print(line)
    console.print(f"outputs in {location}: metrics.json, metrics.csv, learning_curve.png, labels.jsonl, annotations.jsonl")


def _prepared_for_deployments(config: Path, project_dir: str | None):
    """CONFIG loaded and checked, and the project's location as runs elsewhere will see it."""
    from crowdloop.config import load_config
    from crowdloop.engine import Project, default_location

    _prefect_process_defaults()
    cfg = load_config(config)
    location = default_location(cfg, project_dir)
    if "://" not in location:
        location = str(Path(location).absolute())  # runs start in their own working directory
    Project.prepare(cfg, location, source=str(config))  # one-line errors name the config file
    return cfg, location


def _check_cron(cron: str | None) -> None:
    """Prefect's own rule for a schedule, checked before the project is opened (it was a traceback
    from inside the deployment, after the pool had been loaded)."""
    if cron is None:
        return
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ConfigError(f"--cron {cron!r}: not a cron schedule; expected five fields (minute hour day month weekday), "
                          "e.g. '0 6 * * *', or @hourly/@daily/@weekly") from None


@app.command()
@one_line_errors
def serve(
    config: Path = typer.Argument(..., help="YAML config of the project to serve"),
    project_dir: str | None = project_option(CONFIG_PROJECT_DIR_HELP),
    cron: str | None = typer.Option(None, "--cron", help="schedule for the loop, e.g. '0 6 * * *'"),
    collect_every: float = typer.Option(300.0, "--collect-every", min=1.0,
                                        help="seconds between collect runs (the fallback of answer events)"),
) -> None:
    """Serve the loop and collect deployments to the Prefect API (run and schedule them from the UI)."""
    _check_cron(cron)
    cfg, location = _prepared_for_deployments(config, project_dir)
    from crowdloop.flows.serve import serve_project

    serve_project(cfg, location, cron=cron, collect_every_s=collect_every)


@app.command()
@one_line_errors
def deploy(
    config: Path = typer.Argument(..., help="YAML config of the project to deploy"),
    pool: str = typer.Option(..., "--pool", help="Prefect work pool whose workers run the flows"),
    project_dir: str | None = typer.Option(None, "--project-dir", "-p",
                                              help="project store as the workers see it; default projects/<project>"),
    cron: str | None = typer.Option(None, "--cron", help="schedule for the loop, e.g. '0 6 * * *'"),
    collect_every: float = typer.Option(300.0, "--collect-every", min=1.0,
                                        help="seconds between collect runs (the fallback of answer events)"),
    by_path: bool = typer.Option(False, "--config-by-path",
                                 help="store CONFIG's path in the deployment (read at each run) instead of its content"),
) -> None:
    """Create the loop and collect deployments of CONFIG on work pool POOL (needs PREFECT_API_URL).

    Start a worker with `prefect worker start --pool POOL` in an environment where crowdloop is
    installed; runs, schedules and approvals are then in the Prefect UI.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ConfigError("crowdloop deploy needs a Prefect server: set PREFECT_API_URL "
                          "(e.g. prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api)")
    _check_cron(cron)
    cfg, location = _prepared_for_deployments(config, project_dir)
    from crowdloop.flows.serve import deploy_project

    names = deploy_project(cfg, location, pool=pool, cron=cron, collect_every_s=collect_every,
                           source=str(config.absolute()), config_path=str(config.absolute()) if by_path else None)
    for name in names:
        console.print(f"deployed {name} on work pool {pool!r}")
    console.print(f"start a worker: prefect worker start --pool {pool}")



@app.command()
@one_line_errors
def check(
    config: Path = typer.Argument(..., help="YAML config to check"),
    project_dir: str | None = project_option("project store to check; default storage.url, else projects/<project>"),
) -> None:
    """Check CONFIG without spending or writing anything: one line and exit 2 on the first problem.

    Checks the fields; plug-in names (sampler, aggregator, vendor, pool source, store scheme);
    sampler, vendor and model parameters against their signatures and models; the pool file,
    its columns, values and row counts; seed labels and the gold file against the pool; and
    that the project store is reachable and usable.
    """
    from crowdloop.checks import check_config
    from crowdloop.config import load_config
    from crowdloop.engine import default_location
    from crowdloop.engine.project import check_project_data
    from crowdloop.errors import CrowdloopError

    cfg = load_config(config)
    location = default_location(cfg, project_dir)
    report = check_config(cfg, source=str(config), location=location)
    try:
        check_project_data(cfg, location)
    except CrowdloopError as exc:
        raise type(exc)(f"{config}: {exc}") from None
    console.print(f"{config}: ok; {report.summary()}", soft_wrap=True)
