"""Labels a team already has, read from files: seed labels (``pool.seed_labels``) and gold
answers (``gold.path``).

Four shapes are read: a column of the pool file with partial labels, an ``id,label`` CSV or
Parquet file, a SageMaker Ground Truth output manifest (JSON Lines, a label attribute and its
``-metadata`` twin) and a Label Studio JSON export (a list of tasks with their annotations).
Every row keeps the line it came from, so a bad row is refused with one line naming the file
and the line, and a file with any bad row gives nothing: half an import would train on labels
the team never checked.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdloop.config import LabelFileConfig, PoolConfig
from crowdloop.errors import LabelFileError

# Fields of a manifest line / a Label Studio task's data that name the pool item, tried in order.
ID_FIELDS = ("item-id", "crowdloop_item", "id")


@dataclass(frozen=True)
class LabelRow:
    """One label as found in a file, before it is checked against the pool."""

    where: str  # "line 12" or "row 12" (Parquet)
    item_id: str | None  # None: to be matched by content (``ref``)
    label: str
    ref: str | None = None  # source-ref / source / the task's image or text, for matching by content
    confidence: float = 1.0
    n_annotations: int = 0


def file_format(cfg: LabelFileConfig) -> str:
    """The configured format, or the one the file's extension names."""
    if cfg.format != "auto":
        return cfg.format
    suffix = Path(cfg.path or "").suffix.lower()
    found = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".manifest": "gt-manifest",
             ".jsonl": "gt-manifest", ".json": "label-studio"}.get(suffix)
    if found is None:
        raise LabelFileError(f"{cfg.path}: cannot tell the format from the extension {suffix!r}; set format: csv, "
                             "parquet, gt-manifest or label-studio")
    return found


def read_label_file(cfg: LabelFileConfig, *, ids_as_written: bool = True) -> list[LabelRow]:
    """Every label row of the file ``cfg.path`` names; a malformed row fails the whole file.
    ``ids_as_written``: the pool's reading of ids (``pool.ids_as_written``), for csv files."""
    path = Path(cfg.path or "")
    if not path.is_file():
        raise LabelFileError(f"{path}: file not found")
    fmt = file_format(cfg)
    if fmt in ("csv", "parquet"):
        return _read_table(path, fmt, cfg.id_column or "id", cfg.label_column or "label", ids_as_written)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelFileError(f"{path}: cannot read: {exc}") from None
    if fmt == "gt-manifest":
        return _read_manifest(path, text, cfg)
    return _read_label_studio(path, text, cfg)


def read_pool_column(pool: PoolConfig) -> list[LabelRow]:
    """The labeled rows of ``pool.seed_labels.column`` (empty cells are unlabeled items)."""
    column = pool.seed_labels.column if pool.seed_labels else None
    path = Path(pool.path or "")
    frame = _frame(path, "parquet" if pool.source == "parquet" else "csv", pool.id_column,
                   ids_as_written=pool.ids_as_written)
    if column not in frame.columns:
        raise LabelFileError(f"{path}: pool.seed_labels.column {column!r} not found; columns: "
                             f"{list(map(str, frame.columns))}{separator_hint(frame.columns)}")
    ids = (frame[pool.id_column].tolist() if pool.id_column else [f"row-{i:07d}" for i in range(len(frame))])
    lines = _row_lines(path, len(frame), "parquet" if pool.source == "parquet" else "csv")
    return [LabelRow(where, str(item), label_text(value))
            for where, item, value in zip(lines, ids, frame[column].tolist(), strict=True) if not _missing(value)]


def label_name(value: object) -> str:
    """How a label value (a cell of a pool or label file, a class in YAML) becomes a class name:
    labels are strings everywhere, and an integral float (``3.0`` from a column with gaps) reads
    as ``"3"``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def label_text(value: object) -> str:
    """A label file's label as a class name (``label_name``), surrounding spaces dropped."""
    return label_name(value).strip()


