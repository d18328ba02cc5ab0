"""The ``crowdloop`` command line (typer + rich). Reference: docs/cli.md.

Exit codes: 0 ok; 2 bad input (a ``CrowdloopError``: one line, ``error: ...``); 3 an outside
failure worth a retry (network down, throttled, 5xx, timeout: ``crowdloop.errors.is_transient``);
130 interrupted (Ctrl-C); 1 a bug (the traceback is printed). Every command that touches a
project takes it as ``--project-dir/-p DIR``; commands that always took a positional DIR still do.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from crowdloop.errors import ConfigError, CrowdloopError, is_transient

app = typer.Typer(
    name="crowdloop",
    help="Active-learning labeling: fewer human labels, better labels, fair pay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


EXIT_OK, EXIT_BUG, EXIT_BAD_INPUT, EXIT_RETRY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _print_error(message: str) -> None:
    err_console.print(Text(f"error: {' '.join(message.split())}", style="bold red"), soft_wrap=True)


def _one_line_errors(fn: F) -> F:
    """Map failures to the documented exit codes; only a bug (exit 1) keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CrowdloopError as exc:
            if is_transient(exc):
                _print_error(f"{exc} (an outside failure: worth a retry)")
                raise typer.Exit(EXIT_RETRY) from None
            _print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; the project resumes where it stopped on the next run")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if not is_transient(exc):
                raise  # a bug: exit 1 with the traceback
            _print_error(f"{type(exc).__name__}: {exc} (an outside failure: worth a retry)")
            raise typer.Exit(EXIT_RETRY) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("crowdloop")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "unknown (not installed; run: pip install -e .)"
        sys.stdout.write(f"crowdloop {found}\n")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the installed version and exit."),
) -> None:
    """Active-learning labeling: fewer human labels, better labels, fair pay.

    Exit codes: 0 ok, 2 bad input, 3 an outside failure worth a retry, 130 interrupted, 1 a bug.
    See docs/cli.md.
    """


PROJECT_DIR_HELP = "project store: a directory or s3://bucket/prefix"


def _project_option(help: str = PROJECT_DIR_HELP) -> Any:
    return typer.Option(None, "--project-dir", "-p", help=help)


def _project_dir(positional: str | None, option: str | None) -> str:
    """The project directory from ``--project-dir/-p`` or the positional shorthand (not both)."""
    if positional and option and positional != option:
        raise ConfigError(f"project directory given twice ({positional!r} and --project-dir {option!r}); "
                          "expected it once")
    found = option or positional
    if not found:
        raise ConfigError("missing project directory; expected --project-dir DIR (or -p DIR)")
    return found


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _rounds_table(state: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("round", "labeled", "judgments", f"cost ({state['currency']})", "accuracy"):
        table.add_column(name, justify="right")
    for r in state["rounds"]:
        table.add_row(str(r["round"]), str(r["n_labeled"]), str(r["n_judgments"]), f"{r['cost']:.2f}", _fmt(r["accuracy"]))
    return table


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
            f"accuracy {_fmt(last['accuracy'] if last else None)}",
        )
        return Group(head, _rounds_table(state, "rounds"))

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
    budget = project.config.stopping.money_budget or forecast["total"]
    what = (f"vendor {forecast['vendor']!r} spends real money: forecast {forecast['total']:.2f} {cur} over "
            f"{len(forecast['rounds'])} round(s) from round {r}; money budget {budget:g} {cur}")
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"{what}; rerun with --yes to approve it (or lower stopping.money_budget)")
        err_console.print(what, soft_wrap=True)
        if not typer.confirm("Approve this money budget?", default=False, err=True):
            raise ConfigError("spending not approved; nothing was dispatched")
    record_approval(project, budget, by="crowdloop run --yes" if yes else "crowdloop run (terminal)", forecast=forecast)


