"""The keys README calls stable in ``crowdloop status --json``, pinned by one schema.

README ("``crowdloop status DIR --json`` (stable; scripts read it)"): ``rounds`` (a list of
``{round, n_labeled, n_judgments, cost, accuracy}``), ``reference_accuracy``, ``finished``,
``stop_reason``, ``totals`` (``n_labeled``, ``n_judgments``, ``cost``, ``paid_to_workers``,
``work_seconds``, ``effective_hourly_wage``), ``baseline`` (``null`` or ``{strategy: "random",
rounds: [...]}``) and the identification keys ``project``, ``store``, ``sampler``, ``vendor``,
``consensus``, ``currency``. "Keys may be added; existing keys keep their meaning": the schema
allows extra keys and fails when a stable key is renamed, dropped or changes type. It is
checked on the real command's output, for a project in the middle of round 0 (nulls: no
accuracy, no stop, no wage yet) and for a finished one with its random baseline.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.storage import write_json
from tests.conftest import crowdloop_cmd, small_config


class _Stable(BaseModel):
    # strict: 1 is no float's stand-in for True, "3" no int; extra keys may be added (README)
    model_config = ConfigDict(strict=True, extra="allow")


class Round(_Stable):
    round: int
    n_labeled: int
    n_judgments: int
    cost: float
    accuracy: float | None


class Totals(_Stable):
    n_labeled: int
    n_judgments: int
    cost: float
    paid_to_workers: float
    work_seconds: float
    effective_hourly_wage: float | None


class Baseline(_Stable):
    strategy: Literal["random"]
    rounds: list[Round]


class Status(_Stable):
    rounds: list[Round]
    reference_accuracy: float | None
    finished: bool
    stop_reason: str | None
    totals: Totals
    baseline: Baseline | None
    project: str
    store: str
    sampler: str
    vendor: str
    consensus: str
    currency: str


# Every stable key as a path into the JSON ("rounds.0.cost": the first round's), with a value of
# the wrong type: the schema must refuse the document without it and with the wrong value.
STABLE_PATHS: dict[str, Any] = {
    "rounds": {"round": 0}, "rounds.0.round": "0", "rounds.0.n_labeled": 1.5, "rounds.0.n_judgments": None,
    "rounds.0.cost": "1.0", "rounds.0.accuracy": "high", "reference_accuracy": "0.9", "finished": "yes",
    "stop_reason": 1, "totals": [], "totals.n_labeled": "10", "totals.n_judgments": 2.5, "totals.cost": None,
    "totals.paid_to_workers": "1", "totals.work_seconds": None, "totals.effective_hourly_wage": "12/h",
    "baseline": "random", "baseline.strategy": "margin", "baseline.rounds": {}, "baseline.rounds.0.n_labeled": "40",
    "project": 1, "store": None, "sampler": ["margin"], "vendor": None, "consensus": 3, "currency": None,
}


def _status_json(location: str) -> dict[str, Any]:
    out = subprocess.run([*crowdloop_cmd(), "status", "-p", location, "--json"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Any]:
    """``status --json`` of a finished 3-round project with its random baseline (run as the flow
    runs it: the main rounds, then the twin under ``baseline/``)."""
    location = str(tmp_path_factory.mktemp("status") / "p")
    p = Project.prepare(parse_config(small_config(**{"stopping.max_rounds": 3, "baseline.random": True})), location)
    engine.run_rounds(p)
    twin = p.baseline()
    write_json(twin.store, keys.PROJECT, {"config": twin.config.model_dump(mode="json"), "format": 1})
    engine.run_rounds(Project.open(twin.store.url))
    return _status_json(location)


@pytest.fixture(scope="module")
def midway(tmp_path_factory) -> dict[str, Any]:
    """``status --json`` of a project whose round 0 is dispatched and not paid."""
    location = str(tmp_path_factory.mktemp("status") / "p")
    p = Project.prepare(parse_config(small_config(**{"baseline.random": True})), location)
    engine.run_round(p, 0, until="dispatch")
    return _status_json(location)


def test_a_finished_project_with_its_baseline_has_every_stable_key(finished: dict[str, Any]) -> None:
    state = Status.model_validate(finished)
    assert state.finished and state.stop_reason and state.reference_accuracy is not None
    assert [r.round for r in state.rounds] == [0, 1, 2, 3] and state.rounds[-1].accuracy is not None
    assert state.baseline is not None and [r.n_labeled for r in state.baseline.rounds] == [r.n_labeled for r in state.rounds]
    assert state.totals.effective_hourly_wage is not None and state.totals.n_judgments == 3 * state.totals.n_labeled
    assert (state.project, state.sampler, state.vendor, state.consensus, state.currency) == (
        "tiny", "margin", "simulated", "one_coin_dawid_skene", "USD")


def test_a_project_in_its_first_round_has_every_stable_key_with_nulls(midway: dict[str, Any]) -> None:
    state = Status.model_validate(midway)
    assert not state.finished and state.stop_reason is None and state.baseline is None
    assert [(r.round, r.accuracy) for r in state.rounds] == [(0, None)]
    assert state.totals.effective_hourly_wage is None


def _at(doc: Any, path: str) -> tuple[Any, str | int]:
    *parents, leaf = path.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, int(leaf) if isinstance(doc, list) else leaf


@pytest.mark.parametrize("path", list(STABLE_PATHS))
def test_a_stable_key_renamed_dropped_or_retyped_fails_the_schema(finished: dict[str, Any], path: str) -> None:
    renamed = copy.deepcopy(finished)
    parent, leaf = _at(renamed, path)
    if isinstance(parent, dict):  # (a list's element cannot be renamed)
        parent[f"{leaf}_v2"] = parent.pop(leaf)
        with pytest.raises(ValidationError):
            Status.model_validate(renamed)
    retyped = copy.deepcopy(finished)
    parent, leaf = _at(retyped, path)
    parent[leaf] = STABLE_PATHS[path]
    with pytest.raises(ValidationError):
        Status.model_validate(retyped)


def test_keys_may_be_added(finished: dict[str, Any]) -> None:
    added = {**copy.deepcopy(finished), "a_new_key": {"x": 1}}
    added["totals"]["a_new_total"] = 3
    state = Status.model_validate(added)
    assert state.model_extra["a_new_key"] == {"x": 1} and state.totals.model_extra["a_new_total"] == 3
