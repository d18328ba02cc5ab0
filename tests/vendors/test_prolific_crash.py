"""Crash rows for the ``prolific`` vendor: SIGKILL the loop between the intent and the study, and
between approval and bonus; the rerun must create no second study and pay nobody twice.

The loop runs in a forked child under ``tests/faults.py`` (``CROWDLOOP_FAULT_AT`` names the
vendor's own kill points, ``crowdloop.vendors.prolific.KILL_POINTS``); the fake Prolific API
and the participants (a thread answering through the desk) live in this process, so Prolific's
side outlives the kill like the real service would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crowdloop import keys
from crowdloop.engine import Project
from crowdloop.errors import CrowdloopError
from crowdloop.storage import read_json
from crowdloop.storage.local import LocalStore
from crowdloop.testing import make_context
from crowdloop.vendors import prolific
from crowdloop.vendors.prolific import KILL_POINTS, ProlificVendor
from tests.fault_harness import Truth, fork_run
from tests.faults import KILL_ENV
from tests.vendors.prolific_fake import FakeProlific, WorkClock, participant_ids, take_part

pytestmark = pytest.mark.slow
TOKEN = "crash-token"


def crash_config(api_url: str) -> dict[str, Any]:
    return {
        "project": "crash", "seed": 11,
        "pool": {"source": "sklearn", "name": "digits", "test_size": 0.3},
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.1, "max_iter": 300}},
        "sampler": {"name": "margin", "batch_size": 6, "initial_size": 8},
        "vendor": {"name": "prolific", "params": {"app_url": "https://label.example.org", "api_url": api_url,
                                                   "timeout_s": 5, "backoff_s": 0.01}},
        "consensus": {"method": "majority_vote", "redundancy": 3},
        "collect": {"poll_interval_s": 0.1, "timeout_s": 86400},  # every place is filled: no wait
        "pay": {"pilot_seconds_per_task": 4.0, "hourly_wage": 12.0},  # a one-minute place; answers take 70 s: a top-up
        "stopping": {"max_rounds": 1},
    }


class Participants:
    """Fresh participants take every open place of the project's studies, through the desk."""

    def __init__(self, api: FakeProlific, location: Path, truth: Truth) -> None:
        self.api, self.truth = api, truth
        ctx = make_context(LocalStore(location), name="prolific", classes=truth.classes, project="crash", seed=11)
        self.ctx = ctx
        self.crowd = iter(participant_ids(10_000))
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="participants", daemon=True)

    def __enter__(self) -> Participants:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import dataclasses

        desk = None
        clock = WorkClock()
        while not self._stop.wait(0.1):
            try:
                if desk is None:
                    desk = ProlificVendor(crash_config(self.api.url)["vendor"]["params"],
                                          dataclasses.replace(self.ctx, hourly_wage=12.0)).desk
                    desk.clock = clock
                for study in self.api.open_studies():
                    while take_part(self.api, desk, study["id"], next(self.crowd),
                                    lambda item, who: self.truth.answer(item, 0), clock=clock, seconds=70.0):
                        pass
            except (CrowdloopError, KeyError, AssertionError) as exc:  # reported at the end
                self.errors.append(f"{type(exc).__name__}: {exc}")


def run(api: FakeProlific, location: Path, env: dict[str, str]) -> int:
    config = crash_config(api.url)
    with Participants(api, location, Truth(config)) as players:
        code = fork_run(config, str(location), env, timeout=240).returncode
    assert not [e for e in players.errors if e.startswith("AssertionError")], players.errors[:3]
    return code


def outcome(api: FakeProlific, location: Path) -> dict[str, Any]:
    p = Project.open(str(location))
    pays = [read_json(p.store, keys.round_key(r, keys.PAY)) for r in p.rounds() if p.store.exists(keys.round_key(r, keys.PAY))]
    books = api.accounting()
    return {"studies": books["studies"], "duplicate_studies": books["duplicate_studies"],
            "bulk_pay_calls": books["bulk_pay_calls"], "max_bonuses": books["max_bonuses_per_participant_study"],
            "approved": books["approved"], "n_log": len(p.annotations()),
            "ledger": (round(sum(x["rewards"] for x in pays), 2), round(sum(x["bonuses"] for x in pays), 2),
                       round(sum(x["fees"] for x in pays), 2)),
            "fake": (books["rewards"], books["bonuses"], books["fees"])}


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(prolific.TOKEN_ENV, TOKEN)  # the forked loop inherits it
    return TOKEN


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    mp = pytest.MonkeyPatch()
    mp.setenv(prolific.TOKEN_ENV, TOKEN)
    try:
        with FakeProlific(token=TOKEN) as api:
            location = tmp_path_factory.mktemp("clean") / "project"
            assert run(api, location, {}) == 0
            yield outcome(api, location)
    finally:
        mp.undo()


@pytest.mark.parametrize("point", [f"{name}@0" for name in KILL_POINTS])
def test_a_kill_inside_the_vendor_makes_no_second_study_and_pays_nobody_twice(
        point: str, clean: dict[str, Any], token: str, tmp_path: Path) -> None:
    assert clean["studies"] == 1 and clean["ledger"] == clean["fake"] and clean["ledger"][1] > 0
    with FakeProlific(token=token) as api:
        location = tmp_path / "project"
        assert run(api, location, {KILL_ENV: point}) == -9  # SIGKILLed at the point
        assert run(api, location, {}) == 0
        got = outcome(api, location)
    assert got["duplicate_studies"] == 0 and got["studies"] == 1
    assert got["bulk_pay_calls"] == 1 and got["max_bonuses"] == 1  # no double payment
    assert got["ledger"] == got["fake"] == clean["fake"]  # the books agree to the cent, as without the kill
    assert got["n_log"] == got["approved"] == clean["approved"]
