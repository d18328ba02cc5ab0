"""Pool adapters: scikit-learn's bundled sets and CSV/Parquet tables.

A ``Pool`` carries item ids, features and, when known, the ground truth. The ground truth
is only for evaluation and for the simulated crowd; the loop's samplers and aggregators
never see it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdloop.config import PoolConfig, class_name_problem
from crowdloop.errors import PoolError
from crowdloop.label_files import as_written, label_name, separator_hint


@dataclass(frozen=True, eq=False)
class Pool:
    ids: np.ndarray  # object array of str, unique
    X: np.ndarray  # 2-D float features (or a lazily read models.sharded.ShardedRows)
    y: np.ndarray | None  # object array of str class names (None entries: unknown), or None
    classes: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    # What annotators see besides the features: "text" (content holds strings), "image"
    # (content holds file paths) or "pixels" (the features are a square grayscale image).
    content_kind: str | None = None
    content: np.ndarray | None = None
    # A table's feature cells as written (object rows, None for an empty cell), kept when the
    # features are encoded from them (pool.categorical_columns, pool.missing_values: impute):
    # annotators and exports see these, the models ``X`` (crowdloop.models.tabular).
    shown: np.ndarray | None = None
    shown_columns: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> Pool:
        return Pool(
            ids=self.ids[index],
            X=self.X.take_view(index) if hasattr(self.X, "take_view") else self.X[index],
            y=None if self.y is None else self.y[index],
            classes=self.classes,
            feature_names=self.feature_names,
            content_kind=self.content_kind,
            content=None if self.content is None else self.content[index],
            shown=None if self.shown is None else self.shown[index],
            shown_columns=self.shown_columns,
        )

    @property
    def has_ground_truth(self) -> bool:
        return self.y is not None and all(v is not None for v in self.y)


def _class_key(label: str) -> str:
    return " ".join(label.split()).casefold()


def _check_classes_read(labels: list[str], where: str) -> None:
    """Classes read from the label column that differ only in case or spaces ('cat', 'cat ', 'Cat')
    became classes of their own: annotators were offered each spelling and the model learned them
    apart, silently (iris with a few such cells fell from 0.95 to 0.64 accuracy). A read class
    also follows the rule for ``pool.classes`` (a cell of spaces was a class named ' ')."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(_class_key(label), []).append(label)
    clashes = [spellings for spellings in groups.values() if len(spellings) > 1]
    if clashes:
        shown = "; ".join(" vs ".join(repr(v) for v in spellings) for spellings in clashes[:3])
        raise PoolError(f"{where}: labels {shown} differ only in case or spaces, so they would "
                        "be separate classes; fix them in the file (or, for classes that differ in case on purpose, "
                        "list every class in pool.classes)")
    for label in labels:
        problem = class_name_problem(label)
        if problem:
            raise PoolError(f"{where}: {problem}; fix the file, or leave the cell empty for an item without "
                            "ground truth")


def _finish(ids: np.ndarray, X: np.ndarray, y: np.ndarray | None, cfg: PoolConfig, feature_names,
            content_kind: str | None = None, content: np.ndarray | None = None,
            shown: np.ndarray | None = None, shown_columns: Sequence[str] = ()) -> Pool:
    if len(ids) == 0:
        raise PoolError("pool: no items")
    if len(set(ids.tolist())) != len(ids):
        raise PoolError(f"pool: id column {cfg.id_column!r} has duplicate values; item ids must be unique")
    if content is not None and content_kind in ("text", "image"):
        # An item with nothing to show is still sent, judged and paid for ``redundancy`` times.
        blank = [i for i, c in enumerate(content.tolist()) if not str(c).strip()]
        if blank:
            what = "text" if content_kind == "text" else "image"
            raise PoolError(f"pool: {len(blank)} item(s) have no {what} to show annotators (first: item {ids[blank[0]]!r}); "
                            f"expected {what} on every item: fill them in or leave them out of the pool")
    if y is not None:
        known = sorted({v for v in y.tolist() if v is not None})
        if not cfg.classes:
            _check_classes_read(known, f"pool.label_column {cfg.label_column!r}" if cfg.label_column
                                else "pool.path: class folder names")
        classes = tuple(cfg.classes) if cfg.classes else tuple(known)
        unknown = sorted(set(known) - set(classes))
        if unknown:
            near = {_class_key(c): c for c in classes}
            hint = next((f" ({v!r} differs from {near[_class_key(v)]!r} only in case or spaces: fix the file)"
                         for v in unknown if _class_key(v) in near), "")
            raise PoolError(f"pool.classes: ground-truth labels {unknown[:5]} are not in the class list {list(classes)}"
                            + hint)
    elif cfg.classes:
        classes = tuple(cfg.classes)
    else:
        raise PoolError("pool: no label_column and no classes given; set pool.classes to the class list")
    if len(classes) < 2:
        raise PoolError(f"pool: expected at least two classes, found {list(classes)}")
    if not hasattr(X, "take_view"):  # sharded pools stay in their shards
        X = np.ascontiguousarray(X)
    return Pool(ids=ids, X=X, y=y, classes=classes, feature_names=tuple(feature_names),
                content_kind=content_kind, content=content, shown=shown, shown_columns=tuple(shown_columns))