@dataclass(frozen=True)
class Resolved:
    """Labels checked against the pool: item id -> row, and how many rows named held-out test items."""

    labels: dict[str, LabelRow]
    n_held_out: int


def resolve(rows: list[LabelRow], *, source: str, pool_ids: list[str], held_out: set[str], classes: tuple[str, ...],
            content: dict[str, str] | None = None) -> Resolved:
    """Match ``rows`` to pool items and check them; the first bad row raises, naming ``source`` and its line.

    Refused: an id (or content) not in the pool, a label not among ``classes``, an item labeled
    twice with different labels. Rows naming items of the held-out test split are counted and
    left out (the test split never trains). ``content`` maps an item's text or image path (and
    the image's file name, when unique) to its id, for rows that name no id.
    """
    known = set(pool_ids)
    composed: dict[str, str] | None = None  # built at the first id not found as written
    out: dict[str, LabelRow] = {}
    n_held_out = 0
    for row in rows:
        item = row.item_id
        if item is not None and item not in known and item not in held_out:
            nfc = unicodedata.normalize("NFC", item)
            if nfc in known or nfc in held_out:
                item = nfc
            else:
                composed = _composed_index([*pool_ids, *held_out]) if composed is None else composed
                item = composed.get(nfc, item)
        if item is None:
            item = (content or {}).get(row.ref or "")
            if item is None:
                item = (content or {}).get(_file_name(row.ref or ""))
            if item is None:
                raise LabelFileError(f"{source}: {row.where}: no pool item has the content {(row.ref or '')[:80]!r} "
                                     f"and the row names no id ({', '.join(ID_FIELDS)})")
        if row.label not in classes:
            raise LabelFileError(f"{source}: {row.where}: unknown class {row.label[:80]!r} for item {item!r}; "
                                 f"expected one of {list(classes)}")
        if item in held_out:
            n_held_out += 1
            continue
        if item not in known:
            spaced = next((i for i in pool_ids if i.strip() == item.strip()), None)  # only on the way to an error
            hint = f" (the pool has {spaced!r}: spaces differ)" if spaced is not None else ""
            raise LabelFileError(f"{source}: {row.where}: unknown item id {item[:80]!r}: not in the pool{hint}")
        first = out.get(item)
        if first is not None and first.label != row.label:
            raise LabelFileError(f"{source}: {row.where}: item {item!r} is labeled {row.label!r} here and "
                                 f"{first.label!r} at {first.where}")
        out.setdefault(item, row)
    return Resolved(out, n_held_out)


def _composed_index(ids: list[str]) -> dict[str, str]:
    """Id in Unicode's composed form (NFC) -> the id as the pool has it, where that differs and no
    other id composes the same. File names from macOS come decomposed ('cafe' + U+0301) and ids
    typed into a label file composed ('café'), or the other way round: the row was refused as an
    unknown id that printed exactly like a pool id."""
    found: dict[str, list[str]] = {}
    for item in ids:
        composed = unicodedata.normalize("NFC", item)
        if composed != item:
            found.setdefault(composed, []).append(item)
    as_given = set(ids)
    return {k: v[0] for k, v in found.items() if len(v) == 1 and k not in as_given}


def content_index(ids: list[str], content: list[str] | None) -> dict[str, str]:
    """Item text or image path -> id, plus an image's bare file name when no other item shares it."""
    if content is None:
        return {}
    index = {str(c): i for i, c in zip(ids, content, strict=True) if c}
    names = Counter(_file_name(str(c)) for c in content if c)
    for i, c in zip(ids, content, strict=True):
        name = _file_name(str(c)) if c else ""
        if name and names[name] == 1:
            index.setdefault(name, i)
    return index


# -- readers -----------------------------------------------------------------------------------


