"""Tables with words and gaps: ``pool.categorical_columns`` and ``pool.missing_values: impute``
(``models/tabular.py``).

A team's CSV is rarely all numbers: penguins have an island and a sex, tickets a product and a
channel, and some cells are empty. These were refused outright ("not numeric", "missing
values"); now they are encoded for the model, fitted on the rows a project started with, while
annotators and exports see the cells as written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.engine import project as project_module
from crowdloop.engine.pools import load_pool
from crowdloop.errors import ConfigError, PoolError
from crowdloop.models.datasets import copies_of, item_payload
from crowdloop.models.tabular import MAX_CATEGORIES, encode
from tests.conftest import small_config


def _table(n: int, rng: np.random.Generator, *, islands=("Biscoe", "Dream", "Torgersen"), start: int = 0) -> pd.DataFrame:
    """Three species told apart by a number (bill) and a word (island); some cells empty."""
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], size=n)
    shift = {"Adelie": 0.0, "Chinstrap": 3.0, "Gentoo": 6.0}
    bill = np.array([shift[s] for s in species]) + rng.normal(0, 0.8, n)
    home = {"Adelie": islands[0], "Chinstrap": islands[1], "Gentoo": islands[2 % len(islands)]}
    island = [home[s] if rng.random() < 0.8 else str(rng.choice(islands)) for s in species]
    frame = pd.DataFrame({"id": [f"r{start + i:04d}" for i in range(n)], "bill": bill.round(2), "island": island,
                          "year": rng.choice([2007, 2008, 2009], size=n), "species": species})
    frame.loc[rng.random(n) < 0.1, "bill"] = np.nan
    frame.loc[rng.random(n) < 0.05, "island"] = None
    return frame


def _pool_config(path: Path, **fields) -> dict:
    return {"source": "csv", "path": str(path), "id_column": "id", "label_column": "species", **fields}


def test_categories_are_one_hot_and_gaps_take_the_median_with_an_indicator() -> None:
    shown = np.array([[1.0, "Dream", 2007], [None, "Biscoe", 2008.0], [3.0, None, 2007.0], [5.0, "Dream", 2009]],
                     dtype=object)
    X, names = encode(shown, ["bill", "island", "year"], ["island", "year"])
    assert names == ["bill", "bill (missing)", "island=Biscoe", "island=Dream", "island=(missing)",
                     "year=2007", "year=2008", "year=2009"]
    assert X.tolist() == [[1, 0, 0, 1, 0, 1, 0, 0],
                          [3, 1, 1, 0, 0, 0, 1, 0],  # the median of 1, 3, 5; 2008.0 is the category 2008
                          [3, 0, 0, 0, 1, 1, 0, 0],
                          [5, 0, 0, 1, 0, 0, 0, 1]]


def test_the_encoding_comes_from_the_rows_it_is_fitted_on_only() -> None:
    """Rows appended later bring no new columns and move no median: a model of an earlier round
    still reads today's features."""
    shown = np.array([[1.0, "Dream"], [3.0, "Biscoe"], [None, "Mars"], [100.0, None]], dtype=object)
    X, names = encode(shown, ["bill", "island"], ["island"], fit_rows=2)
    assert names == ["bill", "island=Biscoe", "island=Dream"]  # no indicator: the fitted rows had no gap
    assert X.tolist() == [[1, 0, 1], [3, 1, 0], [2, 0, 0], [100, 0, 0]]
    first, _ = encode(shown[:2], ["bill", "island"], ["island"])
    assert np.array_equal(first, X[:2])


def test_too_many_categories_and_a_word_among_numbers_are_one_line() -> None:
    many = np.array([[f"user{i}"] for i in range(MAX_CATEGORIES + 1)], dtype=object)
    with pytest.raises(PoolError, match=r"column 'who' holds 1001 distinct values; expected at most 1000 categories"):
        encode(many, ["who"], ["who"], where="pool.path t.csv")
    with pytest.raises(PoolError, match=r"column 'bill' holds 'n/a', not a number; .*pool.categorical_columns"):
        encode(np.array([[1.0], ["n/a"]], dtype=object), ["bill"], [])


