"""Work paid past ``pay.approval_deadline_h`` is still approved and paid in full, and counted late.

``pay.approval_deadline_h`` is the time within which submitted work should be approved (or
rejected). The loop cannot always keep it (a run resumed, or a deferred collect, days later),
and then the worker must not lose out: README's pay section says late work is approved and paid
like work on time (rewards and top-ups alike), and ``pay.json`` counts it in ``n_late`` (the
assignments submitted more than the deadline before the pay step ran).

The pay step's clock is set, never slept on: ``crowdloop.engine.payment.utcnow`` is replaced so
that exactly half of round 0's assignments are past the deadline, and all of round 1's. The
same config run on time is the reference: every figure of ``pay.json`` but ``n_late`` must match.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
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