def load_sklearn_pool(cfg: PoolConfig) -> Pool:
    """digits, iris, wine or breast_cancer from scikit-learn's bundled files (no download)."""
    from sklearn import datasets

    loader = getattr(datasets, f"load_{cfg.name}")
    bunch = loader()
    X = np.asarray(bunch.data, dtype=np.float64)
    names = getattr(bunch, "target_names", None)
    target = np.asarray(bunch.target)
    if cfg.name == "digits" or names is None:
        y = np.array([str(v) for v in target], dtype=object)
    else:
        y = np.array([str(names[v]) for v in target], dtype=object)
    ids = np.array([f"{cfg.name}-{i:06d}" for i in range(len(X))], dtype=object)
    feature_names = getattr(bunch, "feature_names", None)
    if feature_names is None or len(feature_names) != X.shape[1]:
        feature_names = [f"x{i}" for i in range(X.shape[1])]
    kind = "pixels" if cfg.name == "digits" else None  # 8x8 grayscale digits: shown as images
    return _finish(ids, X, y, cfg, [str(f) for f in feature_names], content_kind=kind)


def load_table_pool(cfg: PoolConfig) -> Pool:
    """Rows of a CSV or Parquet file: feature columns, optional id and ground-truth columns."""
    import pandas as pd

    path = Path(cfg.path or "")
    if path.is_dir():
        kind = "Parquet" if cfg.source == "parquet" else "CSV"
        raise PoolError(f"pool.path: {str(path)!r} is a folder; expected a {kind} file (a folder of images is "
                        "pool.source: images, of text files text_folder)")
    if not path.is_file():
        raise PoolError(f"pool.path: file {str(path)!r} not found")
    _refuse_wrong_kind_of_file(path, cfg.source)
    try:
        if cfg.source == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=as_written(cfg.id_column, enabled=cfg.ids_as_written))
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise PoolError(f"pool.path: {str(path)!r}: not valid UTF-8 (byte {bad!r}: {exc.reason}); "
                        "expected UTF-8 "
                        "text (convert it, e.g. iconv -f latin1 -t utf-8)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise PoolError(f"pool.path: cannot read {cfg.source} file {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if frame.empty and len(frame.columns):  # else the first complaint would be "not numeric" about empty columns
        raise PoolError(f"pool.path: {path.name} has a header ({len(frame.columns)} columns) but no rows; expected one "
                        "row per item")
    content_column = cfg.text_column or cfg.image_column
    seed_column = cfg.seed_labels.column if cfg.seed_labels else None  # labels, never features (crowdloop/label_files.py)
    named = ([c for c in [cfg.id_column, cfg.label_column, content_column, seed_column] if c] + list(cfg.feature_columns or [])
             + [c for c in cfg.categorical_columns if c not in (cfg.feature_columns or [])])
    missing = [c for c in named if c not in frame.columns]
    if missing:
        raise PoolError(f"pool: column(s) {missing} not found in {path.name}; available columns: "
                        f"{list(map(str, frame.columns))}{separator_hint(frame.columns)}")
    features = list(cfg.feature_columns or [c for c in frame.columns
                                            if c not in (cfg.id_column, cfg.label_column, content_column, seed_column)])
    if cfg.feature_columns is None:
        # pandas names a column whose header cell is empty "Unnamed: 0": most often a row number that
        # to_csv(index=True) wrote. As a feature it tells the model where a row sits in the file, which
        # is the label itself in a file sorted by class (penguins: 0.988 accuracy from the row numbers alone).
        unnamed = [c for c in features if re.fullmatch(r"Unnamed: \d+", str(c))]
        if unnamed:
            position = list(frame.columns).index(unnamed[0]) + 1
            raise PoolError(f"pool.path: column {position} of {path.name} has no header (read as {unnamed[0]!r}; a row "
                            "number saved with the file?); expected a named column: name it and set pool.id_column, "
                            "or leave it out with pool.feature_columns")
    if not features and not cfg.text_column:  # a text pool's features come from model.features
        raise PoolError(f"pool.feature_columns: no feature columns left in {path.name}")
    if cfg.feature_columns is None and content_column:
        # A text or image pool shows its content; its other columns of words are the team's own
        # notes (channel, author, file date), not features: kept out, where a table refuses them.
        features = [c for c in features if c in cfg.categorical_columns or pd.api.types.is_numeric_dtype(frame[c])]
    categorical = [c for c in features if c in cfg.categorical_columns]
    non_numeric = [c for c in features if c not in categorical and not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        hint = separator_hint(frame.columns)  # a header read as one column: the separator is the cause
        raise PoolError(f"pool.feature_columns: column(s) {non_numeric} in {path.name} are not numeric"
                        + (hint or "; list columns of categories in pool.categorical_columns (one-hot encoded), or "
                           "leave them out with pool.feature_columns"))
    shown = None
    if cfg.categorical_columns or cfg.missing_values == "impute":
        from crowdloop.models.tabular import encode, shown_cells

        _check_cells(frame, features, categorical, path, refuse_gaps=cfg.missing_values == "refuse")
        shown = shown_cells(frame, features)
        X, feature_names = encode(shown, features, categorical, where=f"pool.path {path.name}")
    else:
        feature_names = features
        X = frame[features].to_numpy(dtype=np.float64) if features else np.zeros((len(frame), 0))
        if not np.isfinite(X).all():  # one pass over the numbers; the columns are named only when it fails
            _check_cells(frame, features, [], path, refuse_gaps=True)
    if cfg.id_column:
        # An empty cell would become the id 'nan' (and make a column of integer ids floats: '7.0'),
        # which no seed-label, gold or export file of the user's could name.
        empty = np.flatnonzero(frame[cfg.id_column].isna().to_numpy()
                               | (frame[cfg.id_column].astype(str).str.strip() == "").to_numpy())
        if len(empty):
            raise PoolError(f"pool.id_column: {len(empty)} row(s) of {path.name} have no value in column "
                            f"{cfg.id_column!r} (first: data row {int(empty[0]) + 1}); expected an id on every row")
        ids = np.array([str(v) for v in frame[cfg.id_column].tolist()], dtype=object)
    else:
        ids = np.array([f"row-{i:07d}" for i in range(len(frame))], dtype=object)
    y = None
    if cfg.label_column:
        y = np.array([None if pd.isna(v) else label_name(v) for v in frame[cfg.label_column].tolist()], dtype=object)
    kind = content = None
    if cfg.text_column:
        kind = "text"
        from crowdloop.models.text_pools import clean_text

        content = np.array([clean_text("" if pd.isna(v) else str(v), item=str(i), max_chars=cfg.max_text_chars)
                            for i, v in zip(ids.tolist(), frame[cfg.text_column].tolist(), strict=True)], dtype=object)
    elif cfg.image_column:
        kind = "image"
        base = path.resolve().parent
        content = np.array([str((base / str(v)).resolve()) if not pd.isna(v) else "" for v in frame[cfg.image_column].tolist()],
                           dtype=object)
    return _finish(ids, X, y, cfg, feature_names, content_kind=kind, content=content, shown=shown,
                   shown_columns=features if shown is not None else ())


def _check_cells(frame: Any, features: list[str], categorical: list[str], path: Path, *, refuse_gaps: bool) -> None:
    """Refuse empty feature cells (unless imputed) and infinite numbers, naming the columns."""
    gaps = [c for c in features if frame[c].isna().any()] if refuse_gaps else []
    if gaps:
        first = int(np.flatnonzero(frame[gaps[0]].isna().to_numpy())[0])
        raise PoolError(f"pool.feature_columns: column(s) {gaps} in {path.name} have missing values (first: column "
                        f"{gaps[0]!r}, data row {first + 1}); fill them in, set pool.missing_values: impute, or leave "
                        "them out with pool.feature_columns")
    infinite = [c for c in features if c not in categorical and np.isinf(frame[c].to_numpy(dtype=np.float64)).any()]
    if infinite:
        raise PoolError(f"pool.feature_columns: column(s) {infinite} in {path.name} hold infinite values; "
                        "expected finite numbers")


def refit_encoding(pool: Pool, categorical: Sequence[str], rows_at_start: int) -> Pool:
    """``pool`` with its table features encoded as fitted on the rows it started with: rows
    appended since neither add categories nor move medians (``crowdloop.models.tabular``)."""
    if pool.shown is None:
        return pool
    from dataclasses import replace

    from crowdloop.models.tabular import encode

    X, names = encode(pool.shown, pool.shown_columns, list(categorical), fit_rows=rows_at_start)
    return replace(pool, X=np.ascontiguousarray(X), feature_names=tuple(names))


# Leading bytes of spreadsheet workbooks: .xlsx/.ods are zip archives, .xls an OLE2 compound file.
_WORKBOOK_MAGIC = {b"PK\x03\x04": "a zip archive (an Excel .xlsx or OpenDocument .ods workbook?)",
                   b"\xd0\xcf\x11\xe0": "an Excel .xls workbook"}


def _refuse_wrong_kind_of_file(path: Path, source: str) -> None:
    """A workbook or a UTF-16 file given as a csv pool was reported as 'not valid UTF-8 ... convert
    it with iconv -f latin1', which turns neither into a CSV file."""
    if source != "csv" or path.suffix.lower() == ".zip":  # a zipped CSV: pandas reads it
        return
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode Text": UTF-16 with a byte-order mark, tab-separated
        raise PoolError(f"pool.path: {path.name} is UTF-16 text (Excel's 'Unicode Text'), not UTF-8; save it as "
                        "'CSV UTF-8 (comma delimited)'")
    what = _WORKBOOK_MAGIC.get(head)
    if what is not None:
        raise PoolError(f"pool.path: {path.name} is {what}, not a CSV file; save it as CSV UTF-8 (or Parquet, with "
                        "source: parquet) and point pool.path at that file")


def item_payload(pool: Pool, i: int) -> dict:
    """What an annotator sees for item ``i``: text, an image, or else its features as a table.

    ``kind`` is ``text`` (``text``), ``image`` with either ``path`` (a file named by the pool,
    never by a request) or ``pixels`` (a square grayscale grid, e.g. digits), or ``tabular``
    (``columns`` and ``values``).
    """
    if pool.content_kind == "text" and pool.content is not None:
        return {"kind": "text", "text": str(pool.content[i])}
    if pool.content_kind == "image" and pool.content is not None:
        return {"kind": "image", "path": str(pool.content[i])}
    if pool.shown is not None and pool.content_kind is None:  # the cells as written, not their encoding
        return {"kind": "tabular", "columns": list(pool.shown_columns),
                "values": ["" if v is None else v for v in pool.shown[i].tolist()]}
    row = pool.X[i]
    if pool.content_kind == "pixels":
        side = round(len(row) ** 0.5)
        if side * side == len(row):
            return {"kind": "image", "pixels": row.reshape(side, side).tolist()}
    # Only a tabular item shows its features: for text and images they are model inputs
    # (embeddings, thousands of pixels) that would bloat every stored task and HIT.
    return {"kind": "tabular", "columns": list(pool.feature_names), "values": row.tolist()}


def copies_of(pool: Pool) -> dict[str, str]:
    """Items that show an annotator exactly what an earlier item shows -> the first such item.

    "Shows" as ``item_payload`` decides: the same text; the same image file bytes; the same row
    of values (tabular items, pixel grids). Asking people about the same thing twice costs twice
    and buys nothing (a team's ticket pool holds many "Where is my order?"). Features alone do
    not decide for text and image items: two files with identical pixels but different bytes
    are kept apart, and so are two tickets with the same text, which are copies whatever their
    other columns say. A pool whose rows are not in memory (sharded) is not searched."""
    ids = [str(i) for i in pool.ids.tolist()]
    keys: list[Any]
    if pool.content_kind == "text" and pool.content is not None:
        keys = [str(t) for t in pool.content.tolist()]
    elif pool.content_kind == "image" and pool.content is not None:
        keys = [_file_digest(str(path)) for path in pool.content.tolist()]
    elif pool.shown is not None:  # the cells as written: two unseen categories encode alike, yet differ
        keys = [repr(row) for row in pool.shown.tolist()]
    elif isinstance(pool.X, np.ndarray) and pool.X.ndim == 2 and len(pool.X):
        rows = np.ascontiguousarray(pool.X)
        _, first, inverse = np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel(),
                                      return_index=True, return_inverse=True)
        owner = first[inverse.ravel()]
        return {ids[i]: ids[int(o)] for i, o in enumerate(owner) if o != i}
    else:
        return {}
    seen: dict[Any, str] = {}
    out: dict[str, str] = {}
    for item, key in zip(ids, keys, strict=True):
        if key is None:
            continue
        if key in seen:
            out[item] = seen[key]
        else:
            seen[key] = item
    return out


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None  # not readable here (the loader or the app names it): never a copy of another


def split_pool(pool: Pool, test_size: float, seed: int, *, group_copies: bool = False,
               rows_at_start: int | None = None) -> tuple[Pool, Pool | None]:
    """Hold out a test split (stratified when possible) from the items with ground truth.

    The split depends only on ``seed``, so every round and every rerun evaluates on the same
    items. Without ground truth there is no test split. With ``group_copies`` an item and its
    copies (``copies_of``) fall on the same side: a test item whose text a model trained on
    under another id measures memory, not accuracy. ``rows_at_start``: the pool grew by rows
    appended after its first that many (``grown_split_indices``).
    """
    # copies only matter where a test split is drawn (labels); finding them hashes image files
    copies = copies_of(pool) if group_copies and pool.y is not None else None
    if rows_at_start is not None and len(pool) > rows_at_start:
        train_idx, test_idx = grown_split_indices(pool, test_size, seed, rows_at_start, copies=copies)
    else:
        train_idx, test_idx = split_indices(pool, test_size, seed, copies=copies)
    if test_idx is None:
        return pool, None
    return pool.subset(train_idx), pool.subset(test_idx)


def in_start_order(pool: Pool, appended: Sequence[str]) -> Pool:
    """``pool`` with the rows of files added to its folder since the project started (``appended``,
    growth after growth) after the rows it started with, which keep the loader's order. A folder
    loader lists files by name, so an added file would otherwise land among the first rows and
    move every later row's place: the split, the audit reserve and the stop set are drawn over
    the first rows (``grown_split_indices``)."""
    if not appended:
        return pool
    row_of = {item: i for i, item in enumerate(pool.ids.tolist())}
    later = [row_of[item] for item in appended if item in row_of]  # a folder's other files are not rows
    first = np.setdiff1d(np.arange(len(pool)), later)
    return pool.subset(np.r_[first, later].astype(np.int64))


def grown_split_indices(pool: Pool, test_size: float, seed: int, rows_at_start: int, *,
                        copies: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The split of a pool grown by rows appended after its first ``rows_at_start``: those rows
    split exactly as they did before the pool grew; an appended row joins the side of the earlier
    row that shows the same thing (``copies``, as ``copies_of`` gives for the whole pool), else
    the test split with probability ``test_size`` by a hash of the seed and its id — so a row's
    side never depends on the rows appended with or after it, and every growth keeps every
    earlier side."""
    ids = [str(i) for i in pool.ids.tolist()]
    row_of = {item: i for i, item in enumerate(ids)}
    copies = copies or {}
    # a row's original is the first row showing the same: a first row's original is a first row too
    head_copies = {c: o for c, o in copies.items() if row_of[c] < rows_at_start}
    _, head_test = split_indices(pool.subset(np.arange(rows_at_start)), test_size, seed, copies=head_copies or None)
    if head_test is None:  # no test split when the project started: none now either
        return np.arange(len(pool)), None
    test = np.zeros(len(pool), dtype=bool)
    test[head_test] = True
    for i in range(rows_at_start, len(pool)):
        original = copies.get(ids[i])
        if original is not None:
            test[i] = test[row_of[original]]
        elif pool.y is not None and pool.y[i] is not None:
            digest = hashlib.sha256(f"crowdloop-split|{seed}|{ids[i]}".encode()).hexdigest()
            test[i] = int(digest[:13], 16) / 16**13 < test_size
    return np.flatnonzero(~test), np.flatnonzero(test)


def split_indices(pool: Pool, test_size: float, seed: int, *,
                  copies: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Row numbers of the labeling pool and of the test split (None: no test split), copying no rows.

    ``copies`` (copy -> original, as ``copies_of`` gives): the split is drawn over the groups of
    items that show the same thing, each group going where its first labeled member goes; with
    none, over the items, as always."""
    from sklearn.model_selection import train_test_split

    if pool.y is None:
        return np.arange(len(pool)), None
    known = np.flatnonzero(np.array([v is not None for v in pool.y]))
    if len(known) < 4:
        return np.arange(len(pool)), None
    drawn, group = known, None
    if copies:
        group = np.array([copies.get(i, i) for i in map(str, pool.ids[known].tolist())], dtype=object)
        _, first = np.unique(group, return_index=True)
        drawn = known[np.sort(first)]  # each group's first labeled member
    labels = pool.y[drawn].astype(str)
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 else None
    try:
        _, test_idx = train_test_split(drawn, test_size=test_size, random_state=seed, stratify=stratify)
    except ValueError:
        _, test_idx = train_test_split(drawn, test_size=test_size, random_state=seed)
    if group is not None and len(drawn) < len(known):  # the rest of each group follows its first member
        held = set(group[np.searchsorted(known, test_idx)].tolist())
        test_idx = known[np.array([g in held for g in group.tolist()], dtype=bool)]
    mask = np.ones(len(pool), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), np.sort(test_idx)
