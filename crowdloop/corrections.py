"""A reviewer's corrections: labels a person in charge sets by hand, over the crowd's consensus.

Why: consensus turns several judgments into the likeliest label, and is still wrong where the
crowd shares a misreading (the class pairs ``crowdloop status`` says annotators split between).
A team reviews such items — in the export, sorted by confidence — and its reviewer's word is
final. A correction wins over the consensus from the next aggregation on, trains the next model,
and is exported with ``source: reviewed``; on an audit item it becomes that item's audit label
(certain), so the accuracy estimate uses it too. It may also name an item nobody was asked about
(it is then labeled, and never sent out), or one with an imported seed label (the correction
wins).

Refused, in one line naming the file and line (or the item), before anything is recorded: an
item not in the pool, a class not in the project, an item of the held-out test split (it measures
the model), a gold item (its answer comes from the gold set and measures workers), and a copy of
another item (``pool.duplicates: ask_once``: correct the original, which the copy follows).

Each call records one create-only file under ``corrections/`` (named by time and content); a call
whose corrections are all in force already records nothing, so a command run twice records once.
A later correction of the same item wins.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from crowdloop import keys
from crowdloop.errors import ConfigError, LabelFileError
from crowdloop.label_files import LabelRow
from crowdloop.records import _Record, utcnow
from crowdloop.storage import write_json

if TYPE_CHECKING:
    from crowdloop.engine.project import Project

PREFIX = "corrections/"
MAX_NOTE_CHARS = 500


class Correction(_Record):
    """One item's label as a reviewer set it."""

    item_id: str
    label: str
    by: str = Field(min_length=1, max_length=200)
    note: str = Field("", max_length=MAX_NOTE_CHARS)
    at: datetime


def check_rows(p: Project, rows: list[LabelRow], *, source: str) -> list[tuple[str, str]]:
    """``rows`` checked against the project; (item, label) pairs in order.

    The first bad row raises one line naming ``source`` and where the row is."""
    from crowdloop import label_files

    held_out = set() if p.test is None else set(p.test.ids.tolist())
    gold = set(p.gold_set)
    copies = p.copies
    parsed = list(rows)
    for row in parsed:
        if row.item_id in held_out:
            raise LabelFileError(f"{source}: {row.where}: item {row.item_id!r} is in the held-out test split: its label "
                                 "measures the model and is never trained on; correct pool items only")
    ids = p.pool.ids.tolist()
    content = label_files.content_index(ids, None if p.pool.content is None else p.pool.content.tolist())
    found = label_files.resolve(parsed, source=source, pool_ids=ids, held_out=set(), classes=tuple(p.classes),
                                content=content)
    out = []
    for item, row in found.labels.items():
        if item in gold:
            raise LabelFileError(f"{source}: {row.where}: item {item!r} is a gold item: its answer comes from the gold set "
                                 "and measures workers; change it there (gold.path) in a new project")
        if item in copies:
            raise LabelFileError(f"{source}: {row.where}: item {item!r} shows what {copies[item]!r} shows and follows its "
                                 f"label (pool.duplicates: ask_once); correct {copies[item]!r}")
        out.append((item, row.label))
    return out


def record(p: Project, pairs: list[tuple[str, str]], *, by: str, note: str = "") -> str | None:
    """Record checked (item, label) pairs as one create-only file; its key, or None when every pair
    is already the item's correction in force (a command run twice, or rerun after a crash)."""
    if not pairs:
        raise ConfigError("no corrections to record")
    if not by.strip():
        raise ConfigError("--by: expected the reviewer's name")
    if len(note) > MAX_NOTE_CHARS:
        raise ConfigError(f"--note: {len(note)} characters; expected at most {MAX_NOTE_CHARS}")
    in_force = latest(p)
    if all(item in in_force and in_force[item].label == label for item, label in pairs):
        return None
    now = utcnow()
    digest = hashlib.sha256(json.dumps([sorted(pairs), by, note]).encode()).hexdigest()[:16]
    key = f"{PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}-{digest}.json"  # sorts by time; a correction back to an
    body = {"corrections": [Correction(item_id=i, label=label, by=by, note=note, at=now).model_dump(mode="json")
                            for i, label in pairs]}  # earlier label is a new record, not the old one
    write_json(p.store, key, body, create_only=True)
    return key


def latest(p: Project) -> dict[str, Correction]:
    """Every item's latest correction (by time, then record key), as recorded so far."""
    return read(p)[1]


def read(p: Project) -> tuple[list[str], dict[str, Correction]]:
    """The correction records as listed now and every item's latest correction in them. An
    aggregation lists the records it read (``aggregate.json``), so ``crowdloop verify`` and a
    resuming run notice one deleted since: without it the next aggregation would quietly put
    the crowd's label back."""
    from crowdloop.storage import read_json

    keys = sorted(k for k in p.store.list(PREFIX) if k.endswith(".json"))
    if not keys:
        return [], {}
    found: list[tuple[datetime, str, Correction]] = []
    for key in keys:
        data: Any = read_json(p.store, key)
        for row in data.get("corrections", []):
            c = Correction.model_validate(row)
            found.append((c.at, key, c))
    out: dict[str, Correction] = {}
    for _, _, c in sorted(found, key=lambda t: (t[0], t[1])):
        out[c.item_id] = c
    return keys, out


