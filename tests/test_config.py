"""Config loading: every shipped config loads; bad configs fail in one line naming file, field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from crowdloop.cli import app
from crowdloop.config import LoopConfig, load_config
from crowdloop.errors import ConfigError
from tests.conftest import CONFIGS, small_config

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


def test_configs_folder_is_not_empty() -> None:
    assert any(p.name == "digits.yaml" for p in ALL_CONFIGS)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_checks(path: Path, tmp_path: Path) -> None:
    from crowdloop.engine import Project

    config = load_config(path)
    assert isinstance(config, LoopConfig)
    # Resolving plug-ins, the pool and the vendor must succeed too, not just the schema.
    project = Project.prepare(config, str(tmp_path / "project"))
    assert len(project.pool) > 0


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"sampler.batch_size": 0}, ["sampler.batch_size", "greater than or equal to 1", "got 0"]),
        ({"sampler.nmae": "margin"}, ["sampler.nmae", "unknown field", "batch_size"]),
        ({"pool.name": "digitz"}, ["pool", "digitz", "digits"]),
        ({"consensus.redundancy": "three"}, ["consensus.redundancy", "integer", "three"]),
        ({"stopping.target_accuracy": 1.5}, ["stopping.target_accuracy", "1.5"]),
        ({"project": "Bad Name"}, ["project", "Bad Name"]),
        # A field its source never reads is refused, not ignored: the run would use the whole pool.
        ({"pool.max_items": 100}, ["pool", "max_items=100", "not used by source 'sklearn'", "'fashion_mnist'"]),
        ({"pool.split": "test"}, ["pool", "split='test'", "'sklearn'", "expected it only with source 'fashion_mnist'"]),
        ({"pool.image_size": 32}, ["pool", "image_size=32", "'images'"]),
        # Seeds reach scikit-learn's random_state, which takes 32 bits: a larger one was a traceback.
        ({"seed": 2**32}, ["seed", "less than or equal to 4294967295", "4294967296"]),
        ({"pay.pilot_seconds_per_task": 1e9}, ["pay.pilot_seconds_per_task", "86400"]),
        # A class listed twice was two buttons and two columns of every confusion matrix.
        ({"pool.classes": ["cat", "dog", "cat"]}, ["pool.classes", "class 'cat' is listed more than once"]),
        ({"pool.classes": ["cat", ""]}, ["pool.classes", "class ''", "1-200 printable characters"]),
        ({"pool.classes": ["cat ", "dog"]}, ["pool.classes", "class 'cat '", "without leading or trailing spaces"]),
        ({"pool.classes": ["cat\ndog", "bird"]}, ["pool.classes", "class 'cat\\ndog'", "printable"]),
        # A pasted value is shown cut, not whole: the error stays a line a terminal can show.
        ({"pool.classes": ["x" * 5000, "y"]}, ["pool.classes", "... (5,009 characters))"]),
    ],
)
def test_bad_config_is_one_line_naming_file_field_value(tmp_path: Path, override: dict, fragments: list[str]) -> None:
    path = _write(tmp_path, small_config(**override))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message


def test_numeric_classes_in_yaml_name_the_label_columns_numbers(tmp_path: Path) -> None:
    """``classes: [0, 1]`` for a 0/1 label column was refused as "not a valid string"."""
    config = load_config(_write(tmp_path, "project: p\npool: {source: sklearn, name: iris, classes: [0, 1.0, 2.5]}\n"))
    assert config.pool.classes == ["0", "1", "2.5"]


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "project: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML: line \d+"):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/file.yaml")


def test_relative_pool_path_resolves_against_config_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = _write(tmp_path, small_config(**{"pool.source": "csv", "pool.path": "data/pool.csv", "pool.name": None}))
    assert load_config(path).pool.path == str((tmp_path / "data" / "pool.csv").resolve())


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"sampler.name": "nope"}, ["sampler.name", "unknown sampler 'nope'", "margin", "entropy"]),
        ({"vendor.name": "nope"}, ["vendor.name", "unknown vendor 'nope'", "simulated"]),
        ({"consensus.method": "nope"}, ["consensus.method", "unknown aggregator 'nope'", "dawid_skene"]),
        ({"model.estimator": "sklearn.nope.Model"}, ["model.estimator", "sklearn.nope"]),
        ({"model.estimator": "sklearn.linear_model.LinearRegression", "model.params": {}},
         ["model.estimator", "not a classifier"]),
        ({"model.params": {"bogus": 1}}, ["model.params", "bogus"]),
        ({"sampler.batch_size": 100000}, ["sampler.batch_size=100000", "larger than the pool"]),
        ({"vendor.params": {"n_workers": 0}}, ["vendor.params.n_workers", "got 0"]),
        ({"vendor.params": {"accuracy": [0.9, 0.2]}}, ["vendor.params", "accuracy"]),
        ({"evaluation": {"method": "active", "tilt": -1}}, ["evaluation.tilt", "greater than or equal to 0", "got -1"]),
    ],
)
def test_cli_run_reports_bad_input_in_one_line_exit_2(tmp_path: Path, override: dict, fragments: list[str]) -> None:
    path = _write(tmp_path, small_config(**override))
    project_dir = tmp_path / "project"
    result = CliRunner().invoke(app, ["run", str(path), "--project-dir", str(project_dir)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]
    assert not project_dir.exists(), "a rejected config must not leave a project directory behind"


def test_cli_check_accepts_demo_config() -> None:
    result = CliRunner().invoke(app, ["check", str(CONFIGS / "digits.yaml")])
    assert result.exit_code == 0
    assert "ok" in result.output


def test_project_dir_that_is_a_file_is_one_line_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, small_config())
    blocker = tmp_path / "occupied"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(app, ["run", str(path), "--project-dir", str(blocker)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: project directory") and result.output.count("\n") == 1
    assert blocker.read_text() == "not a directory"


def test_class_names_yaml_reads_as_booleans_are_named_as_such() -> None:
    """`classes: [yes, no]` is [True, False] to YAML 1.1: pydantic said "not a valid string" of
    words the user typed; the line now says why and how to quote them."""
    from crowdloop.config import parse_config

    for snippet, where in (("pool: {classes: [spam, no]}", "pool.classes: classes[1] is False"),
                           ("guidelines: {classes: {yes: a yes answer}}", "guidelines.classes: classes[0] is True")):
        data = yaml.safe_load(snippet)
        section, fields = next(iter(data.items()))
        with pytest.raises(ConfigError) as refused:
            parse_config(small_config(**{f"{section}.{k}": v for k, v in fields.items()}))
        assert str(refused.value).startswith(f"<config>: {where}: YAML reads an unquoted yes/no/on/off/true/false as a "
                                             "boolean and ~/null as nothing; quote the class names ('yes', 'no')")
    quoted = yaml.safe_load("pool: {classes: ['yes', 'no']}\nguidelines: {classes: {0: zero}}")
    cfg = parse_config(small_config(**{"pool.classes": quoted["pool"]["classes"], "guidelines": quoted["guidelines"]}))
    assert cfg.pool.classes == ["yes", "no"] and cfg.guidelines.classes == {"0": "zero"}
