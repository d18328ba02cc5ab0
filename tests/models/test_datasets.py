"""Pool adapters: bundled scikit-learn sets, CSV/Parquet tables, and the fixed test split."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdloop.config import PoolConfig
from crowdloop.errors import PoolError
from crowdloop.models.datasets import load_sklearn_pool, load_table_pool, split_pool


@pytest.mark.parametrize("name, n, k", [("digits", 1797, 10), ("iris", 150, 3), ("wine", 178, 3), ("breast_cancer", 569, 2)])
def test_bundled_sets(name: str, n: int, k: int) -> None:
    pool = load_sklearn_pool(PoolConfig(source="sklearn", name=name))
    assert len(pool) == n and len(pool.classes) == k and pool.has_ground_truth
    assert len(set(pool.ids.tolist())) == n
    assert set(pool.y.tolist()) == set(pool.classes)


def test_split_is_fixed_by_seed_stratified_and_disjoint() -> None:
    pool = load_sklearn_pool(PoolConfig(source="sklearn", name="iris"))
    train, test = split_pool(pool, 0.2, seed=3)
    train2, test2 = split_pool(pool, 0.2, seed=3)
    _, test3 = split_pool(pool, 0.2, seed=4)
    assert list(test.ids) == list(test2.ids) and list(train.ids) == list(train2.ids)
    assert list(test.ids) != list(test3.ids)
    assert not set(train.ids) & set(test.ids) and len(train) + len(test) == 150
    assert sorted(pd.Series(test.y).value_counts().tolist()) == [10, 10, 10]


@pytest.fixture
def table(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"uid": [f"u{i}" for i in range(60)], "a": rng.normal(size=60), "b": rng.normal(size=60),
                          "note": ["x"] * 60, "target": ["spam", "ham", "eggs"] * 20})
    return frame


def test_csv_pool_with_id_and_label_columns(tmp_path: Path, table: pd.DataFrame) -> None:
    table.to_csv(tmp_path / "pool.csv", index=False)
    cfg = PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), id_column="uid", label_column="target",
                     feature_columns=["a", "b"])
    pool = load_table_pool(cfg)
    assert pool.ids[0] == "u0" and pool.X.shape == (60, 2) and pool.classes == ("eggs", "ham", "spam")
    assert pool.feature_names == ("a", "b")


def test_parquet_pool_and_generated_ids(tmp_path: Path, table: pd.DataFrame) -> None:
    table.drop(columns=["uid", "note"]).to_parquet(tmp_path / "pool.parquet")
    pool = load_table_pool(PoolConfig(source="parquet", path=str(tmp_path / "pool.parquet"), label_column="target"))
    assert pool.ids[0] == "row-0000000" and pool.X.shape == (60, 2)


def test_missing_columns_are_named(tmp_path: Path, table: pd.DataFrame) -> None:
    table.to_csv(tmp_path / "pool.csv", index=False)
    cfg = PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), label_column="label", feature_columns=["a", "zz"])
    with pytest.raises(PoolError, match=r"column\(s\) \['label', 'zz'\] not found in pool.csv; available columns"):
        load_table_pool(cfg)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_file_separated_by_something_else_than_commas_says_so(tmp_path: Path, table: pd.DataFrame, sep: str) -> None:
    """Excel saves 'CSV' with ';' in many locales: the header came back as one column."""
    table.to_csv(tmp_path / "pool.csv", index=False, sep=sep)
    hint = rf"\(the header is separated by {re.escape(repr(sep))}, not ','; save the file comma-separated\)$"
    with pytest.raises(PoolError, match=r"^pool: column\(s\) \['uid', 'target'\] not found in pool.csv; .*" + hint):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), id_column="uid", label_column="target"))
    with pytest.raises(PoolError, match=r"^pool.feature_columns: .* are not numeric " + hint):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), classes=["a", "b"]))


def test_a_workbook_or_utf16_file_given_as_a_csv_pool_is_named_as_one(tmp_path: Path, table: pd.DataFrame) -> None:
    """It was 'not valid UTF-8 ... convert it with iconv', about an Excel file."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "pool.xlsx", "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(PoolError, match=r"^pool.path: pool.xlsx is a zip archive \(an Excel .xlsx or OpenDocument .ods "
                                        r"workbook\?\), not a CSV file; save it as CSV UTF-8"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.xlsx"), id_column="uid"))
    (tmp_path / "pool.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))
    with pytest.raises(PoolError, match=r"^pool.path: pool.xls is an Excel .xls workbook, not a CSV file"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.xls"), id_column="uid"))
    table.to_csv(tmp_path / "unicode.txt", index=False, sep="\t", encoding="utf-16")
    with pytest.raises(PoolError, match=r"^pool.path: unicode.txt is UTF-16 text \(Excel's 'Unicode Text'\), not UTF-8"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "unicode.txt"), id_column="uid"))
    table.to_csv(tmp_path / "pool.csv.zip", index=False)  # a zipped CSV is still read
    assert len(load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv.zip"), id_column="uid",
                                          label_column="target", feature_columns=["a"]))) == 60


