"""Table columns as model features: categories one-hot, missing numbers imputed.

A team's table holds words as well as numbers (``island: Biscoe``, ``sex: female``) and empty
cells; the models and every distance-based sampler need finite numbers. The encoding is fitted
on the rows a project started with (``fit_rows``) and only applied to rows appended later, so a
grown pool gives its first rows the same features, and a model stored in an earlier round still
reads the columns it was trained on (``crowdloop.engine.evaluation.stability_kappa`` applies the
previous round's model to today's pool).

* a categorical column becomes one 0/1 column per category seen in the fitted rows
  (``island=Biscoe``), sorted; a category first seen in a later row is all zeros; a missing cell
  (``pool.missing_values: impute``) is a category of its own, ``island=(missing)``, when the
  fitted rows have one;
* a numeric column's missing cells take the fitted rows' median (0 when they have none), and a
  0/1 column ``bill_length_mm (missing)`` says which were missing, when the fitted rows have any:
  a gap can itself be evidence (a measurement not taken), and a model can only learn that from
  the indicator.

Annotators never see the encoding: they see the cells as written (``Pool.shown``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crowdloop.errors import PoolError
from crowdloop.label_files import label_name

# More categories than this in one column is an id or free text, not a category: thousands of
# one-hot columns would make every distance meaningless and the models slow.
MAX_CATEGORIES = 1000
MISSING = "(missing)"


def category(value: Any) -> str:
    """A categorical cell as its category name: 2007 and 2007.0 are one category, as labels are."""
    return label_name(value).strip()


def shown_cells(frame: Any, columns: Sequence[str]) -> np.ndarray:
    """The cells of ``columns`` of a pandas frame as object rows of plain Python values, None where
    empty: what annotators see, JSON-ready."""
    import pandas as pd

    part = frame[list(columns)].astype(object)
    for column in columns:  # a Parquet file's dates, decimals or bytes would not go into a task's JSON
        if not pd.api.types.is_numeric_dtype(frame[column]):
            part[column] = part[column].map(_plain, na_action="ignore")
    cells = part.to_numpy(dtype=object)
    cells[pd.isna(cells)] = None
    return cells


def _plain(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def encode(shown: np.ndarray, columns: Sequence[str], categorical: Sequence[str], *,
           fit_rows: int | None = None, where: str = "pool") -> tuple[np.ndarray, list[str]]:
    """The float feature matrix of ``shown`` (``shown_cells``) and its column names.

    ``categorical``: the columns to one-hot; every other column must hold numbers or missing
    cells. The categories, medians and which indicators exist come from the first ``fit_rows``
    rows (all when None) only.
    """
    import pandas as pd

    n = len(shown)
    fit = n if fit_rows is None else min(int(fit_rows), n)
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for j, column in enumerate(columns):
        cells = pd.Series(shown[:, j] if n else [], dtype=object)
        missing = cells.isna().to_numpy()
        if column in categorical:
            values = cells.map(category, na_action="ignore")
            known = sorted(set(values.iloc[:fit].dropna().tolist()))
            if len(known) > MAX_CATEGORIES:
                raise PoolError(f"{where}: pool.categorical_columns: column {column!r} holds {len(known)} distinct values; "
                                f"expected at most {MAX_CATEGORIES} categories (an id or free text is no category: "
                                "leave it out with pool.feature_columns)")
            codes = pd.Categorical(values, categories=known).codes  # -1: missing, or a category the fit never saw
            with_missing = bool(missing[:fit].any())
            block = np.zeros((n, len(known) + with_missing), dtype=np.float64)
            seen = codes >= 0
            block[np.flatnonzero(seen), codes[seen]] = 1.0
            if with_missing:
                block[missing, -1] = 1.0
            blocks.append(block)
            names += [f"{column}={c}" for c in known] + ([f"{column}={MISSING}"] if with_missing else [])
            continue
        numbers = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(numbers) & ~missing
        if bad.any():
            first = cells.iloc[int(np.flatnonzero(bad)[0])]
            raise PoolError(f"{where}: pool.feature_columns: column {column!r} holds {first!r}, not a number; expected "
                            "numbers, or list the column in pool.categorical_columns to one-hot encode it")
        observed = numbers[:fit][~missing[:fit]]
        median = float(np.median(observed)) if len(observed) else 0.0
        blocks.append(np.where(missing, median, numbers)[:, None])
        names.append(str(column))
        if missing[:fit].any():
            blocks.append(missing.astype(np.float64)[:, None])
            names.append(f"{column} {MISSING}")
    X = np.hstack(blocks) if blocks else np.zeros((n, 0), dtype=np.float64)
    return X, names