def _read_table(path: Path, fmt: str, id_column: str, label_column: str, ids_as_written: bool) -> list[LabelRow]:
    frame = _frame(path, fmt, id_column, ids_as_written=ids_as_written)
    missing = [c for c in (id_column, label_column) if c not in frame.columns]
    if missing:
        raise LabelFileError(f"{path}: column(s) {missing} not found; columns: {list(map(str, frame.columns))}"
                             f"{separator_hint(frame.columns) or ' (set id_column / label_column)'}")
    rows = []
    lines = _row_lines(path, len(frame), fmt)
    for where, item, value in zip(lines, frame[id_column].tolist(), frame[label_column].tolist(), strict=True):
        if _missing(item):
            raise LabelFileError(f"{path}: {where}: the id is empty")
        if _missing(value):
            raise LabelFileError(f"{path}: {where}: the label of item {str(item)!r} is empty")
        rows.append(LabelRow(where, str(item), label_text(value)))
    return rows


def _read_manifest(path: Path, text: str, cfg: LabelFileConfig) -> list[LabelRow]:
    """A Ground Truth output manifest: ``{"source-ref"|"source": ..., "<attr>": k, "<attr>-metadata": {"class-name": ...}}``."""
    lines: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabelFileError(f"{path}: line {n}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise LabelFileError(f"{path}: line {n}: expected a JSON object")
        lines.append((n, obj))
    # one job wrote the file: its label attribute is the one a labeled line pairs with "-metadata"
    attribute = cfg.label_attribute or next((a for _, obj in lines if (a := _label_attribute(obj))), None)
    if attribute is None:
        raise LabelFileError(f"{path}: line {lines[0][0] if lines else 1}: no label attribute with a '-metadata' twin; "
                             "set label_attribute")
    rows = []
    for n, obj in lines:
        if attribute not in obj:
            continue  # an object the job did not label (Ground Truth writes a failure-reason instead)
        meta = obj.get(f"{attribute}-metadata")
        meta = meta if isinstance(meta, dict) else {}
        label = meta.get("class-name", obj[attribute])
        if isinstance(label, (dict, list)) or label is None:
            raise LabelFileError(f"{path}: line {n}: {attribute!r} is not a single class (class-name missing)")
        confidence = meta.get("confidence", 1.0)
        rows.append(LabelRow(f"line {n}", _id_of(obj, cfg.id_column), label_text(label),
                             ref=_text(obj.get("source-ref", obj.get("source"))),
                             confidence=_unit(confidence), n_annotations=0))
    return rows


def _read_label_studio(path: Path, text: str, cfg: LabelFileConfig) -> list[LabelRow]:
    """A Label Studio JSON export: tasks with ``data`` and ``annotations[].result[]`` choices.

    Several annotations of a task are its judgments: the majority label is the seed (a tie is
    refused); cancelled (skipped) annotations and tasks without an answer are left out.
    """
    rows = []
    for line, task in _json_array(path, text):
        where = f"line {line}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelFileError(f"{path}: {where}: expected a task with a 'data' object (a Label Studio JSON export)")
        votes = []
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            try:
                choice = _choice(ann.get("result"), cfg.label_attribute)
            except ValueError as exc:
                raise LabelFileError(f"{path}: {where}: annotation {ann.get('id')!r} of task {task.get('id')!r} "
                                     f"{exc}") from None
            if choice is not None:
                votes.append(choice)
        if not votes:
            continue
        counts = Counter(votes).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            shown = ", ".join(f"{c!r}: {k}" for c, k in counts)
            raise LabelFileError(f"{path}: {where}: the annotations of task {task.get('id')!r} tie ({shown}); "
                                 "resolve it or drop the task")
        data = task["data"]
        ref = next((_text(data[k]) for k in ("image", "text") if k in data), None)
        rows.append(LabelRow(where, _id_of(data, cfg.id_column), label_text(counts[0][0]), ref=ref,
                             confidence=round(counts[0][1] / len(votes), 6), n_annotations=len(votes)))
    return rows


def _choice(results: Any, from_name: str | None) -> str | None:
    for r in results if isinstance(results, list) else []:
        if not isinstance(r, dict) or r.get("type") != "choices" or (from_name and r.get("from_name") != from_name):
            continue
        choices = (r.get("value") or {}).get("choices") if isinstance(r.get("value"), dict) else None
        if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], (str, int)):
            return str(choices[0])
        if isinstance(choices, list) and len(choices) > 1:  # a multi-choice answer was dropped without a word
            raise ValueError(f"chose {len(choices)} classes {choices[:5]!r}; expected one (resolve it or drop the "
                             "annotation)")
    return None