def test_non_numeric_feature_is_named(tmp_path: Path, table: pd.DataFrame) -> None:
    table.to_csv(tmp_path / "pool.csv", index=False)
    with pytest.raises(PoolError, match=r"\['note'\] .* not numeric"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), id_column="uid", label_column="target"))


def test_duplicate_ids_and_labels_outside_classes(tmp_path: Path, table: pd.DataFrame) -> None:
    table.assign(uid="same").to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(PoolError, match="duplicate"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "dup.csv"), id_column="uid",
                                   label_column="target", feature_columns=["a"]))
    table.to_csv(tmp_path / "pool.csv", index=False)
    with pytest.raises(PoolError, match=r"pool.classes: ground-truth labels \['eggs'\]"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), id_column="uid", label_column="target",
                                   feature_columns=["a"], classes=["ham", "spam"]))


def test_labels_that_differ_only_in_case_or_spaces_are_refused_not_made_classes(tmp_path: Path,
                                                                                table: pd.DataFrame) -> None:
    """'ham ' and 'Ham' beside 'ham' were three classes: annotators saw each spelling as a choice."""
    table.loc[[3, 7], "target"] = ["ham ", "Ham"]
    table.to_csv(tmp_path / "pool.csv", index=False)
    cfg = {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "uid", "label_column": "target",
           "feature_columns": ["a"]}
    with pytest.raises(PoolError, match=r"^pool.label_column 'target': labels 'Ham' vs 'ham' vs 'ham ' differ only in "
                                        r"case or spaces, so they would be separate classes; fix them in the file"):
        load_table_pool(PoolConfig(**cfg))
    with pytest.raises(PoolError, match=r"\['Ham', 'ham '\] are not in the class list \['eggs', 'ham', 'spam'\] "
                                        r"\('Ham' differs from 'ham' only in case or spaces: fix the file\)$"):
        load_table_pool(PoolConfig(**cfg, classes=["eggs", "ham", "spam"]))
    table.loc[3, "target"] = "ham"
    table.assign(target=table["target"].replace("Ham", "  ")).to_csv(tmp_path / "pool.csv", index=False)
    with pytest.raises(PoolError, match=r"^pool.label_column 'target': class '  ': expected a name of 1-200 printable "
                                        r"characters without leading or trailing spaces; fix the file, or leave the "
                                        r"cell empty"):
        load_table_pool(PoolConfig(**cfg))
    table.to_csv(tmp_path / "pool.csv", index=False)
    pool = load_table_pool(PoolConfig(**cfg, classes=["eggs", "ham", "spam", "Ham"]))  # meant to differ
    assert pool.classes == ("eggs", "ham", "spam", "Ham")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_empty_id_cell_is_refused_naming_the_row(tmp_path: Path, table: pd.DataFrame, fmt: str) -> None:
    """It became the id 'nan' (and integer ids floats, '7.0'), which no label file could name."""
    table["uid"] = list(range(60))
    table = table.astype({"uid": "object"})
    table.loc[[4, 9], "uid"] = None if fmt == "parquet" else ""
    path = tmp_path / f"pool.{fmt}"
    table.to_parquet(path) if fmt == "parquet" else table.to_csv(path, index=False)
    with pytest.raises(PoolError, match=rf"^pool.id_column: 2 row\(s\) of pool.{fmt} have no value in column 'uid' "
                                        r"\(first: data row 5\); expected an id on every row$"):
        load_table_pool(PoolConfig(source=fmt, path=str(path), id_column="uid", label_column="target",
                                   feature_columns=["a"]))


def test_a_header_without_rows_says_so(tmp_path: Path, table: pd.DataFrame) -> None:
    table.head(0).to_csv(tmp_path / "pool.csv", index=False)
    with pytest.raises(PoolError, match=r"^pool.path: pool.csv has a header \(5 columns\) but no rows"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), id_column="uid", label_column="target"))


def test_pool_without_ground_truth_needs_classes(tmp_path: Path, table: pd.DataFrame) -> None:
    table[["a", "b"]].to_csv(tmp_path / "pool.csv", index=False)
    with pytest.raises(PoolError, match=r"set pool\.classes"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv")))
    pool = load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "pool.csv"), classes=["x", "y"]))
    assert pool.y is None and split_pool(pool, 0.25, 0)[1] is None


def test_a_folder_named_as_a_csv_pool_says_it_is_a_folder(tmp_path):
    (tmp_path / "photos").mkdir()

    with pytest.raises(PoolError, match=r"^pool\.path: '.*/photos' is a folder; expected a CSV file \(a folder of images is "
                                        r"pool\.source: images, of text files text_folder\)$"):
        load_table_pool(PoolConfig(source="csv", path=str(tmp_path / "photos")))
