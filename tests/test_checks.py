"""``crowdloop check`` / ``check_config``: each failure mode is one line, before anything is spent,
and nothing is written anywhere (the project store is not even created)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from crowdloop import registry
from crowdloop.checks import CheckReport, check_config, check_store
from crowdloop.config import LoopConfig, load_config, parse_config
from crowdloop.errors import ConfigError, CrowdloopError, PoolError, StoreError
from tests.conftest import CONFIGS, crowdloop_cmd, small_config


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with size and mtime: a write anywhere changes it."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def pool_csv(tmp_path: Path, rows: int = 60, **columns: list) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"item-{i:03d}" for i in range(rows)], "a": rng.normal(size=rows),
                          "b": rng.normal(size=rows), "label": [("x", "y", "z")[i % 3] for i in range(rows)]})
    for name, values in columns.items():
        frame[name] = values
    path = tmp_path / "pool.csv"
    frame.to_csv(path, index=False)
    return path


def csv_config(path: Path, **overrides) -> dict:
    return small_config(**{"pool": {"source": "csv", "path": str(path), "id_column": "id", "label_column": "label",
                                    "test_size": 0.25},
                           "sampler.batch_size": 5, "sampler.initial_size": 5, **overrides})


def refused(tmp_path: Path, doc: dict, error: type[CrowdloopError] = ConfigError, pool=None) -> str:
    """Check ``doc``; assert it is refused in one line naming the source, and that nothing was written."""
    before = tree(tmp_path)
    with pytest.raises(error) as info:
        check_config(parse_config(doc), source="cfg.yaml", location=str(tmp_path / "project"), pool=pool)
    message = str(info.value)
    assert "\n" not in message and message.startswith("cfg.yaml: "), message
    assert tree(tmp_path) == before and not (tmp_path / "project").exists()
    return message


# -- plug-in names and parameters ---------------------------------------------------------
@pytest.mark.parametrize("override, fragments", [
    ({"sampler.name": "margn"}, ["sampler.name: unknown sampler 'margn'", "margin", "badge"]),
    ({"consensus.method": "vote"}, ["consensus.method: unknown aggregator 'vote'", "majority_vote"]),
    ({"vendor.name": "mturkk"}, ["vendor.name: unknown vendor 'mturkk'", "mturk", "simulated"]),
    ({"pool": {"source": "hdf5", "path": "x.h5"}}, ["pool.source: unknown pool source 'hdf5'", "csv", "sharded"]),
    ({"storage.url": "gs://bucket/p"}, ["storage.url: unknown store scheme 'gs'", "file, s3"]),
])
def test_unknown_plugin_names_list_the_known_ones(tmp_path, override, fragments) -> None:
    cfg = parse_config(small_config(**override))
    before = tree(tmp_path)
    with pytest.raises(ConfigError) as info:
        check_config(cfg, source="cfg.yaml", location=cfg.storage.url or str(tmp_path / "project"))
    assert "\n" not in str(info.value) and str(info.value).startswith("cfg.yaml: ")
    for fragment in fragments:
        assert fragment in str(info.value)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("override, fragments", [
    ({"sampler.name": "bald", "sampler.params": {"n_sample": 5}},
     ["sampler.params.n_sample: unknown parameter of sampler 'bald' (got 5)", "expected one of: chunk_size, n_samples"]),
    ({"sampler.name": "margin", "sampler.params": {"chunksize": 64}}, ["sampler.params.chunksize", "chunk_size"]),
    ({"sampler.name": "bald", "sampler.params": {"n_samples": "twenty"}},
     ["sampler.params.n_samples: Input should be a valid integer (got 'twenty')", "expects int"]),
    ({"sampler.name": "cluster_margin", "sampler.params": {"n_clusters": 2.5}}, ["sampler.params.n_clusters", "2.5"]),
    ({"sampler.name": "qbc", "sampler.params": {"X_labeled": [1, 2]}}, ["sampler.params.X_labeled: set by the loop"]),
    ({"sampler.params": {"batch_size": 3}}, ["sampler.params.batch_size: set by the loop"]),
])
def test_sampler_params_are_checked_against_the_sampler_signature(tmp_path, override, fragments) -> None:
    message = refused(tmp_path, small_config(**override))
    for fragment in fragments:
        assert fragment in message


def test_good_sampler_params_pass(tmp_path) -> None:
    cfg = parse_config(small_config(**{"sampler.name": "kmeans_margin",
                                       "sampler.params": {"measure": "entropy", "candidates_factor": 5}}))
    assert isinstance(check_config(cfg, location=str(tmp_path / "p")), CheckReport)


def test_a_plugin_sampler_without_chunk_size_is_refused_before_round_1(tmp_path) -> None:
    def no_chunks(model, X, *, batch_size, rng):  # the loop passes chunk_size to every sampler but random
        return np.arange(batch_size)

    registry.samplers.register("no_chunks", no_chunks)
    try:
        message = refused(tmp_path, small_config(**{"sampler.name": "no_chunks"}))
    finally:
        registry.samplers.unregister("no_chunks")
    assert "sampler.name: sampler 'no_chunks' takes no chunk_size keyword" in message


@pytest.mark.parametrize("override, fragments", [
    ({"vendor.params": {"n_wokers": 3}},
     ["vendor.params.n_wokers: unknown field; expected one of: accuracy,", " n_workers,", "spammer_fraction",
      "(got 3)"]),
    ({"consensus.redundancy": 13}, ["consensus.redundancy=13 is above vendor.params.n_workers=12"]),
    ({"consensus": {"method": "dawid_skene", "confidence_threshold": 0.9, "max_judgments": 20}},
     ["consensus.max_judgments=20 is above vendor.params.n_workers=12"]),
    ({"vendor.params": {"n_workers": 3, "spammer_fraction": 0.5, "confuser_fraction": 0.5}},
     ["2 adversarial workers but only 1 non-spammers"]),
    ({"vendor.params": {"spammer_fraction": 0.5, "confuser_fraction": 0.6}},
     ["vendor.params: spammer_fraction + confuser_fraction + colluder_fraction", "= 1.1: expected at most 1"]),
    ({"vendor.params": {"colluder_fraction": 0.1, "colluder_class": 10}}, ["colluder_class=10", "only 10 classes"]),
    ({"vendor": {"name": "mturk", "params": {}}, "consensus.redundancy": 10},
     ["consensus.redundancy=10: MTurk charges an extra 20%", "allow_ten_or_more_assignments"]),
    ({"vendor": {"name": "mturk", "params": {"sandbox": "maybe"}}}, ["vendor.params.sandbox", "maybe"]),
    ({"vendor": {"name": "mturk", "params": {"assignment_duration_s": 3600}}, "collect.timeout_s": 3000},
     ["collect.timeout_s=3000: expected at least vendor.params.assignment_duration_s + 60 = 3660 s"]),
    # 10 items of 40 s in a HIT and 600 s to do them: every worker slower than 1.5x the median would run out of time
    ({"vendor": {"name": "mturk", "params": {"items_per_hit": 10, "assignment_duration_s": 600}},
      "pay.pilot_seconds_per_task": 40},
     ["vendor.params.assignment_duration_s=600: expected at least twice the expected time of one HIT "
      "(items_per_hit=10 x pay.pilot_seconds_per_task=40 s = 400 s), so at least 800 s, or fewer items_per_hit"]),
    ({"vendor": {"name": "label_studio", "params": {}}, "gold": {"share": 0.2, "n_items": 10}},
     ["vendor.name: vendor 'label_studio' cannot block workers", "block_removes_membership: true"]),
    ({"vendor": {"name": "mturk", "params": {"items_per_hit": 4}},
      "consensus": {"method": "dawid_skene", "confidence_threshold": 0.9, "min_judgments": 2}},
     ["lacks the capability 'excludes_workers_per_item'", "items_per_hit: 1"]),
    ({"vendor": {"name": "local", "params": {"lease": 5}}}, ["vendor.params.lease: unknown field", "lease_s"]),
    ({"vendor": {"name": "manifest", "params": {"results_prefix": "../x"}}}, ["vendor.params.results_prefix"]),
    # the audit asks 5 judgments per item by default, and with re-asks 4 more from other workers
    ({"vendor.params": {"n_workers": 4}, "evaluation": {"method": "random"}},
     ["evaluation.redundancy=5 is above vendor.params.n_workers=4"]),
    ({"vendor.params": {"n_workers": 8}, "evaluation": {"method": "active", "reask_below": 0.8}},
     ["evaluation.redundancy with its re-ask (evaluation.reask_below)=9 is above vendor.params.n_workers=8"]),
    ({"vendor": {"name": "mturk", "params": {}}, "evaluation": {"method": "random", "redundancy": 10}},
     ["evaluation.redundancy=10: MTurk charges an extra 20%", "allow_ten_or_more_assignments"]),
    ({"vendor": {"name": "mturk", "params": {}}, "evaluation": {"method": "random", "reask_below": 0.8, "redundancy": 6}},
     ["evaluation.redundancy with its re-ask (evaluation.reask_below)=11: MTurk charges an extra 20%"]),
])
def test_vendor_params_and_plan_are_checked_without_contacting_the_vendor(tmp_path, override, fragments) -> None:
    message = refused(tmp_path, small_config(**override), error=CrowdloopError)
    assert "autolabel" not in message  # a section's unknown field lists that section's fields, not the top level
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("override", [
    {"vendor.params": {"n_workers": 5}, "evaluation": {"method": "random"}},
    {"vendor.params": {"n_workers": 9}, "evaluation": {"method": "active", "reask_below": 0.8}},
    # MTurk with several items per HIT cannot re-ask an audit item: the re-ask is not counted
    {"vendor": {"name": "mturk", "params": {"items_per_hit": 4}}, "evaluation": {"method": "random", "reask_below": 0.8,
                                                                                 "redundancy": 6}},
])
def test_a_crowd_just_large_enough_for_the_audit_passes(tmp_path, override) -> None:
    assert check_config(parse_config(small_config(**override)), location=str(tmp_path / "p")).n_items == 1797


def test_the_mturk_check_builds_no_client(tmp_path, monkeypatch) -> None:
    from crowdloop.vendors import mturk

    def no_network(*args, **kwargs):
        raise AssertionError("check_config must not build an MTurk client")

    monkeypatch.setattr(mturk, "make_client", no_network)
    cfg = load_config(CONFIGS / "digits-mturk-sandbox.yaml")
    assert check_config(cfg, location=str(tmp_path / "p")).n_items == 1797


# -- the model ------------------------------------------------------------------------------
@pytest.mark.parametrize("model, fragments", [
    ({"estimator": "sklearn.linear_modle.LogisticRegression"}, ["model.estimator", "'sklearn.linear_modle' not found"]),
    ({"estimator": "sklearn.linear_model.LogisticRegression", "params": {"Cc": 1.0}},
     ["model.params.Cc: unknown parameter of sklearn.linear_model.LogisticRegression (got 1.0)", "max_iter"]),
    ({"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": -1}},
     ["model.params: The 'C' parameter of LogisticRegression must be a float in the range (0.0, inf]. Got -1"]),
    ({"estimator": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": "many"}},
     ["model.params: The 'n_estimators' parameter", "Got 'many'"]),
    ({"estimator": "sklearn.linear_model.LinearRegression"}, ["model.estimator", "not a classifier"]),
])
def test_the_model_is_checked_without_fitting(tmp_path, model, fragments) -> None:
    message = refused(tmp_path, small_config(model=model))
    for fragment in fragments:
        assert fragment in message, message


def test_a_function_as_estimator_is_refused_and_never_called(tmp_path) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-pwned"
    message = refused(tmp_path, small_config(model={"estimator": "os.system", "params": {"command": f"touch {marker}"}}))
    assert "model.estimator: 'os.system' is not from a trusted module" in message
    assert not marker.exists()


# -- the pool -------------------------------------------------------------------------------
def test_a_csv_pool_that_checks_out(tmp_path) -> None:
    path = pool_csv(tmp_path)
    before = tree(tmp_path)
    report = check_config(parse_config(csv_config(path)), source="cfg.yaml", location=str(tmp_path / "project"))
    assert (report.n_items, report.n_selectable, report.n_test, report.classes) == (60, 45, 15, ("x", "y", "z"))
    assert report.store_state == "new" and "60 items" in report.summary()
    assert tree(tmp_path) == before and not (tmp_path / "project").exists()


@pytest.mark.parametrize("change, error, fragments", [
    (lambda p: {"pool.path": str(p.parent / "nope.csv")}, PoolError, ["pool.path: file", "nope.csv", "not found"]),
    (lambda p: {"pool.feature_columns": ["a", "bb"]}, PoolError,
     ["column(s) ['bb'] not found in pool.csv", "available columns: ['id', 'a', 'b', 'label']"]),
    (lambda p: {"pool.label_column": "truth"}, PoolError, ["['truth'] not found"]),
    (lambda p: {"pool.id_column": "key"}, PoolError, ["['key'] not found"]),
    (lambda p: {"pool.text_column": "body"}, PoolError, ["['body'] not found"]),
    (lambda p: {"pool.image_column": "file"}, PoolError, ["['file'] not found"]),
    (lambda p: {"pool.feature_columns": ["a", "b", "label"]}, ConfigError,
     ["pool.feature_columns: lists the label column 'label' (pool.label_column)", "learn from the answers"]),
    (lambda p: {"sampler.batch_size": 46}, ConfigError,
     ["sampler.batch_size=46 is larger than the pool of 45 items", "holding out 25% of 60"]),
    (lambda p: {"sampler.initial_size": 50}, ConfigError, ["sampler.initial_size=50 is larger than the pool of 45"]),
    (lambda p: {"gold": {"share": 0.2, "n_items": 41}}, ConfigError,
     ["gold.n_items=41 leaves fewer than sampler.initial_size=5 items", "expected at most 40"]),
])
def test_pool_file_columns_and_row_counts(tmp_path, change, error, fragments) -> None:
    path = pool_csv(tmp_path)
    doc = csv_config(path)
    for dotted, value in change(path).items():
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    message = refused(tmp_path, doc, error=error)
    for fragment in fragments:
        assert fragment in message, message


def test_infinite_and_missing_features_name_the_column(tmp_path) -> None:
    values = [1.0] * 60
    values[7] = float("inf")
    message = refused(tmp_path, csv_config(pool_csv(tmp_path, c=values)), error=PoolError)
    assert "pool.feature_columns: column(s) ['c'] in pool.csv hold infinite values" in message
    values[7] = float("nan")
    message = refused(tmp_path, csv_config(pool_csv(tmp_path, c=values)), error=PoolError)
    assert "column(s) ['c'] in pool.csv have missing values" in message


def test_infinite_values_in_any_pool_are_found(tmp_path) -> None:
    """The generic check covers pools from any loader (here: a pre-loaded one)."""
    from crowdloop.models.datasets import load_sklearn_pool

    cfg = parse_config(small_config(**{"pool.name": "iris", "sampler.batch_size": 5, "sampler.initial_size": 5}))
    pool = load_sklearn_pool(cfg.pool)
    pool.X[3, 2] = -np.inf
    message = refused(tmp_path, cfg.model_dump(), error=PoolError, pool=pool)
    assert "feature(s) ['petal length (cm)'] of scikit-learn's iris set hold NaN or infinite values" in message
    assert "first at item 'iris-000003'" in message


def test_missing_labels_name_file_and_column_when_ground_truth_is_needed(tmp_path) -> None:
    labels = [("x", "y", "z")[i % 3] for i in range(60)]
    labels[11] = labels[40] = None
    path = pool_csv(tmp_path, label=labels)
    message = refused(tmp_path, csv_config(path), error=PoolError)  # the simulated crowd answers from the truth
    assert (f"pool.label_column: 2 of 60 items have no value in column 'label' of {path} (first: item 'item-011'), "
            "but vendor 'simulated' answers from it") in message
    manifest = csv_config(path, vendor={"name": "manifest", "params": {}})
    assert check_config(parse_config(manifest), location=str(tmp_path / "p")).n_test > 0  # unknown labels are allowed
    message = refused(tmp_path, {**manifest, "gold": {"share": 0.1, "n_items": 5}}, error=PoolError)
    assert "but gold questions (gold.share) are drawn from it" in message


def test_a_preloaded_pool_is_used_not_loaded_again(tmp_path) -> None:
    from crowdloop.models.datasets import load_table_pool

    path = pool_csv(tmp_path)
    cfg = parse_config(csv_config(path))
    pool = load_table_pool(cfg.pool)
    path.unlink()  # a second load would fail
    report = check_config(cfg, source="cfg.yaml", location=str(tmp_path / "p"), pool=pool)
    assert report.pool is pool and report.n_items == 60


# -- the store ------------------------------------------------------------------------------
def test_a_local_store_is_new_empty_or_a_project(tmp_path) -> None:
    from crowdloop.engine import Project

    assert check_store(str(tmp_path / "a" / "b")) == "new"
    (tmp_path / "empty").mkdir()
    assert check_store(str(tmp_path / "empty")) == "empty"
    Project.prepare(parse_config(small_config()), str(tmp_path / "proj"))
    before = tree(tmp_path)
    assert check_store(str(tmp_path / "proj")) == "project"
    assert check_store(f"file://{tmp_path / 'proj'}") == "project"
    assert tree(tmp_path) == before


def test_a_store_that_cannot_be_used_is_one_line(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "metrics.json").write_text("{}")
    before = tree(tmp_path)
    with pytest.raises(StoreError, match=r"project directory .*/file: not a directory$"):
        check_store(str(tmp_path / "file"))
    with pytest.raises(StoreError, match=r"cannot be created, .*/file is not a directory$"):
        check_store(str(tmp_path / "file" / "sub"))
    with pytest.raises(StoreError, match=r"/theirs: holds other files \('metrics.json'\) but no project.json; "
                                         r"expected an empty folder or an existing crowdloop project"):
        check_store(str(tmp_path / "theirs"))
    assert tree(tmp_path) == before


def test_an_s3_store_is_checked_with_head_bucket_and_nothing_is_written(s3_endpoint, s3_bucket) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    url = f"s3://{s3_bucket}/projects/demo?endpoint_url={s3_endpoint}"
    assert check_store(url) == "empty"
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-x' not found"):
        check_store(f"s3://no-such-bucket-x/p?endpoint_url={s3_endpoint}")
    s3.put_object(Bucket=s3_bucket, Key="theirs/data.csv", Body=b"1")
    with pytest.raises(StoreError, match=r"holds records but no project.json"):
        check_store(f"s3://{s3_bucket}/theirs?endpoint_url={s3_endpoint}")
    s3.put_object(Bucket=s3_bucket, Key="mine/project.json", Body=b"{}")
    assert check_store(f"s3://{s3_bucket}/mine?endpoint_url={s3_endpoint}") == "project"
    cfg = parse_config(small_config(**{"storage.url": f"s3://{s3_bucket}/projects/demo",
                                       "storage.endpoint_url": s3_endpoint}))
    from crowdloop.engine import default_location

    assert check_config(cfg, location=default_location(cfg)).store_state == "empty"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket).get("Contents", []))
    assert keys == ["mine/project.json", "theirs/data.csv"]


# -- the YAML file and the shipped configs ----------------------------------------------------
def test_duplicate_yaml_keys_are_refused_in_one_line(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("project: demo\npool:\n  source: sklearn\n  name: iris\nsampler:\n  name: margin\n"
                    "sampler:\n  name: random\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: invalid YAML: line 7, column 1: duplicate key 'sampler' (first at line 5); "
                               "expected each key once in a mapping")
    merged = tmp_path / "merged.yaml"  # a merge key may still be overridden: that is what it is for
    merged.write_text("project: demo\npool: &p {source: sklearn, name: iris}\nbaseline: {random: false}\n"
                      "sampler: {<<: {name: margin, batch_size: 5}, batch_size: 9}\n")
    assert load_config(merged).sampler.batch_size == 9


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_check_and_nothing_is_written(path: Path, tmp_path: Path) -> None:
    report = check_config(load_config(path), source=str(path), location=str(tmp_path / "project"))
    assert report.n_selectable > 0 and len(report.classes) >= 2
    assert not (tmp_path / "project").exists()


# -- through the real command ------------------------------------------------------------------
@pytest.mark.parametrize("override, fragment", [
    ({"sampler.name": "margn"}, "sampler.name: unknown sampler 'margn'; known samplers:"),
    ({"sampler.name": "bald", "sampler.params": {"n_sample": 5}}, "sampler.params.n_sample: unknown parameter"),
    ({"pool.feature_columns": ["a", "missing"]}, "pool: column(s) ['missing'] not found in pool.csv"),
])
def test_the_check_command_is_one_line_exit_2_and_writes_nothing(tmp_path, override, fragment) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(csv_config(pool_csv(tmp_path), **override)))
    before = tree(tmp_path)
    result = subprocess.run([*crowdloop_cmd(), "check", str(config), "-p", str(tmp_path / "project")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {config}: "), result.stderr
    assert fragment in result.stderr and result.stdout == ""
    assert tree(tmp_path) == before and not (tmp_path / "project").exists()


def test_the_check_command_reports_what_it_found(tmp_path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump(csv_config(pool_csv(tmp_path))))
    before = tree(tmp_path)
    result = subprocess.run([*crowdloop_cmd(), "check", str(config), "--project-dir", str(tmp_path / "project")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok; pool of 60 items (45 to label, 15 held out for testing), 3 classes")
    assert tree(tmp_path) == before


def test_the_config_model_accepts_any_pool_source_name_and_store_scheme() -> None:
    """The names are checked against the registry by check_config, so plug-ins can be selected."""
    cfg = LoopConfig.model_validate(small_config(pool={"source": "my_plugin"}, storage={"url": "gs://b/p"}))
    assert cfg.pool.source == "my_plugin" and cfg.storage.url == "gs://b/p"
    with pytest.raises(Exception, match="path is required for source 'csv'"):
        LoopConfig.model_validate(small_config(pool={"source": "csv"}))
