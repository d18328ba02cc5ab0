"""Crashes in a round with a trained model, through the real ``crowdloop run`` (issue 21).

``tests/test_reliability.py`` kills every step boundary in fork mode, where round 0 is a cold
start and the I/O steps are retried by the harness's own loop. Here the loop is the real Prefect
flow (``python -m tests.faults run``: ``crowdloop run`` with a kill switch, the flow's retry rule
as it ships) and every kill is in round 1, after round 0's labels trained a model that picks
round 1's items. After each kill the next run resumes; the finished project must equal an
uninterrupted run with the same seed: the items selected and sent, the answers, the labels, the
per-round records and the money (the vendor's ledger, to the cent, nothing paid twice).

Kills come in chains on one project (see ``Scenario.kill_chain``): one ``crowdloop run`` per
kill instead of two keeps the file at about two minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import json

import pytest

from crowdloop import keys
from crowdloop.engine import Project
from tests.fault_harness import Scenario, clean_cli_scenario

pytestmark = pytest.mark.slow

# Round 1 of the harness config (max_rounds=2): round 0 is the random cold start, round 1 the
# first selected by a model, round 2 trains, evaluates and stops.
SELECT_TO_COLLECT = ["select:done@1", "dispatch:before_submit@1", "dispatch:after_submit@1", "collect:after_segment@1"]
AGGREGATE_AND_PAY = [
    "write:rounds/0001/aggregate.json@1",  # labels.jsonl written, the summary not
    "aggregate:done@1",
    "write:vendor/simulated/bonuses/@1",  # the round's work approved (paid), its top-up bonus not yet
    "write:rounds/0001/pay.json@1",  # approvals and bonus paid, the pay record not written
    "pay:done@1",
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, prefect_api_url: str) -> Scenario:
    s = clean_cli_scenario("simulated", tmp_path_factory, prefect_api_url)
    p = Project.open(s.location("clean"))
    # round 1 really had a model: trained on round 0's labels, and it picked round 1's items
    assert p.record(1, keys.TRAIN)["trained"] is True and p.load_model(1) is not None
    assert p.record(1, keys.SELECTION)["strategy"] == "margin"
    pay = p.record(1, keys.PAY)
    assert pay["rewards"] > 0 and pay["bonuses"] > 0  # round 1 pays a top-up bonus too: the kill between matters
    assert s.clean["paid"] == s.clean["vendor_paid"] > 0
    return s


def test_the_kill_points_are_where_round_one_reaches(clean: Scenario) -> None:
    """Every boundary and inner point the chains kill at is one the uninterrupted run passed in round 1."""
    for point in SELECT_TO_COLLECT + AGGREGATE_AND_PAY:
        if not point.startswith("write:"):
            assert point in clean.boundaries, point
    trace = (clean.workdir / "clean" / "trace.txt").read_text()
    for point in AGGREGATE_AND_PAY:
        if point.startswith("write:"):
            prefix = point[len("write:"):].rsplit("@", 1)[0]
            assert f" write {prefix}" in trace, point


def test_kills_between_select_and_collect_in_round_one_resume_exactly(clean: Scenario) -> None:
    """Killed after round 1's model-based selection, around the vendor's submit, after the first
    answers reached the log: the resumed runs send the same items once and lose no answer."""
    result = clean.kill_chain(SELECT_TO_COLLECT, "chain-select")
    assert [k["rc"] for k in result["kills"]] == [-9] * len(SELECT_TO_COLLECT), result
    assert result["mismatches"] == [], result


def test_kills_in_aggregate_and_pay_of_round_one_never_pay_twice(clean: Scenario) -> None:
    """Killed before and after round 1's aggregate record, between approvals and the top-up bonus,
    after both were paid but before ``pay.json``: the vendor's ledger equals the uninterrupted
    run's to the cent, and the labels and every round record are the same."""
    result = clean.kill_chain(AGGREGATE_AND_PAY, "chain-pay")
    assert [k["rc"] for k in result["kills"]] == [-9] * len(AGGREGATE_AND_PAY), result
    assert result["mismatches"] == [], result
    p = Project.open(clean.location("chain-pay"))
    ledger = p.vendor.ledger()
    pays = [p.record(r, keys.PAY) for r in p.rounds() if p.has(r, keys.PAY)]
    assert ledger["paid"] == pytest.approx(sum(x["rewards"] for x in pays), abs=0.001)
    assert ledger["bonuses"] == pytest.approx(sum(x["bonuses"] for x in pays), abs=0.001)
    # one bonus record per round that paid one: a second top-up would be a second file
    bonus_files = [json.loads(p.vendor.store.read_bytes(k)) for k in p.vendor.store.list("bonuses/")]
    assert len(bonus_files) == sum(1 for x in pays if x["bonuses"] > 0)
