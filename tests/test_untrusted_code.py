"""Code the user did not write never runs (issue 19, points 8 and 9).

* ``model.estimator`` (a flow parameter of a deployment) names only scikit-learn-style
  classifier classes from trusted modules; nothing else is imported or called.
* A model file in the store is unpickled only if its sha256 is the one the create-only
  training record wrote down.
"""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import pytest
import yaml

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError, StoreError
from tests.conftest import crowdloop_cmd, small_config

REPO = Path(__file__).resolve().parents[1]


class _RunsACommand:
    """A pickle whose loading runs a shell command (what a planted model.pkl could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- point 8: the estimator ----------------------------------------------------------------------
def test_a_function_as_estimator_is_refused_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cfg = parse_config(small_config(model={"estimator": "os.system", "params": {"command": f"touch {marker}"}}))
    with pytest.raises(ConfigError) as info:
        Project.prepare(cfg, str(tmp_path / "p"))
    message = str(info.value)
    assert "\n" not in message and "model.estimator" in message and "'os.system'" in message, message
    assert not marker.exists()


def test_the_cli_refuses_os_system_in_one_line_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(yaml.safe_dump(small_config(model={"estimator": "os.system",
                                                         "params": {"command": f"touch {marker}"}})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDLOOP_")}
    done = subprocess.run([*crowdloop_cmd(), "run", str(config), "--project-dir", str(tmp_path / "p")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "model.estimator" in done.stderr
    assert not marker.exists()


def _module_with_import_side_effect(where: Path, marker: Path) -> str:
    """A module whose import writes ``marker`` and that defines a real classifier class."""
    (where / "evil_models.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "class Classifier(LogisticRegression):\n    pass\n")
    return "evil_models.Classifier"


def test_a_module_outside_the_allow_list_is_never_imported(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    path = _module_with_import_side_effect(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CROWDLOOP_ESTIMATOR_MODULES", raising=False)
    with pytest.raises(ConfigError, match=r"model.estimator: 'evil_models.Classifier'.*CROWDLOOP_ESTIMATOR_MODULES"):
        Project.prepare(parse_config(small_config(model={"estimator": path})), str(tmp_path / "p"))
    assert not marker.exists()
    # the owner of the machine (not the config) can trust more modules
    monkeypatch.setenv("CROWDLOOP_ESTIMATOR_MODULES", "xgboost, evil_models")
    p = Project.prepare(parse_config(small_config(model={"estimator": path})), str(tmp_path / "q"))
    assert type(p.model_template.steps[-1][1]).__name__ == "Classifier" and marker.exists()


@pytest.mark.parametrize("estimator", [
    "sklearn.linear_model.logistic_regression_path_does_not_exist",
    "sklearn.preprocessing.StandardScaler",  # a class, but not a classifier with predict_proba
    "sklearn.base.clone",  # a function
    "sklearnx.evil.Classifier",  # a prefix look-alike
    "crowdloop.engine.project.write_once",
])
def test_only_classifier_classes_of_trusted_modules_are_accepted(tmp_path: Path, estimator: str) -> None:
    with pytest.raises(ConfigError) as info:
        Project.prepare(parse_config(small_config(model={"estimator": estimator})), str(tmp_path / "p"))
    assert "model.estimator" in str(info.value) and "\n" not in str(info.value)


def test_a_nested_estimator_of_an_ensemble_is_held_to_the_same_rule(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = {"estimator": "crowdloop.models.ensemble.SeedEnsemble", "scale": False,
             "params": {"estimator": "os.system", "params": {"command": f"touch {marker}"}, "n_members": 2}}
    with pytest.raises(ConfigError, match=r"SeedEnsemble\.estimator: 'os\.system'"):
        Project.prepare(parse_config(small_config(model=model)), str(tmp_path / "p"))
    assert not marker.exists()


# -- point 9: stored models ----------------------------------------------------------------------
def _plant(p: Project, r: int, marker: Path) -> None:
    """Replace round ``r``'s model file in place, as someone with write access to the store could."""
    path = Path(p.store.url) / keys.round_key(r, keys.MODEL)
    path.unlink()
    path.write_bytes(pickle.dumps(_RunsACommand(marker)))


def test_a_model_file_changed_in_the_store_is_refused_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    p = Project.prepare(parse_config(small_config(**{"stopping.max_rounds": 2})), str(tmp_path / "p"))
    engine.run_round(p, 0)
    engine.run_round(p, 1, until="train")
    assert "model_sha256" in p.record(1, keys.TRAIN)
    _plant(p, 1, marker)
    reader = Project.open(p.store.url)
    with pytest.raises(StoreError) as info:
        reader.load_model(1)
    message = str(info.value)
    assert "\n" not in message and keys.round_key(1, keys.MODEL) in message and "sha256" in message, message
    assert not marker.exists()


def test_warm_start_checks_the_previous_model_too(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    model = {"estimator": "sklearn.linear_model.LogisticRegression", "scale": False,
             "params": {"C": 0.1, "max_iter": 500, "warm_start": True}}
    p = Project.prepare(parse_config(small_config(model=model, **{"stopping.max_rounds": 3})), str(tmp_path / "p"))
    engine.run_round(p, 0)
    engine.run_round(p, 1)
    assert p.record(1, keys.TRAIN)["trained"]
    _plant(p, 1, marker)
    fresh = Project.open(p.store.url)
    with pytest.raises(StoreError, match=r"rounds/0001/model.pkl.*sha256"):
        engine.train(fresh, 2)
    assert not marker.exists()
