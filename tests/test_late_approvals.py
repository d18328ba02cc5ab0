"""Work paid past ``pay.approval_deadline_h`` is approved and paid in full, counted late, never rejected.

``pay.approval_deadline_h`` is the time within which submitted work is approved or rejected.
The loop cannot always keep it (a run resumed, or a deferred collect, days later), and then the
worker must not lose out. README's pay section: late work is approved and paid like work on
time (rewards and top-ups alike), ``pay.json`` counts it in ``n_late`` (the assignments
submitted more than the deadline before the pay step ran), and a gold rejection due on it is
withheld (``late_rejections_withheld``, with its evidence); a vendor that approves on its own
sooner (MTurk's ``auto_approval_delay_s``, where a later ``RejectAssignment`` fails and used to
stop the pay step for good) moves that limit.

The pay step's clock is set, never slept on: ``crowdloop.engine.payment.utcnow`` is replaced so
that exactly half of round 0's assignments are past the deadline, and all of round 1's. The
same config run on time is the reference: every figure of ``pay.json`` but ``n_late`` must match.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.records import utcnow
from crowdloop.storage import read_json
from tests.conftest import small_config

DEADLINE_H = 48.0


def _project(location: Path) -> Project:
    return Project.prepare(parse_config(small_config(**{"pay.approval_deadline_h": DEADLINE_H,
                                                        "stopping.max_rounds": 3})), str(location))


def _batch_times(p: Project, r: int) -> list[datetime]:
    batch_id = p.record(r, keys.DISPATCH)["batch_id"]
    return sorted(a.submitted_at for a in p.annotations() if a.batch_id == batch_id)


def _pay_at(p: Project, r: int, monkeypatch: pytest.MonkeyPatch, clock: datetime) -> dict[str, Any]:
    engine.run_round(p, r, until="aggregate")
    with monkeypatch.context() as m:
        m.setattr("crowdloop.engine.payment.utcnow", lambda: clock)
        return engine.pay(p, r)


@pytest.fixture(scope="module")
def on_time(tmp_path_factory) -> Project:
    p = _project(tmp_path_factory.mktemp("on-time") / "p")
    for r in range(2):
        assert engine.run_round(p, r) is None
    return p


def test_late_work_is_approved_and_paid_in_full_and_counted(on_time: Project, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    p = _project(tmp_path / "p")
    deadline = timedelta(hours=DEADLINE_H)

    engine.run_round(p, 0, until="aggregate")
    times = _batch_times(p, 0)
    half = len(times) // 2
    assert times[half - 1] < times[half]  # distinct times: the clock splits the batch in two
    late_pay = _pay_at(p, 0, monkeypatch, times[half] + deadline)  # the first `half` are past the deadline
    assert late_pay["n_late"] == half and 0 < half < len(times)

    far_past = _pay_at(p, 1, monkeypatch, utcnow() + 10 * deadline)  # every assignment of round 1
    assert far_past["n_late"] == len(_batch_times(p, 1))

    for r, paid in ((0, late_pay), (1, far_past)):
        reference = read_json(on_time.store, keys.round_key(r, keys.PAY))
        assert reference["n_late"] == 0
        # approved, rewarded, topped up and charged exactly as on time
        assert {k: v for k, v in paid.items() if k != "n_late"} == {k: v for k, v in reference.items() if k != "n_late"}
        assert paid["n_approved"] == len(_batch_times(p, r)) and paid["n_rejected"] == 0
    # the vendor's own record: every assignment approved, once, its reward paid
    acks = [read_json(p.vendor.store, key) for key in p.vendor.store.list("acks/")]
    decided = [aid for ack in acks for aid in ack["assignment_ids"]]
    assert sorted(decided) == sorted(a.assignment_id for a in p.annotations())
    assert all(ack["accept"] for ack in acks)
    paid_out = round(sum(read_json(p.store, keys.round_key(r, keys.PAY))["rewards"] for r in (0, 1)), 2)
    assert p.vendor.ledger()["paid"] == pytest.approx(paid_out, abs=0.011)


def test_work_paid_just_inside_the_deadline_is_not_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _project(tmp_path / "p")
    engine.run_round(p, 0, until="aggregate")
    earliest = _batch_times(p, 0)[0]
    paid = _pay_at(p, 0, monkeypatch, earliest + timedelta(hours=DEADLINE_H) - timedelta(seconds=1))
    assert paid["n_late"] == 0 and paid["approval_deadline_h"] == DEADLINE_H


# -- rejections: due within the deadline, withheld past it ---------------------------------------
# A crowd where a third answer at random, so gold evidence rejects work (tests/consensus/test_gold_questions.py).
GOLD = {"gold.share": 0.3, "gold.n_items": 40, "gold.min_answers": 4, "gold.min_accuracy": 0.4, "gold.reject_below": 0.5,
        "vendor.params": {"n_workers": 12, "accuracy": [0.85, 0.95], "spammer_fraction": 0.34},
        "pay.approval_deadline_h": DEADLINE_H, "stopping.max_rounds": 3}
GOLD_ROUNDS = 3


def _gold_run(location: Path, monkeypatch: pytest.MonkeyPatch | None, after: timedelta | None) -> Project:
    """Every round paid ``after`` its batch's last submission (None: right away)."""
    p = Project.prepare(parse_config(small_config(**GOLD)), str(location))
    for r in range(GOLD_ROUNDS):
        if monkeypatch is None or after is None:
            assert engine.run_round(p, r) is None
        else:
            engine.run_round(p, r, until="aggregate")
            _pay_at(p, r, monkeypatch, _batch_times(p, r)[-1] + after)
    return p