def read_file(path: Path, *, ids_as_written: bool = True) -> list[LabelRow]:
    """An ``id,label`` CSV/Parquet (or a Ground Truth manifest, a Label Studio export) of corrections,
    read as seed label files are (``crowdloop/label_files.py``)."""
    from crowdloop import label_files
    from crowdloop.config import LabelFileConfig

    if not path.is_file():
        raise LabelFileError(f"{path}: not found; expected a file of corrections (id,label)")
    return label_files.read_label_file(LabelFileConfig(path=str(path)), ids_as_written=ids_as_written)


RANKINGS = ("both", "crowd", "model")


def check_pair(p: Project, between: str | None, *, field: str = "--between") -> tuple[str, str] | None:
    """``"A,B"`` as two different classes of the project (None for None), or a one-line error."""
    if between is None:
        return None
    parts = [part.strip() for part in between.split(",")]
    if len(parts) != 2 or parts[0] == parts[1]:
        raise ConfigError(f"{field}: {between!r}: expected two different classes, as A,B")
    for part in parts:
        if part not in p.classes:
            raise ConfigError(f"{field}: {part!r} is not a class of the project; expected one of {', '.join(p.classes)}")
    return parts[0], parts[1]


def involves(row: dict[str, Any], pair: tuple[str, str]) -> bool:
    """Whether a ``disputed`` row is about telling ``pair`` apart: both classes show among its
    label, its votes and the model's guess (a 1 voted 7 by someone, or a 7 the model reads as 1)."""
    shown = {row["label"], *row["votes"], row.get("model_label", row["label"])}
    return set(pair) <= shown


def pairs_in(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str], int]]:
    """The class pairs ``disputed`` rows are about (each row's label against every other class
    among its votes and the model's guess), most rows first: what a reviewer may take in turn."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        others = ({*row["votes"], row.get("model_label", row["label"])}) - {row["label"]}
        for other in others:
            pair = tuple(sorted((row["label"], other)))
            counts[pair] = counts.get(pair, 0) + 1  # type: ignore[index]
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # type: ignore[arg-type]


def disputed(p: Project, *, top: int | None = 20, rank: str = "both",
             between: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The labels a review should look at first, most likely wrong first (as of the last finished
    round), each with its votes and what the model makes of it.

    Likely wrong: the crowd split (a low consensus confidence) and a model that never saw the label
    finds it implausible (its out-of-fold probability, ``engine.quality.oof_proba``): ``rank``
    ``both`` orders by their product, ``model`` by the probability alone, ``crowd`` by the
    confidence alone and lists only items whose votes split. The model finds what a split never
    shows: a label the crowd agreed on, wrongly, because its members share a misreading
    (``benchmarks/review_value.py``). Gold items (their answer is known) and items already
    corrected are left out. ``between``: only the rows about telling two classes apart
    (``involves``); ``top`` None: every row."""
    from crowdloop.engine.auditing import audit_labels
    from crowdloop.engine.quality import oof_proba
    from crowdloop.export import last_finished_round

    if rank not in RANKINGS:
        raise ConfigError(f"--rank: {rank!r}: expected one of {', '.join(RANKINGS)}")
    finished = last_finished_round(p)
    if finished is None:
        return []
    votes: dict[str, dict[str, list[str]]] = {}
    for a in p.annotations():
        if a.round <= finished:
            votes.setdefault(a.item_id, {}).setdefault(a.label, []).append(a.worker_id)
    skip = set(p.gold_set) | set(latest(p))
    labels = {label.item_id: (label.label, label.confidence) for label in p.round_labels(finished, keys.LABELS) or []
              if label.source != "reviewed"}
    labels.update({a.item_id: (a.label, max(a.proba.values(), default=1.0)) for a in audit_labels(p, finished + 1).values()
                   if a.source != "reviewed"})
    model: dict[str, dict[str, float]] = {}
    oof = oof_proba(p, finished + 1) if rank != "crowd" else None
    if oof is not None:
        ids, proba, classes = oof
        model = {item: dict(zip(classes, map(float, row), strict=True)) for item, row in zip(ids, proba, strict=True)}
    rows = []
    for item, (label, confidence) in labels.items():
        if item in skip or item not in votes or (len(votes[item]) < 2 and item not in model):
            continue
        row: dict[str, Any] = {"item_id": item, "label": label, "confidence": round(confidence, 4)}
        score = confidence
        if item in model:
            seen = model[item]
            row["model_label"] = max(seen, key=seen.get)
            row["model_proba_of_label"] = round(seen.get(label, 0.0), 4)
            score = seen.get(label, 0.0) * (confidence if rank == "both" else 1.0)
        row["score"] = round(score, 4)
        row["votes"] = {c: len(ws) for c, ws in sorted(votes[item].items(), key=lambda kv: (-len(kv[1]), kv[0]))}
        row["workers"] = {c: sorted(ws) for c, ws in sorted(votes[item].items())}
        rows.append(row)
    if between is not None:
        rows = [row for row in rows if involves(row, between)]
    rows.sort(key=lambda row: (row["score"], row["item_id"]))
    return rows if top is None else rows[:top]
