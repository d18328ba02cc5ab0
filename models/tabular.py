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


def cell(value: Any) -> Any:
    """A table cell as plain Python (JSON-ready): None for a missing cell, numbers as numbers."""
    if value is None:
        return None
    if isinstance(value, float | np.floating) and np.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pandas is a dependency; kept for the type checker's sake
        pass
    if isinstance(value, np.generic):
        return value.item()
    return value


def category(value: Any) -> str:
    """A categorical cell as its category name: 2007 and 2007.0 are one category, as labels are."""
    return label_name(value).strip()


def encode(shown: np.ndarray, columns: Sequence[str], categorical: Sequence[str], *,
           fit_rows: int | None = None, where: str = "pool") -> tuple[np.ndarray, list[str]]:
    """The float feature matrix of ``shown`` (object rows of cells, ``cell``) and its column names.

    ``categorical``: the columns to one-hot; every other column must hold numbers or missing
    cells. The categories, medians and which indicators exist come from the first ``fit_rows``
    rows (all when None) only.
    """
    n = len(shown)
    fit = n if fit_rows is None else min(int(fit_rows), n)
    blocks: list[np.ndarray] = []
    names: list[str] = []
    for j, column in enumerate(columns):
        cells = shown[:, j] if n else np.empty(0, dtype=object)
        missing = np.array([v is None for v in cells.tolist()], dtype=bool)
        if column in categorical:
            values = [None if m else category(v) for v, m in zip(cells.tolist(), missing.tolist(), strict=True)]
            known = sorted({v for v in values[:fit] if v is not None})
            if len(known) > MAX_CATEGORIES:
                raise PoolError(f"{where}: pool.categorical_columns: column {column!r} holds {len(known)} distinct values; "
                                f"expected at most {MAX_CATEGORIES} categories (an id or free text is no category: "
                                "leave it out with pool.feature_columns)")
            index = {c: k for k, c in enumerate(known)}
            with_missing = bool(missing[:fit].any())
            block = np.zeros((n, len(known) + with_missing), dtype=np.float64)
            for i, v in enumerate(values):
                if v is None:
                    if with_missing:
                        block[i, -1] = 1.0
                elif v in index:
                    block[i, index[v]] = 1.0
            blocks.append(block)
            names += [f"{column}={c}" for c in known] + ([f"{column}={MISSING}"] if with_missing else [])
            continue
        try:
            numbers = np.array([np.nan if m else float(v) for v, m in zip(cells.tolist(), missing.tolist(), strict=True)],
                               dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(v for v, m in zip(cells.tolist(), missing.tolist(), strict=True) if not m and not _is_number(v))
            raise PoolError(f"{where}: pool.feature_columns: column {column!r} holds {bad!r}, not a number; expected "
                            "numbers, or list the column in pool.categorical_columns to one-hot encode it") from None
        observed = numbers[:fit][~missing[:fit]]
        median = float(np.median(observed)) if len(observed) else 0.0
        blocks.append(np.where(missing, median, numbers)[:, None])
        names.append(str(column))
        if missing[:fit].any():
            blocks.append(missing.astype(np.float64)[:, None])
            names.append(f"{column} {MISSING}")
    X = np.hstack(blocks) if blocks else np.zeros((n, 0), dtype=np.float64)
    return X, names


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
