"""Which config sections may change on resume (README "Configuration"): every section pinned.

README: "On resume only ``stopping``, ``collect``, ``baseline``, ``scale`` and ``credentials``
may change (e.g. raise ``max_rounds`` to go on); any other difference is an error naming the
field." Each frozen section is changed in one field and must be refused with one line naming
the field, the new and the old value, leaving the project's record untouched; each resumable
section is changed and must be accepted, the project then running with the new value. A
section added to ``LoopConfig`` without a decision here fails ``test_every_section_is_pinned``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crowdloop import keys, registry
from crowdloop.config import RESUMABLE_FIELDS, RESUMABLE_SECTIONS, LoopConfig, parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError
from crowdloop.storage import read_json
from tests.conftest import small_config

# (dotted field, new value): one field of each section that the checks accept either way.
FROZEN: list[tuple[str, Any]] = [
    ("project", "tiny-renamed"),
    ("seed", 8),
    ("pool.test_size", 0.25),
    ("model.params.C", 0.2),
    ("sampler.batch_size", 25),
    ("vendor.params.n_workers", 13),
    ("consensus.redundancy", 2),
    ("gold.min_accuracy", 0.6),
    ("evaluation.max_items", 200),
    ("autolabel.target_accuracy", 0.9),
    ("semi_supervised.n_neighbors", 5),
    ("pay.hourly_wage", 15.0),
    ("storage.url", "projects/tiny-elsewhere"),  # -p names the store; the config field is still frozen
]
RESUMABLE: list[tuple[str, Any]] = [
    ("stopping.max_rounds", 9),
    ("stopping.label_budget", 100),
    ("collect.timeout_s", 60.0),
    ("collect.mode", "defer"),
    ("baseline.random", True),
    ("scale.shards", 2),
    ("credentials.aws", "test-aws-block"),
    ("guidelines.text", "Read the whole item first."),  # guidelines get clearer as a team learns its task
]
# single fields of frozen sections that may change on resume (``RESUMABLE_FIELDS``)
RESUMABLE_SINGLE: list[tuple[str, Any]] = [
    ("evaluation.estimator", "draws"),
]
SECRET_SOURCE = "resume-test-secrets"


def _secret(name: str, *, field: str) -> Any:
    """A secret source for the credentials case: the AWS block exists, with both keys."""
    return {"aws_access_key_id": "AKIDRESUMETEST", "aws_secret_access_key": "not-a-secret"}


@pytest.fixture(autouse=True)
def _test_secret_source():
    registry.secrets.register(SECRET_SOURCE, _secret)
    yield
    registry.secrets.unregister(SECRET_SOURCE)


def _config(**overrides: Any) -> LoopConfig:
    return parse_config(small_config(**{"credentials.source": SECRET_SOURCE, **overrides}), source="test")


def _value(config: LoopConfig, dotted: str) -> Any:
    node: Any = config.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def _started(tmp_path: Path) -> tuple[str, LoopConfig, bytes]:
    location = str(tmp_path / "p")
    config = _config()
    Project.prepare(config, location)
    return location, config, (tmp_path / "p" / keys.PROJECT).read_bytes()


def test_every_section_is_pinned() -> None:
    sections = set(LoopConfig.model_fields)
    frozen = {field.split(".")[0] for field, _ in FROZEN}
    resumable = {field.split(".")[0] for field, _ in RESUMABLE}
    assert resumable == set(RESUMABLE_SECTIONS)
    assert frozen | resumable == sections and not frozen & resumable


@pytest.mark.parametrize(("field", "new"), FROZEN, ids=[f for f, _ in FROZEN])
def test_a_frozen_section_is_refused_in_one_line(tmp_path: Path, field: str, new: Any) -> None:
    location, started, record = _started(tmp_path)
    old = _value(started, field)
    assert old != new
    changed = _config(**{field: new})
    with pytest.raises(ConfigError) as refused:
        Project.prepare(changed, location)
    message = str(refused.value)
    assert "\n" not in message
    assert re.match(rf"{re.escape(field)}: {re.escape(repr(new))} differs from {re.escape(repr(old))} ", message), message
    assert (tmp_path / "p" / keys.PROJECT).read_bytes() == record  # nothing written
    assert not list((tmp_path / "p").glob(f"{keys.CONFIG_HISTORY}*"))
    Project.prepare(started, location)  # the original config still resumes


def test_the_resumable_single_fields_are_the_configs() -> None:
    assert [f for f, _ in RESUMABLE_SINGLE] == list(RESUMABLE_FIELDS)


@pytest.mark.parametrize(("field", "new"), RESUMABLE + RESUMABLE_SINGLE, ids=[f for f, _ in RESUMABLE + RESUMABLE_SINGLE])
def test_a_resumable_section_is_accepted_and_becomes_the_projects(tmp_path: Path, field: str, new: Any) -> None:
    location, started, _ = _started(tmp_path)
    assert _value(started, field) != new
    resumed = Project.prepare(_config(**{field: new}), location)
    assert _value(resumed.config, field) == new
    # the project's own record now holds the new value (a later `status`, `verify` reads it) ...
    assert _value(LoopConfig.model_validate(read_json(resumed.store, keys.PROJECT)["config"]), field) == new
    assert _value(Project.open(location).config, field) == new
    # ... and the old config is kept for the record
    history = [read_json(resumed.store, k) for k in resumed.store.list(keys.CONFIG_HISTORY)]
    assert [_value(LoopConfig.model_validate(h["config"]), field) for h in history] == [_value(started, field)]


def test_a_project_stored_with_a_field_its_source_never_reads_still_opens_and_resumes(tmp_path: Path) -> None:
    """``parse_config`` now refuses ``pool.max_items`` on a scikit-learn pool (it was ignored); a
    project an earlier release stored with it must still open, resume and change nothing."""
    location = str(tmp_path / "p")
    with pytest.raises(ConfigError, match=r"^test: pool.max_items=50: not used by source 'sklearn'"):
        _config(**{"pool.max_items": 50})
    data = small_config(**{"credentials.source": SECRET_SOURCE, "pool.max_items": 50})
    old = LoopConfig.model_validate(data)  # what an earlier release accepted and stored
    first = Project.prepare(old, location)
    assert Project.open(location).config.pool.max_items == 50
    resumed = Project.prepare(_config(), location)  # the user's file without the field
    assert resumed.pool.ids.tolist() == first.pool.ids.tolist()
    # any other change of the pool section is still refused
    with pytest.raises(ConfigError, match=r"^pool.test_size: 0.25 differs from 0.3"):
        Project.prepare(_config(**{"pool.test_size": 0.25}), location)


def test_a_csv_project_from_before_ids_as_written_keeps_reading_ids_as_numbers(tmp_path: Path) -> None:
    """Ids are now read as written ('007'); a project stored before that read them as numbers
    ('7') and must resume with that reading: its records name '7', and a KeyError traceback
    was what the new reading gave it."""
    import pandas as pd

    from crowdloop import engine
    from crowdloop.engine.project import stored_config

    rng = np.random.default_rng(3)
    pd.DataFrame({"case": [f"{i:03d}" for i in range(60)], "f": rng.normal(size=60),
                  "label": ["a", "b"] * 30}).to_csv(tmp_path / "pool.csv", index=False)
    data = small_config(**{"pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "case",
                                    "label_column": "label"}, "stopping.max_rounds": 1})
    location = str(tmp_path / "p")
    old = engine.run_in_process(Project.prepare(parse_config({**data, "pool": {**data["pool"], "ids_as_written": False}}),
                                                location))
    assert "7" in old.pool.ids.tolist()
    record = read_json(old.store, keys.PROJECT)
    del record["config"]["pool"]["ids_as_written"]  # as an earlier release stored it
    old.store.write_bytes(keys.PROJECT, json.dumps(record).encode())
    assert stored_config(record).pool.ids_as_written is False
    assert Project.open(location).pool.ids.tolist() == old.pool.ids.tolist()
    resumed = engine.run_in_process(Project.prepare(parse_config({**data, "stopping": {"max_rounds": 2}}), location))
    assert resumed.rounds() == [0, 1, 2] and "7" in resumed.pool.ids.tolist()
    with pytest.raises(ConfigError, match=r"^pool.ids_as_written: true, but project .* reads its csv ids as numbers .*"
                                          r"set pool.ids_as_written: false, or leave it out, to resume it$"):
        Project.prepare(parse_config({**data, "pool": {**data["pool"], "ids_as_written": True}}), location)
    fresh = Project.prepare(parse_config(data), str(tmp_path / "new"))
    assert "007" in fresh.pool.ids.tolist() and "7" not in fresh.pool.ids.tolist()


def test_a_stored_config_that_a_newer_rule_refuses_is_one_line_naming_project_json(tmp_path: Path) -> None:
    """A rule added since (a class listed twice) made opening an old project a pydantic traceback."""
    location = str(tmp_path / "p")
    first = Project.prepare(_config(), location)
    record = read_json(first.store, keys.PROJECT)
    record["config"]["pool"]["classes"] = ["a", "a", "b"]
    first.store.write_bytes(keys.PROJECT, json.dumps(record).encode())
    with pytest.raises(ConfigError, match=r"^project.json \(the project's stored config\): pool.classes: class 'a' is "
                                          r"listed more than once"):
        Project.open(location)
