"""``crowdloop mturk``, ``pool``, ``settle`` and ``correct``: the requester account, pool preparation,
late work and a reviewer's corrections. Reference: docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import typer

from crowdloop.cli.common import app, console, one_line_errors, project_dir_of, project_option
from crowdloop.errors import ConfigError

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
@one_line_errors
def mturk_balance(
    production: bool = typer.Option(False, "--production", help="the real marketplace (default: the sandbox)"),
    region: str = typer.Option("us-east-1", "--region", help="AWS region of the MTurk endpoint"),
) -> None:
    """Show the requester account's available balance (credentials from boto3's chain)."""
    amount = _mturk_module().account_balance(sandbox=not production, region=region)
    console.print(f"{'production' if production else 'sandbox'} balance: {amount:.2f} USD")


@mturk_app.command("expire-round")
@one_line_errors
def mturk_expire_round(
    directory: str | None = typer.Argument(None, metavar="DIR",
                                              help="project store (shorthand for --project-dir; then ROUND follows)"),
    round_text: str | None = typer.Argument(None, metavar="ROUND", help="round whose open HITs to expire"),
    project_dir: str | None = project_option(),
) -> None:
    """Expire the open HITs of ROUND (workers can no longer accept them; submitted work stays).

    Written `expire-round DIR ROUND` or `expire-round -p DIR ROUND`.
    """
    if round_text is None:  # one positional: it is ROUND, the project comes from --project-dir
        directory, round_text = None, directory
    if round_text is None or not round_text.isdigit():
        raise ConfigError(f"ROUND: expected a round number >= 0, got {round_text!r}")
    round_ = int(round_text)
    hits = _mturk_module().expire_round(project_dir_of(directory, project_dir), round_)
    console.print(f"round {round_}: expired {len(hits)} HIT(s)")




@app.command("disputed")
@one_line_errors
def disputed(
    project_dir: str | None = project_option(),
    top: int = typer.Option(20, "--top", min=1, help="how many items"),
    rank: str = typer.Option("both", "--rank", metavar="both|crowd|model",
                             help="most likely wrong by the crowd's split and the model's doubt (both), the split only "
                                  "(crowd: items whose votes differ), or the model's doubt only"),
    between: str | None = typer.Option(None, "--between", metavar="A,B",
                                       help="only items about telling two classes apart (both among the label, the "
                                            "votes and the model's guess)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON list"),
) -> None:
    """The labels most likely wrong, first: where annotators split or a model that never saw the label doubts it.

    As of the last finished round, with the votes and the model's guess; gold items and items
    already corrected are left out. Correct one with `crowdloop correct -p DIR --item ID --label CLASS`."""
    import json
    import sys

    from rich.table import Table

    from crowdloop import corrections
    from crowdloop.cli.common import fmt_value, shown
    from crowdloop.engine import Project

    project = Project.open(project_dir_of(None, project_dir))
    rows = corrections.disputed(project, top=top, rank=rank, between=corrections.check_pair(project, between))
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    if not rows:
        console.print("no label to review (as of the last finished round)")
        return
    table = Table(title=f"crowdloop {project.config.project}: labels most likely wrong", title_justify="left")
    for name in ("item", "label", "crowd's confidence", "votes", "model's guess", "model: p(label)"):
        table.add_column(name, justify="right" if name in ("crowd's confidence", "model: p(label)") else "left",
                         no_wrap=name == "item")  # an id to copy into crowdloop correct
    for row in rows:
        table.add_row(shown(row["item_id"]), shown(row["label"]), f"{row['confidence']:.2f}",
                      shown(", ".join(f"{c} ({n})" for c, n in row["votes"].items())), shown(row.get("model_label", "–")),
                      fmt_value(row.get("model_proba_of_label"), 2))
    console.print(table)
    console.print(f"correct one: crowdloop correct -p {project.store.url} --item ID --label CLASS", soft_wrap=True,
                  markup=False)


@app.command("correct")
@one_line_errors
def correct(
    project_dir: str | None = project_option(),
    item: str | None = typer.Option(None, "--item", help="the pool item's id"),
    label: str | None = typer.Option(None, "--label", help="its right class"),
    file: Path | None = typer.Option(None, "--file", help="many at once: an id,label CSV or Parquet (or a Ground Truth "
                                                         "manifest, a Label Studio export), read as seed label files are"),
    by: str | None = typer.Option(None, "--by", help="the reviewer's name, kept with each correction (default: your user name)"),
    note: str = typer.Option("", "--note", help="why, kept with each correction"),
) -> None:
    """Set items' labels by hand over the crowd's consensus (a reviewer's word is final).

    A correction wins from the next round's aggregation on: it trains the next model, labels an
    item nobody was asked about (never sent out then), becomes an audit item's certain label, and
    is exported with source `reviewed`. Checked first, all or nothing: a pool item outside the
    test split, not gold, not a copy of another item, and a class of the project.
    Recording the same corrections again records nothing.
    """
    import getpass

    from crowdloop import corrections
    from crowdloop.engine import Project
    from crowdloop.label_files import LabelRow

    from_file = file is not None and item is None and label is None
    if not from_file and (file is not None or item is None or label is None):
        raise ConfigError("expected --item ID --label CLASS, or --file FILE of id,label rows")
    project = Project.open(project_dir_of(None, project_dir))
    if file is not None:
        rows = corrections.read_file(file, ids_as_written=project.config.pool.ids_as_written)
        source = str(file)
    else:
        rows, source = [LabelRow("--item", item, label)], "crowdloop correct"
    pairs = corrections.check_rows(project, rows, source=source)
    reviewer = by if by is not None else getpass.getuser()
    key = corrections.record(project, pairs, by=reviewer, note=note)
    if key is None:
        console.print(f"already in force: {len(pairs)} correction(s), nothing recorded", soft_wrap=True)
        return
    console.print(f"recorded {len(pairs)} correction(s) by {reviewer} in {key}; they apply from the next round's "
                  "aggregation on (export source: reviewed)", soft_wrap=True, markup=False)


@app.command("settle")
@one_line_errors
def settle(
    directory: str | None = typer.Argument(None, metavar="DIR", help="project store (shorthand for --project-dir)"),
    project_dir: str | None = project_option(),
    unmatched: str = typer.Option("keep", "--unmatched", metavar="keep|approve|reject",
                                  help="paid work without a usable answer (Prolific: no answer in the app; MTurk: an answer "
                                       "that cannot be read): keep it for your review (default), approve (pay) "
                                       "or reject it (Prolific: NO_DATA; MTurk: the problem as feedback)"),
) -> None:
    """Decide work that came back after its batch closed (docs/vendors.md "Work after the deadline").

    Prolific: a participant who answered on the desk before a batch closed but returned to
    Prolific with the code after the loop's last poll is approved here, not left to Prolific's
    own approval 21 days later. Every later poll of a running project does this; run it after
    the last round (again later if some participants are still active). A submission with no
    answer in the app is listed with the money at stake and the day Prolific would approve it on
    its own, until you decide it (`--unmatched`, or Prolific's UI: the decision is booked here).
    MTurk: the same for assignments whose answers could not be used. Other vendors pay nothing
    on their own: nothing to settle.
    """
    from crowdloop.vendor import UNMATCHED_POLICIES

    if unmatched not in UNMATCHED_POLICIES:
        raise ConfigError(f"--unmatched {unmatched!r}: expected keep, approve or reject")
    from crowdloop import keys
    from crowdloop.engine import Project

    project = Project.open(project_dir_of(directory, project_dir))
    vendor = project.vendor
    settle_late = getattr(vendor, "settle_late", None)
    if settle_late is None:
        console.print(f"vendor {project.config.vendor.name!r} takes no work after a batch closed: nothing to settle")
        return
    # a batch not yet paid is still the loop's: its pay step decides its work
    open_batches = [project.record(r, keys.DISPATCH)["batch_id"] for r in project.rounds()
                    if project.has(r, keys.DISPATCH) and not project.has(r, keys.PAY)]
    made = settle_late(exclude=open_batches, unmatched=unmatched)
    currency = project.config.pay.currency
    money = round(sum(d["reward"] + d["fee"] for d in made), 2)
    rejected = sum(str(d.get("status")).upper() == "REJECTED" for d in made)
    console.print(f"settled {len(made)} late submission(s): {money:.2f} {currency} "
                  "(reward + fee), recorded under the vendor's late/ (labels not in the label log)"
                  + (f"; {rejected} rejected (no usable answer)" if rejected else ""))
    waiting = vendor.unmatched_pending() if callable(getattr(vendor, "unmatched_pending", None)) else []
    for w in waiting:
        console.print(f"  undecided: submission {w['submission_id']} (participant {w['participant_id']}): "
                      f"{w['problem']}; the platform approves it on its own after {w['auto_approval_after'] or 'its delay'} "
                      f"({w['at_stake']:.2f} {currency} with the fee)")
    if waiting:
        console.print(f"{len(waiting)} submission(s) without a usable answer await your decision: "
                      f"`crowdloop settle {project.store.url} --unmatched reject` (or approve), or the platform's UI")


pool_app = typer.Typer(help="Pools: write a configured pool as shards to a folder or an S3 prefix.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


@pool_app.command("shard")
@one_line_errors
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
