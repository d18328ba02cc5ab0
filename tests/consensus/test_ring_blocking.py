"""Rings of colluders through the engine: found by the consensus model, recorded as evidence in
aggregate.json, and — with ``consensus.block_rings`` — blocked at the next dispatch with a
reason that names the evidence."""

from __future__ import annotations

import numpy as np
import pytest

from crowdloop import keys
from crowdloop.storage import read_json
from crowdloop.vendor import block_of
from crowdloop.workers import worker_accounts
from tests.conftest import small_config
from tests.crowd_helpers import intents, run_engine

# 10 workers, 3 of them a ring sharing one answer per item (right 30 % of the time).
RING_CROWD = {"vendor.params": {"n_workers": 10, "accuracy": [0.75, 0.95], "spammer_fraction": 0.0, "ring_fraction": 0.3},
              "sampler.batch_size": 30, "sampler.initial_size": 60, "stopping.max_rounds": 6}


def ring_project(tmp_path_factory, block: bool):
    cfg = small_config(**RING_CROWD, consensus={"method": "auto", "redundancy": 3, "block_rings": block})
    return run_engine(cfg, str(tmp_path_factory.mktemp(f"ring-{block}") / "p"))


@pytest.fixture(scope="module")
def blocking(tmp_path_factory):
    return ring_project(tmp_path_factory, True)


@pytest.fixture(scope="module")
def not_blocking(tmp_path_factory):
    return ring_project(tmp_path_factory, False)


def ring_members(p) -> set[str]:
    vendor = p.vendor
    return {vendor.worker_ids[i] for i, member in enumerate(vendor.in_ring) if member}


def summaries(p) -> dict[int, dict]:
    return {r: s for r in p.rounds() if (s := read_json(p.store, keys.round_key(r, keys.AGGREGATE), default=None))}


def late_label_accuracy(p, first_round: int) -> float:
    """Accuracy of the final labels of items first asked in ``first_round`` or later."""
    asked: dict[str, int] = {}
    for a in p.annotations():
        asked.setdefault(a.item_id, a.round)
    truth = dict(zip(p.pool.ids.astype(str), p.pool.y.astype(str), strict=True))
    labels = [lab for lab in p.human_labels(before_round=p.rounds()[-1] + 1) if asked[lab.item_id] >= first_round]
    return float(np.mean([truth[lab.item_id] == lab.label for lab in labels]))


def test_the_ring_is_found_blocked_at_the_next_dispatch_and_told_why(blocking):
    p, ring = blocking, ring_members(blocking)
    found = {r: s["rings"] for r, s in summaries(p).items() if s.get("rings")}
    assert found, "the ring was never found"
    first = min(found)
    for r, rings in found.items():  # the ring and nobody else, with the evidence that gave it away
        assert [set(x["workers"]) for x in rings] == [ring]
        assert rings[0]["n_agreed"] > rings[0]["expected"] + 0.3 * rings[0]["n_shared"]
        assert set(summaries(p)[r]["blocked_in_rings"]) == ring
    for r in p.rounds():
        intent = read_json(p.store, keys.round_key(r, keys.DISPATCH), default=None)
        if intent is None:
            continue
        blocked = [set(x["workers"]) for x in intent["blocked_rings"]]
        assert blocked == ([ring] if r > first else [])  # from the last aggregation before the round
    vendor = p.vendor
    assert vendor.blocked_workers() == ring
    for w in ring:
        reason = block_of(vendor.store, w)["reason"]
        assert "matched those of 2 other workers" in reason and "paid for all approved work" in reason
    assert not [a for a in p.annotations() if a.worker_id in ring and a.round > first]  # no work once blocked
    assert [a for a in p.annotations() if a.worker_id in ring and a.round <= first]
    accounts = {w["worker_id"]: w for w in worker_accounts(p)["workers"]}
    assert {w for w, row in accounts.items() if row["blocked"]} == ring
    assert all(accounts[w]["paid"] > 0 and accounts[w]["rejected"] == 0 for w in ring)


def test_without_block_rings_the_evidence_is_recorded_and_nobody_is_blocked(blocking, not_blocking):
    p, ring = not_blocking, ring_members(not_blocking)
    found = [s["rings"] for s in summaries(p).values() if s.get("rings")]
    assert found and all([set(x["workers"]) for x in rings] == [ring] for rings in found)
    assert not any("blocked_in_rings" in s for s in summaries(p).values())
    assert not any("blocked_rings" in d for d in intents(p))
    assert p.vendor.blocked_workers() == set()
    last = max(p.rounds())
    assert [a for a in p.annotations() if a.worker_id in ring and a.round == last - 1]  # still working
    # same seed, same crowd: items asked after the block get more honest answers
    first = min(r for r, s in summaries(blocking).items() if s.get("rings")) + 1
    assert late_label_accuracy(blocking, first) >= late_label_accuracy(p, first)


def test_block_rings_with_an_aggregator_that_has_no_ring_model(tmp_path):
    """One-coin Dawid-Skene does not look for rings itself: with block_rings the aggregation
    step looks with the default model, so the ring is still found and blocked."""
    cfg = small_config(**RING_CROWD, consensus={"method": "one_coin_dawid_skene", "redundancy": 3, "block_rings": True})
    p = run_engine(cfg, str(tmp_path / "p"))
    ring = ring_members(p)
    assert any(s.get("blocked_in_rings") for s in summaries(p).values())
    assert p.vendor.blocked_workers() == ring


def test_the_dispatch_step_blocks_before_it_submits_and_a_redo_changes_nothing(tmp_path):
    from crowdloop import engine
    from crowdloop.config import parse_config
    from crowdloop.engine import Project

    cfg = small_config(**RING_CROWD, consensus={"method": "auto", "redundancy": 3, "block_rings": True})
    p = Project.prepare(parse_config(cfg, source="test"), str(tmp_path / "p"))
    engine.run_step(engine.REFERENCE_STEP, p, 0)
    r = 0
    while True:  # whole rounds until an aggregation finds the ring
        assert engine.run_round(p, r) is None and r < 5, "the ring was never found"
        r += 1
        if p.record(r - 1, keys.AGGREGATE).get("rings"):
            break
    ring = ring_members(p)
    assert p.vendor.blocked_workers() == set()
    engine.run_round(p, r, until="dispatch")
    intent = read_json(p.store, keys.round_key(r, keys.DISPATCH))
    assert [set(x["workers"]) for x in intent["blocked_rings"]] == [ring]
    assert p.vendor.blocked_workers() == ring and not p.has(r, keys.COLLECTED)
    blocks = {k: read_json(p.vendor.store, k) for k in p.vendor.store.list("blocks/")}
    refs = read_json(p.store, keys.round_key(r, keys.REFS))
    assert engine.dispatch(p, r) == refs  # a redone step finds its record: no second block, no second task
    assert {k: read_json(p.vendor.store, k) for k in p.vendor.store.list("blocks/")} == blocks
    engine.run_round(p, r)
    assert not [a for a in p.annotations() if a.round == r and a.worker_id in ring]
