"""Gold questions: drawn once, mixed in unmarked, feed skill, block bad workers, justify rejections."""

from __future__ import annotations

import pytest

from crowdloop import keys
from crowdloop.storage import read_json
from crowdloop.workers import worker_accounts
from tests.conftest import small_config
from tests.crowd_helpers import intents, run_engine

# A crowd where a third answer at random: gold must find them.
GOLD = {"gold.share": 0.3, "gold.n_items": 40, "gold.min_answers": 4, "gold.min_accuracy": 0.4,
        "gold.reject_below": 0.5, "vendor.params": {"n_workers": 12, "accuracy": [0.85, 0.95], "spammer_fraction": 0.34},
        "stopping.max_rounds": 4}


@pytest.fixture(scope="module")
def gold_project(tmp_path_factory):
    return run_engine(small_config(**GOLD), str(tmp_path_factory.mktemp("gold") / "p"))


def test_gold_set_is_fixed_by_seed_and_never_selected_or_labeled(gold_project, tmp_path):
    p = gold_project
    gold = p.gold_set
    assert len(gold) == 40
    assert set(gold) <= set(p.pool.ids.tolist())
    selected: set[str] = set()
    for intent in intents(p):
        for t in intent["tasks"]:
            if t["item_id"] in gold:
                assert t["is_gold"]
            else:
                selected.add(t["item_id"])
    assert not selected & set(gold)
    labeled = {lab.item_id for lab in p.human_labels(before_round=p.rounds()[-1] + 1)}
    assert labeled and not labeled & set(gold)
    from crowdloop.config import parse_config
    from crowdloop.engine import Project

    other = Project.prepare(parse_config(small_config(**GOLD)), str(tmp_path / "same-seed"))
    assert other.gold_set == gold


def test_gold_is_a_share_of_each_batch_and_mixed_in(gold_project):
    for intent in intents(gold_project):
        tasks = intent["tasks"]
        n_gold = sum(t["is_gold"] for t in tasks)
        assert 0.15 <= n_gold / len(tasks) <= 0.45
        flags = [t["is_gold"] for t in tasks]
        assert flags != sorted(flags) and flags != sorted(flags, reverse=True)  # not all at one end
        for t in tasks:  # what the worker sees carries no gold marker
            assert "gold" not in str(t["payload"]).lower()


def test_spammers_are_blocked_and_get_no_more_tasks(gold_project):
    p = gold_project
    vendor = p.vendor
    spammers = {vendor.worker_ids[i] for i, s in enumerate(vendor.is_spammer) if s}
    blocked_when: dict[str, int] = {}
    for r in p.rounds():
        summary = p.store.exists(keys.round_key(r, keys.AGGREGATE)) and read_json(p.store, keys.round_key(r, keys.AGGREGATE))
        for w in (summary or {}).get("blocked_workers", []):
            blocked_when.setdefault(w, r)
    assert blocked_when, "no worker was blocked"
    assert len(set(blocked_when) & spammers) >= len(spammers) / 2
    gold = p.gold_set
    for w, r in blocked_when.items():  # the rule: enough gold answers, accuracy below the bar, by then
        mine = [a for a in p.annotations() if a.worker_id == w and a.item_id in gold and a.round <= r]
        assert len(mine) >= 4 and sum(a.label == gold[a.item_id] for a in mine) / len(mine) < 0.4
    for a in p.annotations():
        if a.worker_id in blocked_when:
            assert a.round <= blocked_when[a.worker_id], f"{a.worker_id} got work after being blocked"
    # the vendor was told before the next batch (the last round's blocks wait for a next batch)
    last = max(p.rounds())
    assert {w for w, r in blocked_when.items() if r < last - 1} <= vendor.blocked_workers() <= set(blocked_when)


def test_gold_answers_feed_worker_skill(gold_project):
    p = gold_project
    last = read_json(p.store, keys.round_key(p.rounds()[-2], keys.AGGREGATE))
    spammers = {p.vendor.worker_ids[i] for i, s in enumerate(p.vendor.is_spammer) if s}
    skill = last["worker_skill"]
    assert max(skill[w] for w in spammers if w in skill) < min(skill[w] for w in skill if w not in spammers)