def test_the_loader_refuses_words_and_gaps_unless_asked_naming_column_and_row(tmp_path: Path) -> None:
    path = tmp_path / "penguins.csv"
    _table(60, np.random.default_rng(0)).to_csv(path, index=False)
    with pytest.raises(PoolError, match=r"column\(s\) \['island'\] in penguins.csv are not numeric; list columns of "
                                        r"categories in pool.categorical_columns"):
        load_pool(parse_config(small_config(pool=_pool_config(path))).pool)
    frame = pd.read_csv(path)
    first_gap = int(np.flatnonzero(frame["bill"].isna().to_numpy())[0]) + 1
    with pytest.raises(PoolError, match=rf"\['bill', 'island'\] in penguins.csv have missing values \(first: column "
                                        rf"'bill', data row {first_gap}\); fill them in, set pool.missing_values: "
                                        r"impute, or leave them out with pool.feature_columns"):
        load_pool(parse_config(small_config(pool=_pool_config(path, categorical_columns=["island"]))).pool)


@pytest.mark.parametrize(("fields", "message"), [
    ({"feature_columns": ["bill"], "categorical_columns": ["island"]},
     r"categorical_columns: \['island'\] not in feature_columns \['bill'\]"),
    ({"categorical_columns": ["species"]}, r"categorical_columns: 'species' is the pool's id, label"),
    ({"categorical_columns": ["island", "island"]}, r"categorical_columns: column 'island' is listed more than once"),
    ({"categorical_columns": ["colour"]}, r"pool: column\(s\) \['colour'\] not found in penguins.csv"),
])
def test_bad_categorical_columns_are_one_line(tmp_path: Path, fields: dict, message: str) -> None:
    path = tmp_path / "penguins.csv"
    _table(30, np.random.default_rng(0)).to_csv(path, index=False)
    with pytest.raises((ConfigError, PoolError), match=message):
        load_pool(parse_config(small_config(pool=_pool_config(path, missing_values="impute", **fields))).pool)


def test_categorical_fields_on_a_source_that_never_reads_them_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"pool.categorical_columns=\['x'\]: not used by source 'sklearn'"):
        parse_config(small_config(pool={"source": "sklearn", "name": "digits", "categorical_columns": ["x"]}))
    parse_config(small_config())  # the default (an empty list) is no field set


def test_annotators_see_the_cells_as_written_and_copies_are_judged_by_them(tmp_path: Path) -> None:
    path = tmp_path / "penguins.csv"
    frame = _table(40, np.random.default_rng(1))
    frame.loc[5, ["bill", "island", "year"]] = [np.nan, "Dream", 2008]
    frame.loc[6, ["bill", "island", "year"]] = [4.25, None, 2009]
    frame.loc[7, ["bill", "island", "year"]] = [4.25, "Mars", 2009]  # a category like no other
    frame.to_csv(path, index=False)
    pool = load_pool(parse_config(small_config(pool=_pool_config(
        path, categorical_columns=["island", "year"], missing_values="impute"))).pool)
    assert item_payload(pool, 5) == {"kind": "tabular", "columns": ["bill", "island", "year"], "values": ["", "Dream", 2008]}
    assert item_payload(pool, 6)["values"] == [4.25, "", 2009]
    assert "island=Mars" in pool.feature_names and np.isfinite(pool.X).all()
    assert not {"r0006", "r0007"} & set(copies_of(pool))  # one island missing, one named: not the same item