@app.command()
@_one_line_errors
def run(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/digits.yaml"),
    project_dir: str | None = typer.Option(None, "--project-dir", "-p",
                                              help="project store; default storage.url, else projects/<project>"),
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
    console.print(_rounds_table(state, f"crowdloop {state['project']}: rounds"))
    t = state["totals"]
    last = state["rounds"][-1]["accuracy"] if state["rounds"] else None
    summary = Table(show_header=False, title="summary", title_justify="left")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("stopped because", str(state["stop_reason"]))
    summary.add_row("final test accuracy", _fmt(last))
    summary.add_row("whole pool, true labels", _fmt(state["reference_accuracy"]))
    summary.add_row("human-labeled items", str(t["n_labeled"]))
    summary.add_row("human judgments", str(t["n_judgments"]))
    summary.add_row(f"money spent ({state['currency']})", f"{t['cost']:.2f}")
    summary.add_row(f"effective wage ({state['currency']}/h)", _fmt(t["effective_hourly_wage"], 2))
    if state.get("baseline") and state["baseline"]["rounds"]:
        b = state["baseline"]["rounds"][-1]
        summary.add_row("random baseline accuracy", f"{_fmt(b['accuracy'])} at {b['n_labeled']} labels")
    console.print(summary)
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


@app.command()
@_one_line_errors
def serve(
    config: Path = typer.Argument(..., help="YAML config of the project to serve"),
    project_dir: str | None = typer.Option(None, "--project-dir", "-p",
                                           help="project store; default storage.url, else projects/<project>"),
    cron: str | None = typer.Option(None, "--cron", help="schedule for the loop, e.g. '0 6 * * *'"),
    collect_every: float = typer.Option(300.0, "--collect-every", min=1.0,
                                        help="seconds between collect runs (the fallback of answer events)"),
) -> None:
    """Serve the loop and collect deployments to the Prefect API (run and schedule them from the UI)."""
    cfg, location = _prepared_for_deployments(config, project_dir)
    from crowdloop.flows.serve import serve_project

    serve_project(cfg, location, cron=cron, collect_every_s=collect_every)


@app.command()
@_one_line_errors
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
    cfg, location = _prepared_for_deployments(config, project_dir)
    from crowdloop.flows.serve import deploy_project

    names = deploy_project(cfg, location, pool=pool, cron=cron, collect_every_s=collect_every,
                           source=str(config.absolute()), config_path=str(config.absolute()) if by_path else None)
    for name in names:
        console.print(f"deployed {name} on work pool {pool!r}")
    console.print(f"start a worker: prefect worker start --pool {pool}")


@app.command()
@_one_line_errors
def status(
    directory: str | None = typer.Argument(None, metavar="DIR", help="project store (shorthand for --project-dir)"),
    project_dir: str | None = _project_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (stable keys, see README)"),
) -> None:
    """Show a project's rounds, spending and accuracy."""
    from crowdloop.engine import Project
    from crowdloop.report import status as project_status

    state = project_status(Project.open(_project_dir(directory, project_dir)))
    if as_json:
        sys.stdout.write(json.dumps(state) + "\n")
        return
    console.print(_rounds_table(state, f"crowdloop {state['project']}"))
    console.print(f"reference accuracy: {_fmt(state['reference_accuracy'])}; stopped: {state['stop_reason']}")


@app.command()
@_one_line_errors
def workers(
    directory: str | None = typer.Argument(None, metavar="DIR", help="project store (shorthand for --project-dir)"),
    project_dir: str | None = _project_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Per worker: judgments, gold accuracy, skill, approved/rejected, paid, effective hourly wage."""
    from crowdloop.engine import Project
    from crowdloop.workers import worker_accounts

    state = worker_accounts(Project.open(_project_dir(directory, project_dir)))
    if as_json:
        sys.stdout.write(json.dumps(state) + "\n")
        return
    cur = state["currency"]
    table = Table(title=f"crowdloop {state['project']}: workers", title_justify="left")
    for name in ("worker", "judgments", "gold", "gold acc.", "skill", "approved", "rejected", f"paid ({cur})", f"{cur}/h",
                 "blocked"):
        table.add_column(name, justify="left" if name == "worker" else "right", no_wrap=name == "worker")
    for w in state["workers"]:
        table.add_row(w["worker_id"], str(w["judgments"]), str(w["gold_answers"]), _fmt(w["gold_accuracy"], 2),
                      _fmt(w["skill"], 2), str(w["approved"]), str(w["rejected"]), f"{w['paid']:.2f}",
                      _fmt(w["hourly_wage"], 2), "yes" if w["blocked"] else "")
    console.print(table)
    console.print(f"median effective wage: {_fmt(state['median_wage'], 2)} {cur}/h (target {state['target_wage']:g}); "
                  f"workers {state['n_workers']}, blocked {state['n_blocked']}, rejected assignments {state['n_rejected']}")


@app.command()
@_one_line_errors
def verify(
    directory: str | None = typer.Argument(None, metavar="DIR", help="project store (shorthand for --project-dir)"),
    project_dir: str | None = _project_option(),
) -> None:
    """Check that every record the project's records vouch for is there and unchanged.

    One line per problem on stdout (a missing record, a label-log segment gone, a model or label
    file that changed, a different pool), then exit 2; exit 0 when there is none.
    """
    from crowdloop.engine import Project
    from crowdloop.engine.verify import problems
    from crowdloop.errors import StoreError

    project = Project.open(_project_dir(directory, project_dir))
    found = problems(project, deep=True)
    for problem in found:
        sys.stdout.write(f"{problem}\n")
    if found:
        raise StoreError(f"{project.store.url}: {len(found)} problem(s) found; a run would stop on them")
    sys.stdout.write(f"ok: {len(project.rounds())} rounds, {len(project.annotations())} answers in the label log, "
                     "every record the others vouch for is there and unchanged\n")


@app.command()
@_one_line_errors
def check(
    config: Path = typer.Argument(..., help="YAML config to check"),
    project_dir: str | None = _project_option("project store to check; default storage.url, else projects/<project>"),
) -> None:
    """Check CONFIG without spending or writing anything: one line and exit 2 on the first problem.

    Checks the fields; plug-in names (sampler, aggregator, vendor, pool source, store scheme);
    sampler, vendor and model parameters against their signatures and models; the pool file,
    its columns, values and row counts; and that the project store is reachable and usable.
    """
    from crowdloop.checks import check_config
    from crowdloop.config import load_config
    from crowdloop.engine import default_location

    cfg = load_config(config)
    report = check_config(cfg, source=str(config), location=default_location(cfg, project_dir))
    console.print(f"{config}: ok; {report.summary()}", soft_wrap=True)


@app.command()
@_one_line_errors
def export(
    directory: str | None = typer.Argument(None, metavar="DIR", help="project store (shorthand for --project-dir)"),
    project_dir: str | None = _project_option(),
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, parquet, jsonl or gt-manifest (SageMaker Ground Truth)"),
    machine: bool = typer.Option(False, "--machine", help="also a machine label (the model's) for every other pool item"),
    out: str | None = typer.Option(None, "--out", "-o", help="file or store URL to write; default ./<project>-labels.<ext>"),
) -> None:
    """Write DIR's labels (item id, label, source, confidence, judgments, the pool's columns) as of its last finished round."""
    from crowdloop.engine import Project
    from crowdloop.export import FORMATS, default_export_name, write_export

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    project = Project.open(_project_dir(directory, project_dir))
    target = out or default_export_name(project, fmt)
    done = write_export(project, target, fmt, machine=machine)
    counts = ", ".join(f"{n} {source}" for source, n in sorted(done.by_source.items())) or "no labels yet"
    when = "no round finished yet" if done.finished_round is None else f"as of round {done.finished_round}"
    console.print(f"wrote {done.n_rows} labels ({counts}) {when} to {target}", soft_wrap=True)


annotators_app = typer.Typer(help="Annotators of the local annotation app (vendor 'local').", no_args_is_help=True)
app.add_typer(annotators_app, name="annotators")


def _local_desk(project_dir: str):
    """The project at ``project_dir`` and its ``local`` vendor, or a one-line error."""
    from crowdloop.engine import Project
    from crowdloop.vendors.local import LocalVendor

    project = Project.open(project_dir)
    vendor = project.vendor
    if not isinstance(vendor, LocalVendor):
        raise ConfigError(f"project {project_dir}: vendor.name is {project.config.vendor.name!r}; "
                          "the annotation app serves projects whose vendor is 'local'")
    return project, vendor


def _prefect_api_configured() -> bool:
    """Whether a Prefect server is configured (events go there; none: nothing is sent)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@app.command()
@_one_line_errors
def annotate(
    directory: str | None = typer.Argument(None, metavar="DIR",
                                              help="project store whose vendor is 'local' (shorthand for --project-dir)"),
    project_dir: str | None = _project_option("project store whose vendor is 'local'"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (keep 127.0.0.1 unless behind a proxy)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on"),
    events: bool | None = typer.Option(None, "--events/--no-events",
                                       help="emit a Prefect event on each answer (default: when PREFECT_API_URL is set)"),
) -> None:
    """Serve the annotation web app for the project's dispatched tasks."""
    import uvicorn

    from crowdloop.vendors.local_app import create_app, project_suggester

    project, vendor = _local_desk(_project_dir(directory, project_dir))
    on_answer = None
    if events or (events is None and _prefect_api_configured()):
        from crowdloop.flows.events import answer_emitter

        on_answer = answer_emitter(project.config.project, vendor)
    web = create_app(vendor, suggest=project_suggester(project), project=project.config.project, on_answer=on_answer)
    names = vendor.annotators()
    err_console.print(f"crowdloop annotate: http://{host}:{port}/ for project {project.config.project!r}; "
                      f"annotators: {', '.join(names) or 'none yet (crowdloop annotators add NAME --project-dir ...)'}"
                      f"{'; answer events to Prefect' if on_answer else ''}",
                      soft_wrap=True)
    uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command()
@_one_line_errors
def webhook(
    project_dir: str | None = _project_option("project store whose vendor is 'label_studio'"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on"),
    port: int = typer.Option(8787, "--port", min=1, max=65535, help="TCP port to listen on"),
    public_url: str | None = typer.Option(None, "--public-url",
                                          help="where Label Studio reaches this receiver; default http://HOST:PORT"),
    register: bool = typer.Option(True, "--register/--no-register",
                                  help="create (or update) the webhook on the project's Label Studio project"),
) -> None:
    """Receive Label Studio's annotation webhooks and emit Prefect events (the collect trigger listens).

    The shared secret Label Studio sends is CROWDLOOP_WEBHOOK_SECRET (a fresh one when unset).
    """
    import secrets as random_secrets

    import uvicorn

    from crowdloop.engine import Project

    project_dir = _project_dir(None, project_dir)
    project = Project.open(project_dir)
    if project.config.vendor.name != "label_studio":
        raise ConfigError(f"project {project_dir}: vendor.name is {project.config.vendor.name!r}; "
                          "the webhook receiver serves projects whose vendor is 'label_studio'")
    if not _prefect_api_configured():
        raise ConfigError("crowdloop webhook emits Prefect events: set PREFECT_API_URL to the Prefect server")
    from crowdloop.flows.events import label_studio_receiver

    secret = os.environ.get("CROWDLOOP_WEBHOOK_SECRET")
    if not secret and not register:
        raise ConfigError("--no-register: set CROWDLOOP_WEBHOOK_SECRET to the secret of the webhook you register in "
                          "Label Studio (header Authorization: Bearer <secret>)")
    secret = secret or random_secrets.token_urlsafe(32)  # registered below, never printed
    url = f"{(public_url or f'http://{host}:{port}').rstrip('/')}/label-studio"
    if register:
        project.vendor.ensure_webhook(url, headers={"Authorization": f"Bearer {secret}"})
    err_console.print(f"crowdloop webhook: {url} for project {project.config.project!r}"
                      f"{' (registered on Label Studio)' if register else ''}", soft_wrap=True)
    uvicorn.run(label_studio_receiver(project.config.project, secret=secret), host=host, port=port, log_level="warning")


@annotators_app.command("add")
@_one_line_errors
def annotators_add(
    name: str = typer.Argument(..., help="annotator name: lowercase letters, digits, '_' or '-'"),
    project_dir: str | None = _project_option("project store whose vendor is 'local'"),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="where `crowdloop annotate` is reachable"),
) -> None:
    """Create annotator NAME and print their personal link (shown once; only a hash is stored)."""
    _, vendor = _local_desk(_project_dir(None, project_dir))
    token = vendor.add_annotator(name)
    err_console.print(f"personal link for {name} (shown once, keep it private):")
    sys.stdout.write(f"{url.rstrip('/')}/?token={token}\n")


@annotators_app.command("remove")
@_one_line_errors
def annotators_remove(
    name: str = typer.Argument(..., help="annotator name to revoke"),
    project_dir: str | None = _project_option("project store whose vendor is 'local'"),
) -> None:
    """Revoke annotator NAME's link (their answers stay)."""
    _, vendor = _local_desk(_project_dir(None, project_dir))
    vendor.remove_annotator(name)
    console.print(f"removed {name}")


@annotators_app.command("list")
@_one_line_errors
def annotators_list(
    project_dir: str | None = _project_option("project store whose vendor is 'local'"),
) -> None:
    """List annotator names."""
    _, vendor = _local_desk(_project_dir(None, project_dir))
    for name in vendor.annotators():
        sys.stdout.write(name + "\n")


mturk_app = typer.Typer(help="Amazon Mechanical Turk: account balance, expiring a round's HITs.",
                        no_args_is_help=True)
app.add_typer(mturk_app, name="mturk")


def _mturk_module():
    """The MTurk vendor module through the registry, so a missing boto3 names the extra."""
    import importlib

    from crowdloop import registry

    registry.vendors.load("mturk")
    return importlib.import_module("crowdloop.vendors.mturk")


@mturk_app.command("balance")
@_one_line_errors
def mturk_balance(
    production: bool = typer.Option(False, "--production", help="the real marketplace (default: the sandbox)"),
    region: str = typer.Option("us-east-1", "--region", help="AWS region of the MTurk endpoint"),
) -> None:
    """Show the requester account's available balance (credentials from boto3's chain)."""
    amount = _mturk_module().account_balance(sandbox=not production, region=region)
    console.print(f"{'production' if production else 'sandbox'} balance: {amount:.2f} USD")


@mturk_app.command("expire-round")
@_one_line_errors
def mturk_expire_round(
    directory: str | None = typer.Argument(None, metavar="DIR",
                                              help="project store (shorthand for --project-dir; then ROUND follows)"),
    round_text: str | None = typer.Argument(None, metavar="ROUND", help="round whose open HITs to expire"),
    project_dir: str | None = _project_option(),
) -> None:
    """Expire the open HITs of ROUND (workers can no longer accept them; submitted work stays).

    Written `expire-round DIR ROUND` or `expire-round -p DIR ROUND`.
    """
    if round_text is None:  # one positional: it is ROUND, the project comes from --project-dir
        directory, round_text = None, directory
    if round_text is None or not round_text.isdigit():
        raise ConfigError(f"ROUND: expected a round number >= 0, got {round_text!r}")
    round_ = int(round_text)
    hits = _mturk_module().expire_round(_project_dir(directory, project_dir), round_)
    console.print(f"round {round_}: expired {len(hits)} HIT(s)")




pool_app = typer.Typer(help="Pools: write a configured pool as shards to a folder or an S3 prefix.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


@pool_app.command("shard")
@_one_line_errors
def pool_shard(
    config: Path = typer.Argument(..., help="YAML config whose `pool` section names the source"),
    url: str = typer.Argument(..., help="destination: a folder or s3://bucket/prefix[?endpoint_url=...]"),
    rows_per_shard: int = typer.Option(100_000, "--rows-per-shard", min=1, help="rows per .npy shard"),
) -> None:
    """Write CONFIG's pool as float32 .npy shards plus an id/label index, for `pool.source: sharded`.

    The test split is drawn later from the sharded pool exactly as from the source, so a loop
    over the sharded pool picks and evaluates the same items.
    """
    from crowdloop import registry
    from crowdloop.config import load_config
    from crowdloop.models.sharded import write_sharded_pool

    cfg = load_config(config).pool
    pool = registry.pools.load(cfg.source)(cfg)
    import numpy as np

    manifest = write_sharded_pool(url, np.asarray(pool.X), pool.ids, pool.y, classes=pool.classes,
                                  feature_names=pool.feature_names, rows_per_shard=rows_per_shard)
    console.print(f"wrote {manifest['rows']} rows in {len(manifest['shards'])} shards to {url}")


if __name__ == "__main__":  # pragma: no cover
    app()
