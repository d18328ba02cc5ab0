"""Three rounds of the engine with the MTurk vendor; the in-memory MTurk's workers answer from ground truth."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crowdloop import engine, keys
from crowdloop.cli import app
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.storage import read_json
from crowdloop.vendors import mturk
from tests.conftest import small_config
from tests.test_engine import finish_round
from tests.vendors.mturk_fake import FakeMTurk


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeMTurk:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    fake = FakeMTurk(duration_s=14.0)
    monkeypatch.setattr(mturk, "_session_factory", fake.session)
    return fake


def test_three_rounds_through_the_engine(tmp_path: Path, fake: FakeMTurk) -> None:
    config = small_config(**{
        "vendor": {"name": "mturk", "params": {"title": "Which digit is this?", "max_requests_per_second": 100,
                                               "qualifications": {"locales": ["US"]}}},
        "pay.fee_rate": 0.2, "collect.poll_interval_s": 0.01, "stopping.max_rounds": 3,
    })
    p = Project.prepare(parse_config(config), str(tmp_path / "p"))
    truth = {item: str(label) for item, label in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    wrong = {c: p.classes[(p.classes.index(c) + 1) % len(p.classes)] for c in p.classes}
    # two careful workers and one who errs on every fourth item
    fake.answer = lambda item, replica: wrong[truth[item]] if replica == 2 and zlib.crc32(item.encode()) % 4 == 0 else truth[item]

    for r in range(3):
        finish_round(p, r)
    finish_round(p, 2)  # a replayed round calls nothing that creates or pays

    assert len(fake.hits) == 30 + 20 + 20 == fake.calls.count("CreateHIT")
    anns = p.annotations()
    assert len(anns) == 3 * 70 and {a.vendor for a in anns} == {"mturk"}
    assert all(a.duration_s == pytest.approx(14.0) for a in anns)
    labels = list(p.human_labels(before_round=3))
    assert len(labels) == 70 and all(lab.label == truth[lab.item_id] for lab in labels)
    statuses = {a["AssignmentStatus"] for rows in fake.assignments.values() for a in rows}
    assert statuses == {"Approved"} and fake.calls.count("ApproveAssignment") == 210
    pay0 = read_json(p.store, keys.round_key(0, keys.PAY))
    # pilot estimate 10 s, measured 14 s: every assignment of round 0 got a top-up bonus, once
    assert pay0["bonus_per_assignment"] > 0
    bonuses_r0 = [b for b in fake.bonuses if b["AssignmentId"] in {a.assignment_id for a in anns if a.round == 0}]
    assert len(bonuses_r0) == 90 and {b["BonusAmount"] for b in bonuses_r0} == {f"{pay0['bonus_per_assignment']:.2f}"}
    later = read_json(p.store, keys.round_key(1, keys.DISPATCH))
    assert later["estimated_seconds"] == pytest.approx(14.0)
    rewards = {h["Reward"] for h in fake.hits.values()}
    assert rewards == {f"{read_json(p.store, keys.round_key(r, keys.DISPATCH))['reward']:.2f}" for r in range(3)}
    engine.train(p, 3)
    metrics = engine.evaluate(p, 3)
    assert metrics["n_labeled"] == 70 and metrics["accuracy"] > 0.5

    # the CLI expires the last round's HITs and shows the (sandbox) balance
    runner = CliRunner()
    out = runner.invoke(app, ["mturk", "expire-round", str(tmp_path / "p"), "2"])
    assert out.exit_code == 0, out.output
    assert "expired 20 HIT(s)" in out.output
    round2 = {r["hit_id"] for r in read_json(p.store, keys.round_key(2, keys.REFS))["refs"]}
    assert {h["HITId"] for h in fake.hits.values() if h["HITStatus"] == "Unassignable"} == round2
    out = runner.invoke(app, ["mturk", "balance"])
    assert out.exit_code == 0 and "sandbox balance: 10000.00 USD" in out.output
    out = runner.invoke(app, ["mturk", "expire-round", str(tmp_path / "p"), "7"])
    assert out.exit_code == 2 and "round 7 was never dispatched" in out.output