def test_a_table_with_words_and_gaps_runs_grows_and_keeps_its_features(tmp_path: Path) -> None:
    """Rounds on such a table; rows appended with an island never seen and more gaps join the
    project; the rows it started with keep their features to the bit, and the next round compares
    its model with the previous round's on the same columns."""
    rng = np.random.default_rng(7)
    path = tmp_path / "penguins.csv"
    _table(400, rng).to_csv(path, index=False)
    config = small_config(pool=_pool_config(path, categorical_columns=["island", "year"], missing_values="impute",
                                            test_size=0.25),
                          sampler={"name": "margin", "batch_size": 15, "initial_size": 30},
                          vendor={"name": "simulated", "params": {"n_workers": 12, "accuracy": [0.9, 0.99],
                                                                  "spammer_fraction": 0.0}},
                          stopping={"max_rounds": 6, "stabilizing_predictions": {"stop_set": 100}})
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(config), location)
    for r in (0, 1, 2):
        assert engine.run_round(p, r) is None
    X_before, names_before = p.pool.X.copy(), p.pool.feature_names
    accuracy = p.record(2, keys.METRICS)["accuracy"]
    assert accuracy > 0.75, accuracy  # the bill and the island tell the species (chance: 1/3)

    new = _table(80, rng, islands=("Biscoe", "Dream", "Deception"), start=1000)
    with open(path, "a") as fh:
        new.to_csv(fh, header=False, index=False)
    project_module._PREPARED.clear()  # a second `crowdloop run`
    p = Project.prepare(parse_config(config), location)
    assert p.pool.feature_names == names_before and "island=Deception" not in p.pool.feature_names
    assert np.array_equal(p.pool.X[: len(X_before)], X_before)
    assert len(p.pool) + len(p.test) == 480
    for r in (3, 4):
        assert engine.run_round(p, r) is None
    assert p.record(4, keys.METRICS)["stability_kappa"] is not None
    assert p.record(4, keys.METRICS)["accuracy"] >= accuracy - 0.1


def test_crowdloop_check_says_what_the_model_gets_from_words_and_gaps(tmp_path: Path) -> None:
    from crowdloop.checks import check_config

    path = tmp_path / "penguins.csv"
    frame = _table(50, np.random.default_rng(2))
    frame.to_csv(path, index=False)
    config = parse_config(small_config(pool=_pool_config(path, categorical_columns=["island"], missing_values="impute")))
    summary = check_config(config).summary()
    n_bill, n_island = int(frame["bill"].isna().sum()), int(frame["island"].isna().sum())
    assert n_bill and n_island
    assert (f"7 model features from 3 columns; one-hot: island (4); empty cells imputed: bill ({n_bill}), "
            f"island ({n_island})") in summary  # bill and its (missing) column, 3 islands and (missing), year


def test_a_text_pools_columns_of_words_are_its_own_notes_not_features(tmp_path: Path) -> None:
    """A ticket CSV (id, text, channel, label) was refused: "['channel'] are not numeric", though
    a text pool's features come from its text."""
    from crowdloop.checks import check_config

    rng = np.random.default_rng(4)
    label = rng.choice(["billing", "shipping"], size=60)
    frame = pd.DataFrame({"id": range(60), "text": [f"ticket {i} about my {'invoice' if v == 'billing' else 'parcel'}"
                                                    for i, v in enumerate(label)],
                          "channel": rng.choice(["email", "chat"], size=60), "stars": rng.integers(1, 6, 60), "label": label})
    path = tmp_path / "tickets.csv"
    frame.to_csv(path, index=False)
    text_pool = {"source": "csv", "path": str(path), "id_column": "id", "text_column": "text", "label_column": "label"}
    config = parse_config(small_config(pool=text_pool, model={"estimator": "sklearn.linear_model.LogisticRegression",
                                                              "features": {"kind": "tfidf"}}))
    report = check_config(config)
    assert report.pool.feature_names == ("stars",) and report.n_items == 60  # numbers stay features, as before
    with pytest.raises(PoolError, match=r"\['channel'\] in tickets.csv are not numeric"):  # named: it is asked for
        load_pool(parse_config(small_config(pool={**text_pool, "feature_columns": ["stars", "channel"]})).pool)
    table = {k: v for k, v in text_pool.items() if k != "text_column"}
    with pytest.raises(PoolError, match=r"\['text', 'channel'\] in tickets.csv are not numeric"):  # a table: refused
        load_pool(parse_config(small_config(pool=table)).pool)