@pytest.fixture(scope="module")
def gold_on_time(tmp_path_factory) -> list[dict[str, Any]]:
    p = _gold_run(tmp_path_factory.mktemp("gold") / "p", None, None)
    pays = [read_json(p.store, keys.round_key(r, keys.PAY)) for r in range(GOLD_ROUNDS)]
    assert sum(len(pay.get("rejections", [])) for pay in pays) >= 2  # the evidence exists on time
    assert not any("late_rejections_withheld" in pay for pay in pays)
    return pays


def _assert_withheld(p: Project, on_time: list[dict[str, Any]]) -> None:
    for r, reference in enumerate(on_time):
        pay = read_json(p.store, keys.round_key(r, keys.PAY))
        assert "rejections" not in pay and pay["n_rejected"] == 0
        assert pay.get("late_rejections_withheld", []) == reference.get("rejections", [])  # same evidence, not acted on
        assert pay["n_approved"] == reference["n_approved"] + reference["n_rejected"]
    acks = [read_json(p.vendor.store, key) for key in p.vendor.store.list("acks/")]
    assert acks and all(ack["accept"] and ack["paid"] > 0 for ack in acks)


def test_a_rejection_past_the_deadline_is_withheld_and_the_work_paid(gold_on_time, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    late = _gold_run(tmp_path / "late", monkeypatch, timedelta(hours=DEADLINE_H, minutes=1))
    _assert_withheld(late, gold_on_time)


def test_a_rejection_within_the_deadline_is_made(gold_on_time, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the first submission of each batch is at most a minute before its last: all inside the deadline
    inside = _gold_run(tmp_path / "inside", monkeypatch, timedelta(hours=DEADLINE_H, minutes=-5))
    for r, reference in enumerate(gold_on_time):
        pay = read_json(inside.store, keys.round_key(r, keys.PAY))
        assert {k: v for k, v in pay.items() if k != "n_late"} == {k: v for k, v in reference.items() if k != "n_late"}


def test_a_vendor_that_approves_on_its_own_sooner_moves_the_deadline(gold_on_time, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """MTurk approves unreviewed work after ``auto_approval_delay_s`` (default one day, before the
    72-h ``approval_deadline_h``); a rejection after that fails at MTurk, so it is not tried."""
    from crowdloop.vendors.mturk import MTurkVendor
    from crowdloop.vendors.simulated import SimulatedCrowd

    assert MTurkVendor.auto_approval_s.fget(SimpleNamespace(params=SimpleNamespace(auto_approval_delay_s=86400))) == 86400
    monkeypatch.setattr(SimulatedCrowd, "auto_approval_s", 3600.0, raising=False)
    late = _gold_run(tmp_path / "auto", monkeypatch, timedelta(hours=2))  # inside the 48 h, past the vendor's 1 h
    _assert_withheld(late, gold_on_time)
    for r in range(GOLD_ROUNDS):
        assert read_json(late.store, keys.round_key(r, keys.PAY))["n_late"] == 0  # late is counted against pay's deadline


# -- MTurk: auto-approved work cannot be rejected any more ---------------------------------------
@pytest.fixture
def fake_mturk(monkeypatch: pytest.MonkeyPatch):
    from crowdloop.vendors import mturk
    from tests.vendors.mturk_fake import FakeMTurk

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    fake = FakeMTurk(duration_s=9.0)
    monkeypatch.setattr(mturk, "_session_factory", fake.session)
    return fake


def _mturk_round_zero(tmp_path: Path, fake) -> Project:
    """Round 0 on MTurk collected: AWORKER002 answers every item wrongly, gold included."""
    config = small_config(**{**GOLD, "vendor": {"name": "mturk", "params": {"max_requests_per_second": 100}},
                             "pay.approval_deadline_h": 72.0, "collect.poll_interval_s": 0.01})
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    truth = dict(zip(p.pool.ids.tolist(), (str(y) for y in p.pool.y.tolist()), strict=True))
    wrong = {c: p.classes[(p.classes.index(c) + 1) % len(p.classes)] for c in p.classes}
    fake.answer = lambda item, replica: wrong[truth[item]] if replica == 2 else truth[item]
    engine.run_round(p, 0, until="aggregate")
    return p


def test_mturk_work_auto_approved_before_the_pay_step_is_paid_not_rejected(tmp_path: Path, fake_mturk,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    p = _mturk_round_zero(tmp_path, fake_mturk)
    for rows in fake_mturk.assignments.values():  # a day after submission MTurk approved everything itself
        for assignment in rows:
            assignment["AssignmentStatus"] = "Approved"
    last = _batch_times(p, 0)[-1]
    paid = _pay_at(p, 0, monkeypatch, last + timedelta(hours=25))  # inside the 72-h approval deadline
    assert [w["worker_id"] for w in paid["late_rejections_withheld"]] == ["AWORKER002"]
    assert paid["n_rejected"] == 0 and paid["n_late"] == 0 and "RejectAssignment" not in fake_mturk.calls
    assert p.vendor.ledger()["approved"] == paid["n_approved"] == len(_batch_times(p, 0))


def test_mturk_work_rejected_before_auto_approval(tmp_path: Path, fake_mturk, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _mturk_round_zero(tmp_path, fake_mturk)
    paid = _pay_at(p, 0, monkeypatch, _batch_times(p, 0)[-1] + timedelta(hours=1))
    assert [w["worker_id"] for w in paid["rejections"]] == ["AWORKER002"] and "late_rejections_withheld" not in paid
    assert fake_mturk.calls.count("RejectAssignment") == paid["n_rejected"] > 0
