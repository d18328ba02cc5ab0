"""The MTurk vendor against boto3's real ``mturk`` client and an in-memory MTurk (see mturk_fake)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import pytest

from crowdloop.errors import ConfigError, VendorError
from crowdloop.records import Task
from crowdloop.storage import PrefixedStore
from crowdloop.storage.local import LocalStore
from crowdloop.vendor import VendorContext
from crowdloop.vendors import mturk
from tests.conftest import die_after_writing
from tests.vendors.mturk_fake import FakeMTurk, SimulatedCrash, answer_xml

CLASSES = ("cat", "dog", "bird")


def make(tmp_path: Path, **params) -> mturk.MTurkVendor:
    params.setdefault("max_requests_per_second", 100)
    ctx = VendorContext(project="proj", name="mturk", seed=0, classes=CLASSES,
                        store=PrefixedStore(LocalStore(tmp_path), "vendor/mturk"),
                        item_payload=lambda item: {"kind": "text", "text": f"<script>alert('{item}')</script> & more"})
    return mturk.MTurkVendor(params, ctx)


def tasks(n: int, replicas: int = 3, batch: str = "proj-r0000", round_: int = 0) -> list[Task]:
    return [Task(item_id=f"item{k}", round=round_, batch_id=batch, replicas=replicas, reward=0.05) for k in range(n)]


def test_submit_builds_safe_hits_and_is_idempotent(tmp_path: Path, fake: FakeMTurk) -> None:
    vendor = make(tmp_path, qualifications={"locales": ["US", "CA"], "min_approval_rate": 98, "min_approved_hits": 500})
    refs = vendor.submit(tasks(3), batch_id="proj-r0000")
    assert len(refs) == 3 and len(fake.hits) == 3
    creates = [body for op, body in fake.requests if op == "CreateHIT"]
    tokens = [b["UniqueRequestToken"] for b in creates]
    assert len(set(tokens)) == 3 and all(len(t) <= 64 for t in tokens)
    first = creates[0]
    assert first["MaxAssignments"] == 3 and first["Reward"] == "0.05" and first["AutoApprovalDelayInSeconds"] == 86400
    assert first["RequesterAnnotation"].startswith("crowdloop|proj|r0|") and first["RequesterAnnotation"].endswith("|item0")
    assert "<script>alert" not in first["Question"]
    assert "&lt;script&gt;alert(&#x27;item0&#x27;)&lt;/script&gt; &amp; more" in first["Question"]
    quals = {q["QualificationTypeId"]: q for q in first["QualificationRequirements"]}
    assert quals[mturk.QUAL_LOCALE]["LocaleValues"] == [{"Country": "US"}, {"Country": "CA"}]
    assert quals[mturk.QUAL_APPROVAL_RATE]["IntegerValues"] == [98]
    assert quals[mturk.QUAL_NUMBER_APPROVED]["IntegerValues"] == [500]
    # a retry, in this process or a new one, creates nothing and returns the same refs
    assert vendor.submit(tasks(3), batch_id="proj-r0000") == refs
    assert make(tmp_path).submit(tasks(3), batch_id="proj-r0000") == refs
    assert fake.calls.count("CreateHIT") == 3
    # tokens depend only on (project, batch, items, replicas) and the project store
    assert mturk.request_token("proj", "proj-r0000", ["item0"], 3, vendor.store_id()) == tokens[0]


def test_a_store_made_again_under_the_same_name_never_adopts_the_old_stores_hits(tmp_path: Path,
                                                                                fake: FakeMTurk) -> None:
    """The same project name and seed pick the same items: the token was the same, so MTurk handed
    the deleted store's HITs (its workers' answers, its reward and question) to the new store."""
    old_refs = make(tmp_path / "old").submit(tasks(3), batch_id="proj-r0000")
    new_refs = make(tmp_path / "new").submit(tasks(3), batch_id="proj-r0000")
    assert fake.calls.count("CreateHIT") == 6 and len(fake.hits) == 6
    assert {r["hit_id"] for r in old_refs}.isdisjoint(r["hit_id"] for r in new_refs)
    annotations = [b["RequesterAnnotation"] for op, b in fake.requests if op == "CreateHIT"]
    assert len(set(annotations)) == 6
    assert make(tmp_path / "new").submit(tasks(3), batch_id="proj-r0000") == new_refs  # and a retry still adopts its own
    assert fake.calls.count("CreateHIT") == 6


@pytest.mark.parametrize("message_has_id", [True, False], ids=["id-in-message", "via-list-hits"])
def test_crash_between_intent_and_hit_id_resolves_to_the_same_hit(tmp_path: Path, fake: FakeMTurk,
                                                                   message_has_id: bool) -> None:
    fake.duplicate_message_has_id = message_has_id
    fake.crash_after["CreateHIT"] = 2  # dies after MTurk created the batch's second HIT
    with pytest.raises(SimulatedCrash):
        make(tmp_path).submit(tasks(3), batch_id="proj-r0000")
    store = make(tmp_path).store
    assert len([k for k in store.list("hits/") if k.endswith(".intent.json")]) == 2  # intents written before the calls
    assert len([k for k in store.list("hits/") if k.endswith(".hit.json")]) == 1  # the second HIT id never got recorded
    created = list(fake.hits)
    refs = make(tmp_path).submit(tasks(3), batch_id="proj-r0000")  # a new process resubmits
    assert [r["hit_id"] for r in refs][:2] == created and len(fake.hits) == 3  # no second HIT for any item
    # calls: 2 before the crash, then the duplicate token for item1 and a new HIT for item2
    assert fake.calls.count("CreateHIT") == 4
    assert ("ListHITs" in fake.calls) is not message_has_id


def test_reconciliation_after_the_token_expired(tmp_path: Path, fake: FakeMTurk) -> None:
    for k in range(120):  # other HITs of the account, so the lookup has to page
        fake.op_CreateHIT({"Title": "t", "Description": "d", "Question": "q", "MaxAssignments": 1, "Reward": "0.01",
                           "LifetimeInSeconds": 60, "AutoApprovalDelayInSeconds": 0, "AssignmentDurationInSeconds": 30,
                           "RequesterAnnotation": f"other|{k}"})
    fake.crash_after["CreateHIT"] = 1
    with pytest.raises(SimulatedCrash):
        make(tmp_path).submit(tasks(1), batch_id="proj-r0000")
    created = max(fake.hits)  # ids are increasing
    fake.tokens.clear()  # 24 h later MTurk has forgotten the token ...
    later = make(tmp_path)
    later.clock = lambda: time.time() + 25 * 3600
    refs = later.submit(tasks(1), batch_id="proj-r0000")
    assert refs[0]["hit_id"] == created  # ... so the HIT is found by its RequesterAnnotation
    assert fake.calls.count("CreateHIT") == 1 and fake.calls.count("ListHITs") == 2


def test_throttling_is_retried_by_botocore(tmp_path: Path, fake: FakeMTurk) -> None:
    fake.throttle["CreateHIT"] = 1
    fake.throttle["ListAssignmentsForHIT"] = 1
    vendor = make(tmp_path)
    refs = vendor.submit(tasks(1), batch_id="proj-r0000")
    fake.work(refs[0]["hit_id"], {"label-0": "dog"})
    assert [a.label for a in vendor.poll(refs)] == ["dog"]
    assert fake.calls.count("CreateHIT") == 2 and len(fake.hits) == 1
    assert fake.calls.count("ListAssignmentsForHIT") == 2


def test_rate_limiter_spaces_calls() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = mturk.RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.wait()
    assert now[0] == pytest.approx(1.0) and len(slept) == 4


def test_poll_pages_through_assignments_and_returns_only_new(tmp_path: Path, fake: FakeMTurk) -> None:
    vendor = make(tmp_path, allow_ten_or_more_assignments=True)
    refs = vendor.submit(tasks(1, replicas=231), batch_id="proj-r0000")
    hit = refs[0]["hit_id"]
    for n in range(230):
        fake.work(hit, {"label-0": CLASSES[n % 3]}, worker=f"AW{n:04d}")
    first = vendor.poll(refs)
    assert len(first) == 230 and len({a.assignment_id for a in first}) == 230
    assert fake.calls.count("ListAssignmentsForHIT") == 3  # 100 + 100 + 30
    assert [a.label for a in first[:3]] == ["cat", "dog", "bird"]
    a = first[0]
    assert a.vendor == "mturk" and a.item_id == "item0" and a.round == 0 and a.duration_s == pytest.approx(12.0)
    assert a.reward == 0.05 and a.worker_id == "AW0000"
    assert vendor.poll(refs) == []
    fake.work(hit, {"label-0": "cat"})
    assert len(vendor.poll(refs)) == 1
    calls = fake.calls.count("ListAssignmentsForHIT")
    assert vendor.poll(refs) == [] and fake.calls.count("ListAssignmentsForHIT") == calls  # all 231 in: not asked again
    vendor.acknowledge(first, accept=True)
    assert len(make(tmp_path, allow_ten_or_more_assignments=True).poll(refs)) == 1  # a new process skips acknowledged ones


def test_malformed_answers_are_skipped_and_reported(tmp_path: Path, fake: FakeMTurk, caplog) -> None:
    vendor = make(tmp_path)
    refs = vendor.submit(tasks(1), batch_id="proj-r0000")
    hit = refs[0]["hit_id"]
    broken = {
        "truncated": "<QuestionFormAnswers><Answer><QuestionIdentifier>label-0",
        "entity bomb": '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><QuestionFormAnswers>&a;</QuestionFormAnswers>',
        "wrong root": "<Other/>",
        "unknown label": answer_xml({"item-0": "item0", "label-0": "<b>horse</b>"}),
        "other item": answer_xml({"item-0": "item9", "label-0": "cat"}),
        "empty": "",
    }
    for n, xml in enumerate(broken.values()):
        fake.work(hit, xml, worker=f"ABAD{n}")
    good = fake.work(hit, {"label-0": "bird"}, worker="AGOOD")
    with caplog.at_level(logging.WARNING, logger="crowdloop.vendors.mturk"):
        got = vendor.poll(refs)
    assert [(a.assignment_id, a.label) for a in got] == [(good, "bird")]
    bad = vendor.bad_assignments()
    assert sorted(b["worker_id"] for b in bad) == [f"ABAD{n}" for n in range(len(broken))]
    assert sum("skipping assignment" in r.message for r in caplog.records) == len(broken)
    assert vendor.poll(refs) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crowdloop.vendors.mturk"):
        again = make(tmp_path).poll(refs)  # a new process: the good answer again (not acknowledged), bad ones stay out
    assert [a.assignment_id for a in again] == [good] and not caplog.records


def test_unusable_answers_are_decided_or_booked_never_paid_outside_the_books(tmp_path: Path, fake: FakeMTurk) -> None:
    """An assignment whose answer could not be used is never a label, and MTurk would approve (and
    pay) it on its own a day later: ``settle_late`` lists it with the money at stake, rejects it
    with the problem as feedback when told to, and books one MTurk approved by itself, so the
    ledger and ``late_paid`` hold every cent. A batch still being collected is left alone."""
    vendor = make(tmp_path)
    refs = vendor.submit(tasks(1), batch_id="proj-r0000")
    hit = refs[0]["hit_id"]
    good = fake.work(hit, {"label-0": "bird"}, worker="AGOOD")
    garbled = fake.work(hit, "<QuestionFormAnswers><Answer>", worker="ABAD0")
    unknown = fake.work(hit, {"label-0": "horse"}, worker="ABAD1")
    assert [a.assignment_id for a in vendor.poll(refs)] == [good]
    at_stake = round(0.05 + mturk.fee_for(0.05, 3), 2)
    due = dt.datetime.fromtimestamp(fake.now + fake.duration_s + 86400, dt.UTC).date().isoformat()
    pending = vendor.unmatched_pending()
    assert [(w["submission_id"], w["participant_id"], w["batch_id"], w["at_stake"], w["auto_approval_after"])
            for w in pending] == sorted([(garbled, "ABAD0", "proj-r0000", at_stake, due),
                                         (unknown, "ABAD1", "proj-r0000", at_stake, due)])
    calls = len(fake.calls)
    assert vendor.settle_late(exclude=["proj-r0000"], unmatched="reject") == [] and len(fake.calls) == calls
    with pytest.raises(VendorError, match="unmatched='pay'"):
        vendor.settle_late(unmatched="pay")
    assert vendor.settle_late() == [] and len(vendor.unmatched_pending()) == 2  # keep: nothing decided unasked

    fake._assignment(unknown)["AssignmentStatus"] = "Approved"  # a day later MTurk approved it on its own
    made = {r["assignment_id"]: r for r in vendor.settle_late(unmatched="reject")}
    assert (made[garbled]["status"], made[garbled]["decided_by"], made[garbled]["reward"]) == ("Rejected", "loop", 0.0)
    assert (made[unknown]["status"], made[unknown]["decided_by"], made[unknown]["reward"]) == ("Approved", "mturk", 0.05)
    rejected = fake._assignment(garbled)
    assert rejected["AssignmentStatus"] == "Rejected" and "malformed answer XML" in rejected["RequesterFeedback"]
    assert len(rejected["RequesterFeedback"]) <= 1024
    assert vendor.late_paid() == {"proj-r0000": at_stake}
    books = vendor.ledger()
    assert (books["approved"], books["rejected"], books["total"]) == (1, 1, at_stake)  # the good one is not paid yet
    assert make(tmp_path).settle_late(unmatched="approve") == [] and vendor.unmatched_pending() == []  # booked once
    assert [a.assignment_id for a in make(tmp_path).poll(refs)] == [good]  # never a label


def test_an_approval_of_an_unusable_answer_is_booked_once_after_a_crash(tmp_path: Path, fake: FakeMTurk,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """MTurk approved the assignment, then the process died before the vendor wrote it down: the
    rerun asks MTurk, finds it approved and books it (money in ``late_paid`` and the ledger)
    without approving it again."""
    vendor = make(tmp_path)
    refs = vendor.submit(tasks(1, replicas=1), batch_id="proj-r0000")
    bad = fake.work(refs[0]["hit_id"], "<Other/>", worker="ABAD")
    assert vendor.poll(refs) == []
    fake.crash_after["ApproveAssignment"] = 1
    with pytest.raises(SimulatedCrash):
        vendor.settle_late(unmatched="approve")
    assert vendor.late_paid() == {} and len(vendor.unmatched_pending()) == 1  # nothing written down yet
    (booked,) = make(tmp_path).settle_late(unmatched="approve")
    assert (booked["assignment_id"], booked["status"], booked["reward"]) == (bad, "Approved", 0.05)
    assert fake.calls.count("ApproveAssignment") == 1
    paid = round(0.05 + mturk.fee_for(0.05, 1), 2)
    assert make(tmp_path).late_paid() == {"proj-r0000": paid} and make(tmp_path).ledger()["total"] == paid

    # the process dies right after the first of its two records (money, decision): the rerun completes the books
    refs = vendor.submit(tasks(1, replicas=1, batch="proj-r0001", round_=1), batch_id="proj-r0001")
    fake.work(refs[0]["hit_id"], "<Other/>", worker="ABAD2")
    assert vendor.poll(refs) == []
    undo = die_after_writing(monkeypatch, mturk, ("acks/", "late/"), SimulatedCrash)
    with pytest.raises(SimulatedCrash):
        make(tmp_path).settle_late(unmatched="approve")
    undo()
    assert len(make(tmp_path).settle_late(unmatched="approve")) == 1
    assert fake.calls.count("ApproveAssignment") == 2  # once per assignment
    books = make(tmp_path)
    assert books.late_paid() == {"proj-r0000": paid, "proj-r0001": paid} and books.unmatched_pending() == []
    assert books.ledger()["approved"] == 2 and books.ledger()["total"] == round(2 * paid, 2)


def test_acknowledge_is_idempotent_and_rejection_needs_a_reason(tmp_path: Path, fake: FakeMTurk) -> None:
    vendor = make(tmp_path)
    refs = vendor.submit(tasks(2, replicas=2), batch_id="proj-r0000")
    for ref in refs:
        for w in range(2):
            fake.work(ref["hit_id"], {"label-0": "cat"}, worker=f"AW{w}")
    anns = vendor.poll(refs)
    with pytest.raises(VendorError, match="needs a reason"):
        vendor.acknowledge(anns[:1], accept=False)
    vendor.acknowledge(anns[:1], accept=False, reason="Gold item 7 answered 'cat'; the correct class is 'dog'.")
    fake.assignments[refs[1]["hit_id"]][0]["AssignmentStatus"] = "Approved"  # auto-approved meanwhile
    vendor.acknowledge(anns, accept=True)
    vendor.acknowledge(anns, accept=True)
    make(tmp_path).acknowledge(anns, accept=True)
    statuses = [a["AssignmentStatus"] for rows in fake.assignments.values() for a in rows]
    assert statuses == ["Rejected", "Approved", "Approved", "Approved"]
    rejected = fake.assignments[refs[0]["hit_id"]][0]
    assert rejected["RequesterFeedback"].startswith("Gold item 7")
    assert fake.calls.count("RejectAssignment") == 1 and fake.calls.count("ApproveAssignment") == 3
    assert vendor.ledger()["approved"] == 3 and vendor.ledger()["rejected"] == 1
    # a rejection MTurk refuses because the work was approved meanwhile is an error, and no decision is booked
    later = vendor.submit(tasks(1, replicas=1, batch="proj-r0001", round_=1), batch_id="proj-r0001")
    fake.work(later[0]["hit_id"], {"label-0": "cat"}, worker="AW9")
    (late,) = vendor.poll(later)
    fake.assignments[later[0]["hit_id"]][0]["AssignmentStatus"] = "Approved"
    with pytest.raises(VendorError, match=r"cannot mark assignment \S+ rejected: it is Approved already"):
        vendor.acknowledge([late], accept=False, reason="Gold item 8 answered 'cat'; the correct class is 'dog'.")
    assert vendor.ledger()["approved"] == 3 and vendor.ledger()["rejected"] == 1


def test_bonus_is_paid_once_per_token(tmp_path: Path, fake: FakeMTurk) -> None:
    vendor = make(tmp_path)
    refs = vendor.submit(tasks(2, replicas=1), batch_id="proj-r0000")
    for ref in refs:
        fake.work(ref["hit_id"], {"label-0": "dog"})
    anns = vendor.poll(refs)
    vendor.acknowledge(anns, accept=True)
    vendor.bonus(anns, amount=0.02, reason="Top-up to the target wage", token="proj-r0000-topup")
    make(tmp_path).bonus(anns, amount=0.02, reason="Top-up to the target wage", token="proj-r0000-topup")
    assert [b["BonusAmount"] for b in fake.bonuses] == ["0.02", "0.02"]
    assert all(len(b["UniqueRequestToken"]) <= 64 for b in fake.bonuses)
    assert vendor.ledger()["bonuses"] == pytest.approx(0.04) and vendor.ledger()["bonus_fees"] == pytest.approx(0.02)


def test_items_per_hit_groups_items_into_one_assignment(tmp_path: Path, fake: FakeMTurk) -> None:
    vendor = make(tmp_path, items_per_hit=2)
    refs = vendor.submit(tasks(3, replicas=1), batch_id="proj-r0000")
    assert [r["item_ids"] for r in refs] == [["item0", "item1"], ["item2"]]
    assert [b["Reward"] for op, b in fake.requests if op == "CreateHIT"] == ["0.10", "0.05"]
    aid = fake.work(refs[0]["hit_id"], {"label-0": "cat", "label-1": "bird"})
    anns = vendor.poll(refs)
    assert [(a.item_id, a.label, a.assignment_id) for a in anns] == [("item0", "cat", f"{aid}:0"), ("item1", "bird", f"{aid}:1")]
    assert all(a.duration_s == pytest.approx(6.0) for a in anns)  # the assignment's time split over its items
    vendor.acknowledge(anns, accept=True)
    vendor.bonus(anns, amount=0.01, reason="top-up", token="t")
    assert fake.calls.count("ApproveAssignment") == 1 and [b["BonusAmount"] for b in fake.bonuses] == ["0.02"]


def test_items_per_hit_bundles_items_of_equal_redundancy(tmp_path: Path, fake: FakeMTurk) -> None:
    """An audit item (5 judgments) among 3-judgment items: before, every chunk holding one was split
    into one-item HITs (each assignment paying MTurk's $0.01 minimum fee instead of 20%)."""
    batch = [Task(item_id=f"item{k}", round=0, batch_id="proj-r0000", replicas=5 if k in (2, 5, 8) else 3, reward=0.03)
             for k in range(10)]
    vendor = make(tmp_path, items_per_hit=5)
    refs = vendor.submit(batch, batch_id="proj-r0000")
    assert [r["item_ids"] for r in refs] == [["item0", "item1", "item3", "item4", "item6"], ["item7", "item9"],
                                             ["item2", "item5", "item8"]]
    assert [b["MaxAssignments"] for op, b in fake.requests if op == "CreateHIT"] == [3, 3, 5]
    assert make(tmp_path, items_per_hit=5).submit(batch, batch_id="proj-r0000") == refs  # a rerun posts nothing new
    assert fake.calls.count("CreateHIT") == 3

    # a batch an earlier version posted in batch order (mixed chunks split) is resumed as it was posted
    legacy = [t.model_copy(update={"batch_id": "proj-r0001", "item_id": f"old{k}"}) for k, t in enumerate(batch)]
    old_refs = [vendor._submit_group(group, "proj-r0001", earlier=None) for group in mturk._chunks_in_order(legacy, 5)]
    assert len(old_refs) == 10  # both chunks of five held a 5-judgment item: ten one-item HITs
    assert make(tmp_path, items_per_hit=5).submit(legacy, batch_id="proj-r0001") == old_refs
    assert fake.calls.count("CreateHIT") == 3 + len(old_refs)

    # one item a HIT: posted in the batch's order, the audit items where the engine mixed them in
    single = [t.model_copy(update={"batch_id": "proj-r0002", "item_id": f"one{k}"}) for k, t in enumerate(batch)]
    refs = make(tmp_path, items_per_hit=1).submit(single, batch_id="proj-r0002")
    assert [r["item_ids"] for r in refs] == [[t.item_id] for t in single]


def test_fees_follow_mturk_pricing() -> None:
    assert mturk.MTurkVendor.fee_for(0.50, 3) == pytest.approx(0.10)
    assert mturk.MTurkVendor.fee_for(0.50, 10) == pytest.approx(0.20)
    assert mturk.fee_for(0.01, 1) == pytest.approx(0.01)  # minimum fee per assignment
    assert mturk.fee_for(0.07, 9) == pytest.approx(0.02)  # 0.014 rounds up to the cent
    with pytest.raises(ValueError, match="n_assignments_per_hit=0"):
        mturk.fee_for(0.1, 0)


def test_config_errors_are_one_line(tmp_path: Path, fake: FakeMTurk) -> None:
    with pytest.raises(ConfigError, match=r"vendor\.params\.qualifications: .*both or neither"):
        make(tmp_path, qualifications={"min_approval_rate": 95})
    with pytest.raises(ConfigError, match=r"vendor\.params\.bogus: unknown field"):
        make(tmp_path, bogus=1)
    with pytest.raises(ConfigError, match=r"consensus\.redundancy=10"):
        make(tmp_path).submit(tasks(1, replicas=10), batch_id="b")
    assert fake.calls == []
    make(tmp_path, allow_ten_or_more_assignments=True).submit(tasks(1, replicas=10), batch_id="b")
    assert len(fake.hits) == 1
    assert make(tmp_path).params.sandbox is True


def test_a_batch_the_balance_cannot_pay_is_refused_before_any_hit(tmp_path: Path, fake: FakeMTurk) -> None:
    """MTurk checks funds HIT by HIT: a batch beyond the balance stopped half-way, some HITs live.
    Three one-item HITs x 3 assignments at $0.30 cost at most 9 x ($0.30 + $0.06 fee) = $3.24."""
    batch = [Task(item_id=f"i{k}", round=0, batch_id="b", replicas=3, reward=0.30) for k in range(3)]
    fake.balance = "3.23"
    with pytest.raises(VendorError, match=r"^vendor 'mturk': batch b may cost up to \$3\.24 \(every assignment approved, "
                                          r"with MTurk's fees\) and the account's available balance is \$3\.23; add funds"):
        make(tmp_path).submit(batch, batch_id="b")
    assert fake.hits == {} and "CreateHIT" not in fake.calls
    fake.balance = "3.24"
    refs = make(tmp_path).submit(batch, batch_id="b")
    assert len(refs) == 3 and len(fake.hits) == 3
    fake.balance = "0.00"  # a rerun finds every HIT made: nothing to pay for, nothing asked
    before = fake.calls.count("GetAccountBalance")
    assert make(tmp_path).submit(batch, batch_id="b") == refs and fake.calls.count("GetAccountBalance") == before


def test_the_funds_check_reserves_the_top_up_bonuses_the_pay_policy_allows(tmp_path: Path, fake: FakeMTurk) -> None:
    """Slow tasks earn a top-up bonus after the batch (at most ``pay.max_top_up`` of the reward); a
    balance that covered only the rewards left those bonuses unpaid. At max_top_up 1.0 each of the
    9 assignments may cost $0.30 + $0.06 fee + a $0.30 bonus + its $0.06 fee: $6.48."""
    batch = [Task(item_id=f"i{k}", round=0, batch_id="b", replicas=3, reward=0.30) for k in range(3)]
    vendor = make(tmp_path)
    reserving = mturk.MTurkVendor(dict(vendor.params.model_dump(exclude_unset=True)),
                                  VendorContext(**{**vendor.context.__dict__, "max_top_up": 1.0}))
    fake.balance = "6.47"
    with pytest.raises(VendorError, match=r"may cost up to \$6\.48 \(every assignment approved, with MTurk's fees, and the "
                                          r"largest top-up bonuses pay.max_top_up allows\) and the account's available"):
        reserving.submit(batch, batch_id="b")
    assert fake.hits == {}
    fake.balance = "6.48"
    assert len(reserving.submit(batch, batch_id="b")) == 3


def test_the_funds_check_reserves_a_paid_qualification_test_for_every_worker(tmp_path: Path, fake: FakeMTurk) -> None:
    """A paid qualification test is a $0.50 bonus (+ $0.10 fee) on a worker's first approved
    assignment; any of the 9 assignments may be a new worker's, so the batch may cost
    9 x ($0.30 + $0.06 + $0.50 + $0.10) = $8.64. Left out, a balance of the rewards alone made the
    HITs and then could not pay the workers for the test they took."""
    batch = [Task(item_id=f"i{k}", round=0, batch_id="b", replicas=3, reward=0.30) for k in range(3)]
    vendor = make(tmp_path, qualifications={"test": {"qualification_type_id": "3QUALTEST0000000000", "min_score": 80,
                                                     "reward": 0.5}})
    fake.balance = "8.63"
    with pytest.raises(VendorError, match=r"may cost up to \$8\.64 \(every assignment approved, with MTurk's fees, and a "
                                          r"qualification test paid to each worker\) and the account's available balance "
                                          r"is \$8\.63"):
        vendor.submit(batch, batch_id="b")
    assert fake.hits == {} and "CreateHIT" not in fake.calls
    fake.balance = "8.64"
    assert len(vendor.submit(batch, batch_id="b")) == 3


def test_the_project_hands_the_top_up_policy_to_its_vendor(tmp_path: Path) -> None:
    from crowdloop.config import parse_config
    from crowdloop.engine import Project
    from tests.conftest import small_config

    on = Project.prepare(parse_config(small_config(**{"pay.max_top_up": 0.5})), str(tmp_path / "on"))
    off = Project.prepare(parse_config(small_config(**{"pay.top_up_bonus": False})), str(tmp_path / "off"))
    assert (on.vendor.context.max_top_up, off.vendor.context.max_top_up) == (0.5, 0.0)


def test_payload_rendering() -> None:
    table = mturk.render_payload({"kind": "tabular", "columns": ["<b>x</b>", "y"], "values": [1.0, 0.333333333]})
    assert "&lt;b&gt;x&lt;/b&gt;" in table and "0.333333" in table
    img = mturk.render_payload({"kind": "image_url", "url": 'https://b.s3.amazonaws.com/i.png?X-Sig="a"&b=1'})
    assert 'src="https://b.s3.amazonaws.com/i.png?X-Sig=&quot;a&quot;&amp;b=1"' in img
    with pytest.raises(VendorError, match="expected an http"):
        mturk.render_payload({"kind": "image_url", "url": "javascript:alert(1)"})
    with pytest.raises(VendorError, match="kind 'audio'"):
        mturk.render_payload({"kind": "audio"})


def test_paid_qualification_test_is_paid_once_per_worker(tmp_path: Path, fake: FakeMTurk) -> None:
    vendor = make(tmp_path, qualifications={"test": {"qualification_type_id": "3QUALTEST0000000000", "min_score": 80,
                                                     "reward": 0.5}})
    refs = vendor.submit(tasks(2, replicas=2), batch_id="proj-r0000")
    created = next(body for op, body in fake.requests if op == "CreateHIT")
    req = [q for q in created["QualificationRequirements"] if q["QualificationTypeId"] == "3QUALTEST0000000000"]
    assert req == [{"QualificationTypeId": "3QUALTEST0000000000", "Comparator": "GreaterThanOrEqualTo",
                    "IntegerValues": [80], "ActionsGuarded": "Accept"}]
    for ref in refs:
        for w in ("AW1", "AW2"):
            fake.work(ref["hit_id"], {"label-0": "cat"}, worker=w)
    vendor.acknowledge(vendor.poll(refs), accept=True)
    assert sorted((b["WorkerId"], b["BonusAmount"]) for b in fake.bonuses) == [("AW1", "0.50"), ("AW2", "0.50")]


def test_example_config_prepares_without_network(tmp_path: Path, fake: FakeMTurk) -> None:
    from crowdloop.config import load_config
    from crowdloop.engine import Project

    p = Project.prepare(load_config(Path(__file__).parents[2] / "configs" / "digits-mturk-sandbox.yaml"), str(tmp_path / "p"))
    assert isinstance(p.vendor, mturk.MTurkVendor) and p.vendor.params.sandbox and fake.calls == []


def test_cli_names_the_extra_when_boto3_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from typer.testing import CliRunner

    from crowdloop import registry
    from crowdloop.cli import app

    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    monkeypatch.delitem(sys.modules, "crowdloop.vendors.mturk")
    monkeypatch.setattr(registry.vendors, "_cache", {})
    out = CliRunner().invoke(app, ["mturk", "balance"])
    assert out.exit_code == 2 and "pip install 'crowdloop[mturk]'" in out.output


def test_pixel_images_render_inline_and_local_files_are_refused() -> None:
    grid = mturk.render_payload({"kind": "image", "pixels": [[0, 16], [8, 0]]})
    assert grid.count("<td") == 4 and "rgb(0,0,0)" in grid and "rgb(255,255,255)" in grid
    with pytest.raises(VendorError, match="local file that workers cannot open"):
        mturk.render_payload({"kind": "image", "path": "/data/img/1.png"})


# -- issue 17: blocking, asking somebody else, re-posting returned work -----------------------------
def crowd_fake(fake: FakeMTurk, workers: list[str]) -> None:
    fake.crowd = workers
    fake.answer = lambda item, worker: CLASSES[0]


def test_blocking_is_create_worker_block_once_per_worker_and_survives_a_crash(tmp_path: Path, fake: FakeMTurk) -> None:
    crowd_fake(fake, ["AW1", "AW2", "AW3", "ASPAM"])
    vendor = make(tmp_path)
    vendor.submit(tasks(2, replicas=2), batch_id="proj-r0000")
    reason = "You answered 1 of 6 known-answer questions correctly (17%)."
    fake.crash_after["CreateWorkerBlock"] = 1  # MTurk blocked the worker, the process died before recording it
    with pytest.raises(SimulatedCrash):
        vendor.block_workers(["ASPAM"], reason=reason)
    restarted = make(tmp_path)
    restarted.block_workers(["ASPAM"], reason=reason)  # the rerun repeats the call: MTurk's block is idempotent
    restarted.block_workers(["ASPAM"], reason=reason)  # recorded now: not called again
    assert fake.calls.count("CreateWorkerBlock") == 2 and fake.blocked == {"ASPAM": reason}
    refs = restarted.submit(tasks(8, replicas=3, batch="proj-r0001", round_=1), batch_id="proj-r0001")
    workers = {a.worker_id for a in restarted.poll(refs)}
    assert workers == {"AW1", "AW2", "AW3"}  # the blocked worker got none of the new HITs


def test_a_reask_adds_assignments_to_the_items_own_hit_and_goes_to_somebody_else(tmp_path: Path, fake: FakeMTurk) -> None:
    crowd_fake(fake, ["AW1", "AW2", "AW3", "AW4"])
    vendor = make(tmp_path)
    refs0 = vendor.submit(tasks(1, replicas=2), batch_id="proj-r0000")
    first = vendor.poll(refs0)
    vendor.acknowledge(first, accept=True)  # round 0 is paid before round 1 is sent
    answered = tuple(sorted(a.worker_id for a in first))
    reask = Task(item_id="item0", round=1, batch_id="proj-r0001", replicas=1, reward=0.07, exclude_workers=answered)
    fake.crash_after["CreateAdditionalAssignmentsForHIT"] = 1  # extended, then the process died
    with pytest.raises(SimulatedCrash):
        vendor.submit([reask], batch_id="proj-r0001")
    restarted = make(tmp_path)
    refs1 = restarted.submit([reask], batch_id="proj-r0001")
    assert restarted.submit([reask], batch_id="proj-r0001") == refs1
    assert len(fake.hits) == 1 and fake.calls.count("CreateAdditionalAssignmentsForHIT") == 1
    (hit,) = fake.hits.values()
    assert hit["MaxAssignments"] == 3 and refs1[0]["hit_id"] == refs0[0]["hit_id"]
    (again,) = restarted.poll(refs1)
    assert again.worker_id not in answered and again.batch_id == "proj-r0001" and again.round == 1
    assert again.reward == 0.05  # the HIT's reward: MTurk pays extra assignments at the HIT's own reward
    assert restarted.poll(refs1) == [] and make(tmp_path).poll(refs1) == [again]  # returned once per process


def test_returned_or_abandoned_assignments_are_reposted_within_the_deadline(tmp_path: Path, fake: FakeMTurk) -> None:
    crowd_fake(fake, ["AW1", "AW2", "AW3", "AW4"])
    fake.abandoners = {"AW2": 1}  # accepts the HIT, keeps it until it expires, abandons it
    vendor = make(tmp_path, repost_check_s=0.01)
    refs = vendor.submit(tasks(1, replicas=3), batch_id="proj-r0000")
    got = vendor.poll(refs)  # AW1 answered; AW2 held the HIT until it expired two short, and abandoned it
    assert [a.worker_id for a in got] == ["AW1"] and "UpdateExpirationForHIT" in fake.calls
    time.sleep(0.02)
    got += vendor.poll(refs)
    assert sorted(a.worker_id for a in got) == ["AW1", "AW3", "AW4"]
    (hit,) = fake.hits.values()
    assert hit["MaxAssignments"] == 3 and len(fake.assignments[hit["HITId"]]) == 3  # the same slots: nothing paid twice
    assert len(vendor.reposts()) == 1
    # once a worker who accepts could no longer submit before the batch's collect deadline, a HIT is left expired
    late = mturk.MTurkVendor({"max_requests_per_second": 100, "repost_check_s": 0.01, "assignment_duration_s": 100},
                             VendorContext(**{**vendor.context.__dict__, "collect_timeout_s": 200.0}))
    fake.abandoners = {"AW1": 1}
    refs = late.submit(tasks(1, replicas=2, batch="proj-r0001", round_=1), batch_id="proj-r0001")
    late.clock = lambda: time.time() + 50.0  # 150 s before the deadline: 50 s of listing would be left, under 60
    late.poll(refs)
    assert len(late.reposts()) == 1  # only the first batch's re-post


def test_a_hit_is_listed_only_while_its_work_can_still_be_collected(tmp_path: Path, fake: FakeMTurk) -> None:
    """Work submitted after the loop's last poll would never be collected, and MTurk would approve
    it on its own (``auto_approval_delay_s``): paid for, outside the budget, labels lost. So a HIT
    stops being listed ``assignment_duration_s`` before the batch's collect deadline."""
    def vendor_with(timeout_s: float | None, **params) -> mturk.MTurkVendor:
        base = make(tmp_path, **params)
        return mturk.MTurkVendor({"max_requests_per_second": 100, **params},
                                 VendorContext(**{**base.context.__dict__, "collect_timeout_s": timeout_s}))

    vendor_with(3600.0, assignment_duration_s=600).submit(tasks(1), batch_id="proj-r0000")
    vendor_with(30 * 86400.0, assignment_duration_s=600).submit(tasks(1, batch="proj-r0001"), batch_id="proj-r0001")
    vendor_with(None).submit(tasks(1, batch="proj-r0002"), batch_id="proj-r0002")
    lifetimes = [body["LifetimeInSeconds"] for op, body in fake.requests if op == "CreateHIT"]
    assert lifetimes == [3600 - 600, 3 * 86400, 3 * 86400]  # cut by the deadline; lifetime_s when shorter or unknown
    # a re-ask that lists an earlier, expired HIT again is cut the same way
    crowd_fake(fake, ["AW1", "AW2", "AW3", "AW4"])
    vendor = vendor_with(3600.0, assignment_duration_s=600)
    solo = Task(item_id="solo", round=3, batch_id="proj-r0003", replicas=2, reward=0.05)
    refs0 = vendor.submit([solo], batch_id="proj-r0003")
    vendor.poll(refs0)
    hit_id = refs0[0]["hit_id"]
    fake.hits[hit_id]["HITStatus"], fake.hits[hit_id]["Expiration"] = "Reviewable", fake.now
    before = time.time()
    reask = Task(item_id="solo", round=4, batch_id="proj-r0004", replicas=1, reward=0.05,
                 exclude_workers=("AW1", "AW2"))
    vendor.submit([reask], batch_id="proj-r0004")
    (relist,) = [body for op, body in fake.requests if op == "UpdateExpirationForHIT"]
    assert before + 3000 - 1 <= relist["ExpireAt"] <= time.time() + 3000
    # a config whose deadline leaves no listing time is refused before anything is sent (a new HIT or
    # a re-ask added to an earlier one); its books stay readable (status, settle of an older project)
    short = vendor_with(600.0, assignment_duration_s=600)
    sent = len(fake.requests)
    for task, batch in ((tasks(1, batch="proj-r0005")[0], "proj-r0005"),
                        (Task(item_id="solo", round=5, batch_id="proj-r0005", replicas=1, reward=0.05), "proj-r0005")):
        with pytest.raises(ConfigError, match=r"collect.timeout_s=600: expected at least .*assignment_duration_s \+ 60 = 660 s"):
            short.submit([task], batch_id=batch)
    assert len(fake.requests) == sent
    assert short.late_paid() == {} and short.unmatched_pending() == []


def test_mturk_vendor_honours_the_contract_with_its_capabilities(tmp_path: Path, fake: FakeMTurk) -> None:
    from crowdloop.testing import check_vendor

    crowd = ["AW1", "AW2", "AW3", "AW4", "AW5"]
    crowd_fake(fake, crowd)
    vendor = make(tmp_path)
    report = check_vendor(mturk.MTurkVendor, params={"max_requests_per_second": 100}, context=vendor.context,
                          n_items=4, replicas=2, workers=crowd)
    assert not report.skipped and report.n_annotations == 8 + 4 + 8
    assert fake.blocked == {"AW1": "contract check: 0 of 4 known-answer questions right"}
    assert len(fake.hits) == 4 + 4  # re-asks were added to the first batch's HITs, not new HITs
    ledger = vendor.ledger()
    approved = [a for rows in fake.assignments.values() for a in rows if a["AssignmentStatus"] == "Approved"]
    assert ledger["approved"] == len(approved) and ledger["paid"] == round(0.05 * len(approved), 2)
    assert ledger["fees"] == round(0.01 * len(approved) + 0.01 * len(fake.bonuses), 2)  # 20% of $0.05: the $0.01 minimum


# pure checks, no browser (moved out of test_xss_browser.py, whose module mark is for Chromium)
@pytest.mark.parametrize("url", ["javascript:window.__pwned=1", "data:text/html,<script>x</script>", "JaVaScRiPt:x",
                                 " https://x", "//evil.example/a.png", "vbscript:x", "\x00javascript:x"])
def test_mturk_refuses_image_urls_that_are_not_http(url):
    with pytest.raises(mturk.VendorError, match="expected an http"):
        mturk.render_payload({"kind": "image_url", "url": url})
