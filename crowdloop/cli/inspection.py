"""``crowdloop status``, ``workers``, ``verify`` and ``export``: reading a project, never
changing it (they work on a read-only project). Reference: docs/cli.md."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from crowdloop.cli.common import (
    agreement_lines,
    app,
    console,
    directory_argument,
    err_console,
    fmt_value,
    growth_line,
    one_line_errors,
    project_dir_of,
    project_option,
    rounds_table,
    shown,
)


@app.command()
@one_line_errors
def status(
    directory: str | None = directory_argument(),
    project_dir: str | None = project_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (stable keys, see README)"),
) -> None:
    """Show a project's rounds, spending and accuracy."""
    from crowdloop.engine import Project
    from crowdloop.report import status as project_status

    state = project_status(Project.open(project_dir_of(directory, project_dir)))
    if as_json:
        sys.stdout.write(json.dumps(state) + "\n")
        return
    console.print(rounds_table(state, f"crowdloop {state['project']}"))
    console.print(Text(f"reference accuracy: {fmt_value(state['reference_accuracy'])}; stopped: ")
                  + shown(state["stop_reason"]))
    for line in agreement_lines(state["annotator_agreement"], state["store"]):
        console.print(line)
    grown = growth_line(state)
    if grown:
        console.print(grown)
    waiting = state["awaiting_decision"]
    if waiting:
        at_stake = round(sum(w["at_stake"] for w in waiting), 2)
        console.print(f"{len(waiting)} submission(s) await your decision ({at_stake:.2f} {state['currency']} at stake, "
                      f"approved by the platform on its own after {min(str(w['auto_approval_after']) for w in waiting)}): "
                      f"run `crowdloop settle {state['store']}`")


@app.command()
@one_line_errors
def workers(
    directory: str | None = directory_argument(),
    project_dir: str | None = project_option(),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Per worker: judgments, gold accuracy, agreement with reviewers' corrections, skill, approved/rejected,
    paid, effective hourly wage."""
    from crowdloop.engine import Project
    from crowdloop.workers import worker_accounts

    state = worker_accounts(Project.open(project_dir_of(directory, project_dir)))
    if as_json:
        sys.stdout.write(json.dumps(state) + "\n")
        return
    cur = state["currency"]
    table = Table(title=f"crowdloop {state['project']}: workers", title_justify="left")
    # gold and review columns only where the project has such answers: twelve columns do not fit a terminal
    gold = any(w["gold_answers"] for w in state["workers"])
    reviewed = any(w["reviewed_answers"] for w in state["workers"])
    columns: list[tuple[str, Any]] = [
        ("worker", lambda w: shown(w["worker_id"])), ("judgments", lambda w: str(w["judgments"])),
        *([("gold", lambda w: str(w["gold_answers"])), ("gold acc.", lambda w: fmt_value(w["gold_accuracy"], 2))]
          if gold else []),
        *([("reviewed", lambda w: str(w["reviewed_answers"])),
           ("rev. agr.", lambda w: fmt_value(w["reviewer_agreement"], 2))] if reviewed else []),
        ("skill", lambda w: fmt_value(w["skill"], 2)), ("approved", lambda w: str(w["approved"])),
        ("rejected", lambda w: str(w["rejected"])), (f"paid ({cur})", lambda w: f"{w['paid']:.2f}"),
        (f"{cur}/h", lambda w: fmt_value(w["hourly_wage"], 2)), ("blocked", lambda w: "yes" if w["blocked"] else ""),
    ]
    for name, _ in columns:
        table.add_column(name, justify="left" if name == "worker" else "right", no_wrap=name == "worker")
    for w in state["workers"]:
        table.add_row(*(cell(w) for _, cell in columns))
    console.print(table)
    console.print(f"median effective wage: {fmt_value(state['median_wage'], 2)} {cur}/h (target {state['target_wage']:g}); "
                  f"workers {state['n_workers']}, blocked {state['n_blocked']}, rejected assignments {state['n_rejected']}")


@app.command()
@one_line_errors
def verify(
    directory: str | None = directory_argument(),
    project_dir: str | None = project_option(),
) -> None:
    """Check that every record the project's records vouch for is there and unchanged.

    One line per problem on stdout (a missing record, a label-log segment gone, a model or label
    file that changed, a different pool), then exit 2; exit 0 when there is none.
    """
    from crowdloop.engine import Project
    from crowdloop.engine.verify import problems
    from crowdloop.errors import StoreError

    project = Project.open(project_dir_of(directory, project_dir))
    found = problems(project, deep=True)
    for problem in found:
        sys.stdout.write(f"{problem}\n")
    if found:
        raise StoreError(f"{project.store.url}: {len(found)} problem(s) found; a run would stop on them")
    sys.stdout.write(f"ok: {len(project.rounds())} rounds, {len(project.annotations())} answers in the label log, "
                     "every record the others vouch for is there and unchanged\n")



@app.command()
@one_line_errors
def export(
    directory: str | None = directory_argument(),
    project_dir: str | None = project_option(),
    fmt: str = typer.Option("csv", "--format", "-f", help="csv, parquet, jsonl or gt-manifest (SageMaker Ground Truth)"),
    machine: bool = typer.Option(False, "--machine", help="also a machine label (the model's) for every other pool item"),
    out: str | None = typer.Option(
        None, "--out", "-o",
        help="file or store URL to write, or a folder (the default name inside it); default ./<project>-labels.<ext>"),
    spreadsheet_safe: bool = typer.Option(
        False, "--spreadsheet-safe",
        help="csv: prefix text cells starting with = + - @ with ' so a spreadsheet shows them, never runs them"),
) -> None:
    """Write DIR's labels (item id, label, source, confidence, judgments, the pool's columns) as of its last finished round."""
    from crowdloop.engine import Project
    from crowdloop.export import check_options, write_export

    check_options(fmt, spreadsheet_safe=spreadsheet_safe)
    project = Project.open(project_dir_of(directory, project_dir))
    done, target = write_export(project, out, fmt, machine=machine, spreadsheet_safe=spreadsheet_safe)
    counts = ", ".join(f"{n} {source}" for source, n in sorted(done.by_source.items())) or "no labels yet"
    when = "no round finished yet" if done.finished_round is None else f"as of round {done.finished_round}"
    console.print(f"wrote {done.n_rows} labels ({counts}) {when} to {target}", soft_wrap=True)
    if done.without_pool:
        err_console.print(shown(f"note: without the pool's columns, ordered by item id: {done.without_pool}"),
                          soft_wrap=True)