def test_a_parquet_table_with_words_grows_even_when_a_new_gap_makes_its_numbers_floats(tmp_path: Path) -> None:
    """A Parquet file is rewritten whole: its first rows must read back the same. A year column of
    integers becomes a float column once an added row leaves it empty (2007 -> 2007.0), which is
    the same year; a category changed in an early row is not."""
    rng = np.random.default_rng(5)
    frame = _table(300, rng).fillna({"bill": 4.0, "island": "Dream"})
    path, location = tmp_path / "penguins.parquet", str(tmp_path / "p")
    frame.to_parquet(path, index=False)
    pool = _pool_config(path, source="parquet", categorical_columns=["island"], missing_values="impute")
    config = parse_config(small_config(pool=pool, stopping={"max_rounds": 3, "stabilizing_predictions": {"stop_set": 50}}))
    p = Project.prepare(config, location)
    assert engine.run_round(p, 0) is None
    X_before = p.pool.X.copy()
    more = _table(40, rng, start=500)
    more.loc[0, "year"] = np.nan
    grown = pd.concat([frame, more], ignore_index=True)
    assert grown["year"].dtype == np.float64
    grown.to_parquet(path, index=False)
    project_module._PREPARED.clear()
    p = Project.prepare(config, location)
    assert len(p.pool) + len(p.test) == 340 and np.array_equal(p.pool.X[: len(X_before)], X_before)
    assert engine.run_round(p, 1) is None
    edited = grown.copy()
    edited.loc[3, "island"] = "Torgersen" if edited.loc[3, "island"] != "Torgersen" else "Biscoe"
    edited.to_parquet(path, index=False)
    project_module._PREPARED.clear()
    with pytest.raises(PoolError, match=r"is not the pool project .* was created with"):
        Project.prepare(config, location)


def test_a_column_without_a_header_is_refused_unless_named_as_a_feature(tmp_path: Path) -> None:
    """``to_csv(index=True)`` writes the row numbers under an empty header; in a file sorted by
    class they are the label, and they became a feature without a word."""
    frame = _table(40, np.random.default_rng(6)).drop(columns=["id", "island"]).fillna({"bill": 1.0})
    frame = frame.sort_values("species", ignore_index=True)
    path = tmp_path / "sorted.csv"
    frame.to_csv(path)  # index=True
    pool = {"source": "csv", "path": str(path), "label_column": "species"}
    with pytest.raises(PoolError, match=r"column 1 of sorted.csv has no header \(read as 'Unnamed: 0'; a row number saved "
                                        r"with the file\?\); expected a named column"):
        load_pool(parse_config(small_config(pool=pool)).pool)
    named = load_pool(parse_config(small_config(pool={**pool, "feature_columns": ["bill", "year"]})).pool)
    assert named.feature_names == ("bill", "year") and len(named) == 40


def test_a_parquet_category_of_dates_reaches_annotators_as_text(tmp_path: Path) -> None:
    """A Parquet file keeps dates as timestamps; listed as a category, they were cells no task's
    JSON could hold."""
    import json

    frame = _table(30, np.random.default_rng(8)).fillna({"bill": 2.0, "island": "Dream"})
    frame["visited"] = pd.to_datetime("2024-03-01") + pd.to_timedelta(frame.index % 3, unit="D")
    path = tmp_path / "penguins.parquet"
    frame.to_parquet(path, index=False)
    pool = load_pool(parse_config(small_config(pool=_pool_config(
        path, source="parquet", categorical_columns=["island", "visited"]))).pool)
    payload = item_payload(pool, 1)
    assert payload["values"][payload["columns"].index("visited")] == "2024-03-02 00:00:00"
    json.dumps(payload)
    assert [n for n in pool.feature_names if n.startswith("visited=")] == [
        "visited=2024-03-01 00:00:00", "visited=2024-03-02 00:00:00", "visited=2024-03-03 00:00:00"]