def _json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """The elements of a top-level JSON array, each with the line it starts on."""
    decoder = json.JSONDecoder()
    i, line = 0, 1

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(message: str, at: int) -> LabelFileError:
        return LabelFileError(f"{path}: line {text.count(chr(10), 0, at) + 1}: {message}")

    i = skip(i)
    if i >= len(text) or text[i] != "[":
        raise fail("expected a JSON list of tasks (a Label Studio JSON export)", i)
    i = skip(i + 1)
    counted = 0
    while i < len(text) and text[i] != "]":
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise fail(f"not JSON ({exc.msg})", exc.pos) from None
        yield line, obj
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i >= len(text) or text[i] != "]":
            raise fail("expected ',' or ']' between tasks", i)
    if i >= len(text):
        raise fail("the list of tasks is not closed", i)


def as_written(id_column: str | None, *, enabled: bool = True) -> dict[str, type]:
    """``dtype`` for ``pandas.read_csv``: the id column read as the text in the file. Read as
    numbers, '007' became '7', '1e3' '1000.0' and 'TRUE' 'True', so the ids of a team's own pool,
    label files and exports no longer matched the ids in their other systems. ``enabled=False``
    (``pool.ids_as_written``) is the old reading, which projects created with it keep."""
    return {id_column: str} if id_column and enabled else {}


def separator_hint(columns: Any) -> str:
    """A note for a 'column not found' error when the file is not comma-separated: a header read as
    one column named 'id;f1;label' (Excel's CSV in many locales uses ';')."""
    names = [str(c) for c in columns]
    if len(names) == 1:
        found = next((sep for sep in (";", "\t", "|") if sep in names[0]), None)
        if found is not None:
            return f" (the header is separated by {found!r}, not ','; save the file comma-separated)"
    return ""


def _frame(path: Path, fmt: str, id_column: str | None = None, *, ids_as_written: bool = True):
    import pandas as pd

    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",",
                           dtype=as_written(id_column, enabled=ids_as_written))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LabelFileError(f"{path}: cannot read as {fmt}: {str(exc).splitlines()[0]}") from None


def _row_lines(path: Path, n_rows: int, fmt: str) -> list[str]:
    """Where each data row is: its (last) line in a CSV file (quoted line breaks counted), or its row in Parquet."""
    if fmt == "parquet":
        return [f"row {i + 1}" for i in range(n_rows)]
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
        lines = [reader.line_num for row in reader if row]
    data = lines[1:]  # the header is not a row
    if len(data) != n_rows:  # pandas skipped or merged something: fall back to one line per row
        data = list(range(2, n_rows + 2))
    return [f"line {n}" for n in data]


def _label_attribute(obj: dict[str, Any]) -> str | None:
    found = [k[: -len("-metadata")] for k in obj if k.endswith("-metadata") and k[: -len("-metadata")] in obj]
    return found[0] if len(found) == 1 else None


def _id_of(obj: dict[str, Any], field: str | None) -> str | None:
    for name in (field,) if field else ID_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, (dict, list)):
            return str(value)
    return None


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _unit(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 1.0
    return min(max(v, 0.0), 1.0) if np.isfinite(v) else 1.0


def _missing(value: Any) -> bool:
    """An empty cell: None, NaN of any float width, pandas' ``NA`` (nullable ``Int64``/``string``
    columns, as Parquet files from pandas hold partial labels), ``NaT``, or only spaces."""
    import pandas as pd

    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array cell: not a missing scalar
        return False


def _file_name(ref: str) -> str:
    return ref.rstrip("/").rsplit("/", 1)[-1]