def test_rejections_only_with_missed_gold_named_in_the_reason(gold_project):
    p = gold_project
    gold = p.gold_set
    anns = {a.assignment_id: a for a in p.annotations()}
    n = 0
    for r in p.rounds():
        pay = read_json(p.store, keys.round_key(r, keys.PAY), default=None) or {}
        for rej in pay.get("rejections", []):
            n += 1
            assert rej["missed_gold"]
            for item in rej["missed_gold"]:
                assert item in gold and item in rej["reason"]
            mine = [anns[a] for a in rej["assignment_ids"]]
            missed = {a.item_id for a in mine if a.item_id in gold and a.label != gold[a.item_id]}
            assert set(rej["missed_gold"]) == missed
            assert pay["n_rejected"] >= len(rej["assignment_ids"])
    assert n > 0, "the spammy crowd should have produced evidence-backed rejections"
    acks = [read_json(p.vendor.store, k) for k in p.vendor.store.list("acks/")]
    for ack in acks:
        if not ack["accept"]:
            assert ack["paid"] == 0.0 and "known answer" in ack["reason"]


def test_no_rejections_without_reject_policy(tmp_path):
    cfg = small_config(**{**GOLD, "gold.reject_below": None, "stopping.max_rounds": 2})
    p = run_engine(cfg, str(tmp_path / "p"))
    assert worker_accounts(p)["n_rejected"] == 0


def test_simulated_vendor_honours_excluded_and_blocked_workers(tmp_path):
    from crowdloop.config import parse_config
    from crowdloop.engine import Project
    from crowdloop.records import Task

    p = Project.prepare(parse_config(small_config()), str(tmp_path / "v"))
    vendor = p.vendor
    vendor.block_workers(vendor.worker_ids[:4], reason="test")
    item = p.pool.ids[0]
    tasks = [Task(item_id=str(item), round=0, batch_id="b1", replicas=3, reward=0.03,
                  exclude_workers=tuple(vendor.worker_ids[4:9]))]
    vendor.submit(tasks, batch_id="b1")
    got = vendor.poll([{"batch_id": "b1"}])
    assert len(got) == 3
    assert not {a.worker_id for a in got} & set(vendor.worker_ids[:9])
    with pytest.raises(Exception, match="exceeds the 3 workers left"):
        vendor.submit([Task(item_id=str(item), round=0, batch_id="b2", replicas=4, reward=0.03,
                            exclude_workers=tuple(vendor.worker_ids[4:9]))], batch_id="b2")


def test_low_agreement_workers_are_blocked_without_gold_and_still_paid(tmp_path):
    """No gold at all: spammers show up as workers the aggregated truth rarely agrees with."""
    cfg = small_config(**{"vendor.params": {"n_workers": 12, "accuracy": [0.85, 0.95], "spammer_fraction": 0.34},
                          "consensus": {"method": "one_coin_dawid_skene", "redundancy": 3,
                                        "block_below_agreement": 0.4, "block_min_judgments": 8},
                          "stopping.max_rounds": 4})
    p = run_engine(cfg, str(tmp_path / "p"))
    vendor = p.vendor
    spammers = {vendor.worker_ids[i] for i, s in enumerate(vendor.is_spammer) if s}
    blocked_when: dict[str, int] = {}
    for r in p.rounds():
        summary = read_json(p.store, keys.round_key(r, keys.AGGREGATE), default=None) or {}
        assert "blocked_workers" not in summary  # gold is off: nobody is blocked on gold evidence
        for w, agreement in summary.get("blocked_on_agreement", {}).items():
            assert agreement < 0.4
            blocked_when.setdefault(w, r)
    assert blocked_when and set(blocked_when) <= spammers
    assert len(set(blocked_when)) >= len(spammers) / 2
    for a in p.annotations():  # no work after the block reached the vendor (the next dispatch)
        if a.worker_id in blocked_when:
            assert a.round <= blocked_when[a.worker_id]
    reasons = {read_json(vendor.store, k)["reason"] for k in vendor.store.list("blocks/")}
    assert reasons and all("consensus" in r and "paid for all approved work" in r for r in reasons)
    accounts = {w["worker_id"]: w for w in worker_accounts(p)["workers"]}
    for w in blocked_when:
        assert accounts[w]["blocked"] and accounts[w]["paid"] > 0 and accounts[w]["rejected"] == 0
