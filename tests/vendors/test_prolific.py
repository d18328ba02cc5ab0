"""The ``prolific`` vendor against the fake Prolific API (``tests/vendors/prolific_fake.py``).

The fake is a real HTTP server on 127.0.0.1; participants are played through the desk (the
local app's logic) here, and in real Chromium in ``test_prolific_browser.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.errors import ConfigError, CrowdloopError, VendorError
from crowdloop.pay import fee_function
from crowdloop.storage import read_json
from crowdloop.storage.local import LocalStore
from crowdloop.testing import check_vendor, make_context
from crowdloop.vendors import prolific
from crowdloop.vendors.prolific import MIN_HOURLY_RATE, ProlificVendor, check_wage, fee_for, place_terms
from tests.conftest import die_after_writing, small_config
from tests.vendors.prolific_fake import FakeProlific, WorkClock, participant_ids, take_part

TOKEN = "test-token"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProlific]:
    monkeypatch.setenv(prolific.TOKEN_ENV, TOKEN)
    with FakeProlific(token=TOKEN, hold_s=4.0) as fake:
        yield fake


def params(api: FakeProlific, **extra: Any) -> dict[str, Any]:
    return {"app_url": "https://label.example.org", "api_url": api.url, "timeout_s": 1.5, "backoff_s": 0.01, **extra}


def vendor_in(tmp_path: Path, api: FakeProlific, *, wage: float = 12.0, **extra: Any) -> ProlificVendor:
    ctx = dataclasses.replace(make_context(LocalStore(tmp_path / "store"), name="prolific"), hourly_wage=wage)
    return ProlificVendor(params(api, **extra), ctx)


# -- money rules -------------------------------------------------------------------------------------
def test_a_place_pays_the_wage_for_whole_minutes_and_never_less_than_the_task() -> None:
    assert place_terms(0.04, 12.0) == (1, 20)  # a 12 s task: Prolific's minute, at $12/h
    assert place_terms(0.30, 12.0) == (2, 40)  # 90 s: two minutes
    assert place_terms(0.20, 12.0) == (1, 20)
    for reward in (0.01, 0.05, 0.33, 1.07):
        minutes, cents = place_terms(reward, 9.5)
        assert cents >= reward * 100 and cents / minutes * 60 >= 950  # the rate Prolific checks is the wage


def test_the_fee_is_a_third_of_each_payment_to_the_cent_and_the_project_uses_it() -> None:
    assert [fee_for(x) for x in (0.20, 0.04, 0.01, 1.00, 0.0)] == [0.07, 0.01, 0.0, 0.33, 0.0]
    cfg = parse_config(small_config())
    rule, source = fee_function(cfg.pay, "prolific", ProlificVendor)
    assert rule is ProlificVendor.fee_for and source == "vendor 'prolific'"


def test_a_wage_below_prolifics_minimum_is_refused_in_one_line_before_anything_is_sent(
        tmp_path: Path, api: FakeProlific) -> None:
    with pytest.raises(ConfigError) as err:
        check_wage(7.5, "USD")
    assert str(err.value) == ("pay.hourly_wage=7.50 USD/h is below Prolific's enforced minimum of 8.00 USD/h "
                              "(docs/prolific.md); raise it to at least 8.00")
    check_wage(MIN_HOURLY_RATE["GBP"], "GBP")
    with pytest.raises(ConfigError, match=r"pay\.currency=.EUR.: Prolific pays rewards in GBP or USD"):
        check_wage(20, "EUR")
    cfg = parse_config(small_config(**{"vendor": {"name": "prolific", "params": params(api)}, "pay.hourly_wage": 5.0,
                                       "pay.currency": "GBP"}))
    with pytest.raises(ConfigError) as err:
        engine.Project.prepare(cfg, str(tmp_path / "p"))
    message = str(err.value)
    assert "\n" not in message and "5.00 GBP/h" in message and "6.00 GBP/h" in message
    assert api.calls == [] and not (tmp_path / "p" / "rounds").exists()


# -- the fake is strict --------------------------------------------------------------------------------
def test_the_fake_refuses_bad_bodies_and_bad_tokens(api: FakeProlific) -> None:
    good = {"name": "n", "description": "d", "external_study_url": "https://x.org/?" + prolific.ENTRY_QUERY,
            "prolific_id_option": "url_parameters", "completion_codes": [{"code": "C1", "code_type": "COMPLETED"}],
            "total_available_places": 2, "estimated_completion_time": 1, "reward": 20}
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Token {TOKEN}"}) as http:
        assert http.post("/api/v1/studies/", json={**good, "colour": "red"}).json()["unknown"] == ["colour"]
        missing = {k: v for k, v in good.items() if k != "reward"}
        assert http.post("/api/v1/studies/", json=missing).json()["missing"] == ["reward"]
        low = http.post("/api/v1/studies/", json={**good, "reward": 13})  # $7.80/h
        assert low.status_code == 400 and "below the minimum 8.00" in low.text
        assert http.post("/api/v1/studies/", json=good).status_code == 201
    assert httpx.get(f"{api.url}/api/v1/studies/", headers={"Authorization": "Token wrong"}).status_code == 401


# -- the contract ------------------------------------------------------------------------------------
def test_check_vendor_passes_with_blocking_and_asking_somebody_else(tmp_path: Path, api: FakeProlific) -> None:
    crowd = participant_ids(24)
    v = vendor_in(tmp_path, api)

    def respond(vendor: ProlificVendor, tasks, batch_id: str) -> None:
        study = vendor.submit(tasks, batch_id=batch_id)[0]["study_id"]
        for pid in crowd:  # every participant tries; Prolific and the desk decide who gets a place
            take_part(api, vendor.desk, study, pid, lambda item, who: "cat")

    report = check_vendor(lambda p, c: ProlificVendor(p, c), params=params(api), context=v.context, respond=respond,
                          workers=crowd)
    assert report.n_annotations == 8 + 12 and not report.skipped
    assert any("blocks_workers" in c for c in report.checks) and any("excludes_workers" in c for c in report.checks)
    books = api.accounting()
    assert books["studies"] == 2 and books["duplicate_studies"] == 0
    # the first study's 8 participants are on the second's block list; the blocked one is in the group too
    second = next(s for s in api.studies.values() if s["internal_name"].split("|")[2] == "contract-r0000-second")
    excluded = next(f["selected_values"] for f in second["filters"] if f["filter_id"] == "custom_blocklist")
    assert len(excluded) == 8 and crowd[0] in excluded
    group = next(iter(api.groups.values()))
    assert group["participant_ids"] == {crowd[0]}
    ledger = ProlificVendor(params(api), v.context).ledger()
    assert (ledger["paid"], ledger["bonuses"], ledger["fees"]) == (books["rewards"], books["bonuses"], books["fees"])
    assert books["bulk_pay_calls"] == 1 and books["max_bonuses_per_participant_study"] == 1


# -- the desk ------------------------------------------------------------------------------------------
def test_the_desk_admits_only_an_active_session_of_one_of_our_studies_and_shows_one_item(
        tmp_path: Path, api: FakeProlific) -> None:
    from crowdloop.records import Task

    v = vendor_in(tmp_path, api)
    tasks = [Task(item_id=f"i{k}", round=0, batch_id="b0", replicas=2, reward=0.05) for k in range(3)]
    study = v.submit(tasks, batch_id="b0")[0]["study_id"]
    other = v.submit([Task(item_id="j0", round=1, batch_id="b1", replicas=1, reward=0.05)], batch_id="b1")[0]["study_id"]
    alice, bob, carol = participant_ids(3)
    session = api.start(study, alice)
    assert v.desk.admit(alice, study, session[:-1] + "0") is None  # another session id
    assert v.desk.admit(bob, study, session) is None  # somebody else's session
    assert v.desk.admit(alice, other, session) is None  # the session belongs to the other study
    assert v.desk.admit(alice, "f" * 24, session) is None  # not one of our studies
    assert v.desk.admit(alice, study, "../../etc") is None
    api.inject("GET", r"/submissions/", "500")
    assert v.desk.admit(alice, study, session) is None  # Prolific busy: no entry now, and no waiting in the page
    with pytest.raises(CrowdloopError, match="no personal annotator links"):
        v.desk.add_annotator("mallory")
    token = v.desk.admit(alice, study, session)
    assert token and v.desk.authenticate(token) == alice
    task, _ = v.desk.next_task(alice)
    assert task.batch_id == "b0"  # never an item of the other study
    with pytest.raises(VendorError):
        v.desk.answer(alice, "b1", "j0", "cat")  # not on their screen
    v.desk.answer(alice, "b0", task.item_id, "dog")
    assert v.desk.next_task(alice) is None  # one place, one item
    code, url = v.desk.completion(alice)
    assert code == read_json(v.store, "studies/b0.json")["completion_code"] and url.endswith(f"cc={code}")
    assert v.poll(v.submit(tasks, batch_id="b0")) == []  # not back on Prolific yet
    api.complete(session, code)
    got = v.poll([{"batch_id": "b0", "study_id": study}])
    assert [(a.assignment_id, a.worker_id, a.label, a.reward) for a in got] == [(session, alice, "dog", 0.20)]
    # a submission that comes back without an answer in the app is kept for review, never a label
    s2 = api.start(study, carol)
    api.complete(s2, "GUESSED")
    assert v.poll([{"batch_id": "b0", "study_id": study}]) == []
    assert [b["problem"] for b in v.bad_submissions()] == ["no answer in the app"]
    with pytest.raises(VendorError, match="rejection needs a reason"):
        v.acknowledge(got, accept=False)
    v.acknowledge(got, accept=False, reason="You answered 0 of 3 known-answer questions correctly.")
    rejected = api.submissions[session]["rejection"]
    assert rejected["category"] == "FAILED_CHECK" and len(rejected["message"]) >= 100
    assert rejected["message"].startswith("You answered 0 of 3 known-answer questions correctly.")


# -- transient failures ------------------------------------------------------------------------------
def test_throttling_and_5xx_are_retried_and_a_create_that_timed_out_makes_no_second_study(
        tmp_path: Path, api: FakeProlific) -> None:
    from crowdloop.records import Task

    api.inject("GET", r"/participant-groups/$", "429")
    api.inject("POST", r"/participant-groups/$", "500")
    api.inject("POST", r"/studies/$", "timeout_after")  # Prolific makes the study; the answer never arrives
    api.inject("POST", r"/transition/$", "500", times=2)
    v = vendor_in(tmp_path, api)
    tasks = [Task(item_id=f"i{k}", round=0, batch_id="b0", replicas=1, reward=0.05) for k in range(2)]
    refs = v.submit(tasks, batch_id="b0")
    assert len(api.injected) == 5
    assert api.accounting()["studies"] == 1 and api.studies[refs[0]["study_id"]]["status"] == "ACTIVE"
    assert api.calls.count("POST /api/v1/studies/") == 1  # looked up by internal_name, not created again
    assert ProlificVendor(params(api), v.context).submit(tasks, batch_id="b0") == refs


def test_a_second_store_of_the_same_project_never_adopts_the_firsts_study(tmp_path: Path, api: FakeProlific) -> None:
    """A store deleted and made again (or a copy run beside it) picks the same first batch; its
    study had the same ``internal_name``, so a create that timed out was looked up by that name
    and adopted the other store's study, submissions and all. The name now carries the store's
    own id (``storage.store_identity``)."""
    from crowdloop.records import Task

    tasks = [Task(item_id=f"i{k}", round=0, batch_id="b0", replicas=1, reward=0.05) for k in range(2)]
    first = vendor_in(tmp_path / "first", api).submit(tasks, batch_id="b0")
    api.inject("POST", r"/studies/$", "timeout_after")
    second = vendor_in(tmp_path / "second", api).submit(tasks, batch_id="b0")
    assert second[0]["study_id"] != first[0]["study_id"]
    assert api.accounting()["studies"] == 2 and api.calls.count("POST /api/v1/studies/") == 2  # its own, found by its name
    names = [study["internal_name"] for study in api.studies.values()]
    assert len(set(names)) == 2 and all(n.startswith("crowdloop|") for n in names)


def test_a_bonus_whose_pay_answer_was_lost_is_paid_once(tmp_path: Path, api: FakeProlific) -> None:
    from crowdloop.records import Task

    v = vendor_in(tmp_path, api)
    tasks = [Task(item_id=f"i{k}", round=0, batch_id="b0", replicas=1, reward=0.05) for k in range(3)]
    study = v.submit(tasks, batch_id="b0")[0]["study_id"]
    for pid in participant_ids(3):
        take_part(api, v.desk, study, pid, lambda item, who: "cat")
    answers = v.poll([{"batch_id": "b0", "study_id": study}])
    v.acknowledge(answers, accept=True)
    api.inject("POST", r"/bulk-bonus-payments/.*/pay/$", "timeout_after")
    v.bonus(answers, amount=0.03, reason="top-up", token="b0-topup")
    v.bonus(answers, amount=0.03, reason="top-up", token="b0-topup")
    ProlificVendor(params(api), v.context).bonus(answers, amount=0.03, reason="top-up", token="b0-topup")
    books = api.accounting()
    assert books["bonuses"] == 0.09 and books["bulk_pay_calls"] == 1 and books["max_bonuses_per_participant_study"] == 1
    assert v.ledger()["bonuses"] == 0.09 and v.ledger()["fees"] == books["fees"]


def test_a_permanent_error_fails_at_once_in_one_line(tmp_path: Path, api: FakeProlific,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from crowdloop.records import Task

    monkeypatch.setenv(prolific.TOKEN_ENV, "revoked")
    v = vendor_in(tmp_path, api)
    with pytest.raises(VendorError) as err:
        v.submit([Task(item_id="i", round=0, batch_id="b0", replicas=1, reward=0.05)], batch_id="b0")
    assert "answered 401" in str(err.value) and "\n" not in str(err.value) and "revoked" not in str(err.value)
    assert len(api.calls) == 0  # refused before it was counted: no retry of a permanent error
    monkeypatch.delenv(prolific.TOKEN_ENV)
    with pytest.raises(ConfigError, match="set PROLIFIC_API_TOKEN"):
        vendor_in(tmp_path / "b", api).submit([Task(item_id="i", round=0, batch_id="b0", replicas=1, reward=0.05)],
                                              batch_id="b0")


# -- three rounds through the engine -------------------------------------------------------------------
def loop_config(api: FakeProlific, **extra: Any) -> dict[str, Any]:
    return small_config(**{
        "vendor": {"name": "prolific", "params": params(api)},
        "sampler.initial_size": 6, "sampler.batch_size": 4, "consensus.method": "majority_vote",
        "consensus.redundancy": 3, "collect.poll_interval_s": 0.01, "collect.timeout_s": 86400, "stopping.max_rounds": 3,
        "pay.hourly_wage": 12.0, "pay.pilot_seconds_per_task": 10.0, **extra})


def hourly_pay(p: engine.Project) -> dict[str, float]:
    """Each participant's (reward + bonus) per hour of measured work, from the label log and pay records."""
    bonus = {r: read_json(p.store, keys.round_key(r, keys.PAY))["bonus_per_assignment"] for r in p.rounds()
             if p.store.exists(keys.round_key(r, keys.PAY))}
    money: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for a in p.annotations():
        money[a.worker_id] = money.get(a.worker_id, 0.0) + a.reward + bonus.get(a.round, 0.0)
        seconds[a.worker_id] = seconds.get(a.worker_id, 0.0) + a.duration_s
    return {w: money[w] * 3600 / seconds[w] for w in money}


def test_three_rounds_pay_every_participant_the_target_and_the_books_agree(tmp_path: Path, api: FakeProlific) -> None:
    p = engine.Project.prepare(parse_config(loop_config(api)), str(tmp_path / "p"))
    truth = {i: str(y) for i, y in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    crowd = iter(participant_ids(200))
    clock = WorkClock()
    for r in range(3):
        engine.run_round(p, r, until="dispatch")
        desk = p.vendor.desk
        desk.clock = clock
        study = read_json(p.store, keys.round_key(r, keys.REFS))["refs"][0]["study_id"]
        while take_part(api, desk, study, next(crowd), lambda item, who: truth[item], clock=clock,
                        seconds=(70.0, 40.0, 50.0)[r]) is not None:
            pass  # until Prolific has no place left
        assert engine.run_round(p, r) is None
    books = api.accounting()
    pays = [read_json(p.store, keys.round_key(r, keys.PAY)) for r in range(3)]
    assert books["studies"] == 3 and books["duplicate_studies"] == 0 and books["approved"] == 18 + 12 + 12
    assert round(sum(x["rewards"] for x in pays), 2) == books["rewards"]
    # round 0 took 70 s, longer than the minute its places paid for: a top-up; later rounds' places cover their time
    assert [x["bonus_per_assignment"] for x in pays] == [0.04, 0.0, 0.0]
    assert round(sum(x["bonuses"] for x in pays), 2) == books["bonuses"] == 0.72
    assert round(sum(x["fees"] for x in pays), 2) == books["fees"]
    assert round(sum(x["total"] for x in pays), 2) == books["total"]
    assert {x["fee_rule"] for x in pays} == {"vendor 'prolific'"}
    wages = hourly_pay(p)
    assert len(wages) == 42 and min(wages.values()) >= p.config.pay.hourly_wage
    assert all(s["reward"] / s["estimated_completion_time"] * 60 >= 800 for s in api.studies.values())
    labels = list(p.human_labels(before_round=3))
    assert len(labels) == 6 + 4 + 4 and all(lab.label == truth[lab.item_id] for lab in labels)


def test_the_money_budget_plans_by_what_prolific_pays_per_place(tmp_path: Path, api: FakeProlific) -> None:
    from crowdloop.engine.budget import worst_judgment_cost

    p = engine.Project.prepare(parse_config(loop_config(api)), str(tmp_path / "p"))
    # a 10 s task priced $0.04 at $12/h is a one-minute place of $0.20 (+ $0.07 fee); the top-up is
    # capped at pay.max_top_up (1.0) times that price (+ its fee)
    assert worst_judgment_cost(p, 0.04, 3) == pytest.approx(0.20 + 0.07 + 0.20 + 0.07)


def test_a_participant_who_gives_the_place_back_frees_the_item_and_lost_answers_are_read_back(
        tmp_path: Path, api: FakeProlific) -> None:
    from crowdloop.records import Task

    v = vendor_in(tmp_path, api)
    tasks = [Task(item_id="i0", round=0, batch_id="b0", replicas=1, reward=0.05)]
    study = v.submit(tasks, batch_id="b0")[0]["study_id"]
    quitter, next_one = participant_ids(2)
    session = api.start(study, quitter)
    token = v.desk.admit(quitter, study, session)
    task, _ = v.desk.next_task(quitter)
    v.desk.answer(quitter, "b0", task.item_id, "cat")
    api.give_back(session)  # answered, then returned the place on Prolific instead of the code
    api.inject("GET", r"/submissions/$", "429")
    api.inject("GET", r"/submissions/$", "timeout_after")
    assert v.poll([{"batch_id": "b0", "study_id": study}]) == []
    assert v.desk.authenticate(token) is None and v.desk.answer_key(quitter, "b0") is None  # revoked, item open again
    done = take_part(api, v.desk, study, next_one, lambda item, who: "dog")
    assert done["item"] == "i0"
    got = v.poll([{"batch_id": "b0", "study_id": study}])
    assert [(a.worker_id, a.label) for a in got] == [(next_one, "dog")]
    api.inject("POST", r"/submissions/.*/transition/$", "timeout_after")  # approved; the answer is lost
    v.acknowledge(got, accept=True)
    assert api.submissions[got[0].assignment_id]["status"] == "APPROVED" and v.ledger()["paid"] == 0.20
    assert len(api.injected) == 3


# -- work after the deadline -----------------------------------------------------------------------------
def test_work_after_the_deadline_is_neither_taken_nor_left_to_prolifics_auto_approval(
        tmp_path: Path, api: FakeProlific) -> None:
    """On main the study stayed published after collect.timeout_s, the desk admitted and took answers
    for it, and a submission that came back after the loop's last poll was decided by nobody: 21
    days later Prolific approved and paid it (money outside the loop's books, a label it never saw)."""
    from crowdloop.records import Task

    clock = WorkClock()
    ctx = dataclasses.replace(make_context(LocalStore(tmp_path / "store"), name="prolific"), hourly_wage=12.0,
                              collect_timeout_s=600.0)
    v = ProlificVendor(params(api), ctx)
    v.desk.clock = clock
    refs = v.submit([Task(item_id=f"i{k}", round=0, batch_id="b0", replicas=1, reward=0.05) for k in range(4)],
                    batch_id="b0")
    study = refs[0]["study_id"]
    alice, carol, erin, bob, dave = participant_ids(5)
    assert take_part(api, v.desk, study, alice, lambda item, who: "cat", clock=clock, seconds=30)["item"]
    sessions, items = {}, {}
    for who in (carol, erin):  # both admitted in time; carol answers now, erin is slow
        sessions[who] = api.start(study, who)
        assert v.desk.admit(who, study, sessions[who])
        items[who] = v.desk.next_task(who)[0].item_id
    v.desk.answer(carol, "b0", items[carol], "dog")
    clock.advance(280)  # 310 s after the submit: less than lease_s (half the 600 s window) is left
    late_comer = api.start(study, bob)  # Prolific still lists the study until the loop stops it ...
    assert late_comer is not None and v.desk.admit(bob, study, late_comer) is None  # ... the desk admits nobody
    api.give_back(late_comer)
    clock.advance(300)  # past the deadline: the loop's last poll
    got = v.poll(refs)
    assert [a.worker_id for a in got] == [alice]  # carol has not come back with her code yet
    assert api.studies[study]["stopped"] and api.start(study, dave) is None  # stopped: no new places
    with pytest.raises(VendorError, match="closed"):
        v.desk.answer(erin, "b0", items[erin], "cat")  # too late: not stored, so never a code
    assert v.desk.completion(erin) is None
    v.acknowledge(got, accept=True)  # the round's pay
    api.complete(sessions[carol], v.desk.completion(carol)[0])  # carol's code reaches Prolific after the last poll
    next_round = v.submit([Task(item_id="j0", round=1, batch_id="b1", replicas=1, reward=0.05)], batch_id="b1")
    assert v.poll(next_round) == []  # the next round's poll settles round 0's late submission ...
    assert api.auto_approve() == []  # ... so nothing is left for Prolific to approve on its own
    assert [(x["participant_id"], x["label"], x["reward"]) for x in v.late_submissions()] == [(carol, "dog", 0.20)]
    books, ledger = api.accounting(), v.ledger()
    assert (ledger["paid"], ledger["fees"], ledger["late"], ledger["late_paid"]) == (books["rewards"], books["fees"], 1, 0.20)
    assert books["approved"] == 2 and v.poll(next_round) == [] and v.settle_late() == []  # decided once


class Died(BaseException):
    """The process dies (a kill, not an error the code could handle)."""


def test_a_late_approval_is_in_the_books_even_if_the_process_dies_after_its_first_record(
        tmp_path: Path, api: FakeProlific, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settling a late submission writes two records, the money (``late/``) and the decision
    (``acks/``). Money first: a process that dies after it leaves the submission undecided, and
    the rerun approves and books it; the other order left an approval whose money ``late_paid``
    (and so the project's spent) never saw."""
    from crowdloop.records import Task

    clock = WorkClock()
    ctx = dataclasses.replace(make_context(LocalStore(tmp_path / "store"), name="prolific"), hourly_wage=12.0,
                              collect_timeout_s=600.0)
    v = ProlificVendor(params(api), ctx)
    v.desk.clock = clock
    refs = v.submit([Task(item_id="i0", round=0, batch_id="b0", replicas=1, reward=0.05)], batch_id="b0")
    (carol,) = participant_ids(1)
    session = api.start(refs[0]["study_id"], carol)
    assert v.desk.admit(carol, refs[0]["study_id"], session)
    v.desk.answer(carol, "b0", v.desk.next_task(carol)[0].item_id, "dog")
    clock.advance(700)
    assert v.poll(refs) == []  # the closing poll: carol's code is not back yet
    v.acknowledge([], accept=True)
    api.complete(session, v.desk.completion(carol)[0])  # ... now it is
    undo = die_after_writing(monkeypatch, prolific, ("acks/", "late/"), Died)
    with pytest.raises(Died):
        v.settle_late()
    undo()
    restarted = ProlificVendor(params(api), ctx)
    assert [x["submission_id"] for x in restarted.settle_late()] == [session]
    assert restarted.late_paid() == {"b0": round(0.20 + fee_for(0.20), 2)}
    books, ledger = api.accounting(), restarted.ledger()
    assert (books["approved"], ledger["approved"], ledger["total"]) == (1, 1, books["total"])
    assert restarted.settle_late() == []  # decided once


def one_round_dispatched(tmp_path: Path, api: FakeProlific) -> tuple[str, Any, dict[str, str], str, Any, WorkClock]:
    """A one-round project with a 600 s collect window, its round 0 dispatched: (location,
    project, answer key, study id, desk on a work clock, the clock)."""
    location = str(tmp_path / "p")
    p = engine.Project.prepare(parse_config(loop_config(api, **{"stopping.max_rounds": 1, "collect.timeout_s": 600})),
                               location)
    truth = {i: str(y) for i, y in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    engine.run_round(p, 0, until="dispatch")
    study = read_json(p.store, keys.round_key(0, keys.REFS))["refs"][0]["study_id"]
    desk, clock = p.vendor.desk, WorkClock()
    desk.clock = clock
    return location, p, truth, study, desk, clock


def test_crowdloop_settle_approves_a_code_that_came_back_after_the_last_round(
        tmp_path: Path, api: FakeProlific, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last round has no later poll to settle its late submissions: ``crowdloop settle`` does
    it, so a participant who answered in time but came back with the code after the loop's last
    poll is paid by the project, not by Prolific's own approval 21 days later."""
    from typer.testing import CliRunner

    from crowdloop.cli import app
    from crowdloop.engine import collection

    location, p, truth, study, desk, clock = one_round_dispatched(tmp_path, api)
    crowd = iter(participant_ids(40))
    carol = next(crowd)
    session = api.start(study, carol)
    assert desk.admit(carol, study, session)
    item = desk.next_task(carol)[0].item_id
    desk.answer(carol, read_json(p.store, keys.round_key(0, keys.DISPATCH))["batch_id"], item, truth[item])
    while take_part(api, desk, study, next(crowd), lambda i, who: truth[i], clock=clock, seconds=5.0) is not None:
        pass  # every other place
    clock.advance(700)  # past the deadline: the loop's last poll of round 0
    monkeypatch.setattr(collection, "time", type("Later", (), {"time": staticmethod(lambda: time.time() + 700)}))
    engine.run_round(p, 0)
    assert p.record(0, keys.COLLECTED)["n_annotations"] == 17  # carol's code had not come back
    api.complete(session, desk.completion(carol)[0])  # ... it does now, after the round was paid
    runner = CliRunner()
    first = runner.invoke(app, ["settle", location])
    assert first.exit_code == 0, first.output
    assert "settled 1 late submission(s): 0.27 USD" in first.output  # a one-minute place, $0.20 + $0.07 fee
    assert api.auto_approve() == []  # nothing left for Prolific to approve on its own
    # the project counts it: what it spent (the money budget's figure, the status) is what Prolific was paid
    reopened = engine.Project.open(location)
    paid_in_round = p.record(0, keys.PAY)["total"]
    assert reopened.spent(1) == round(paid_in_round + 0.27, 2) == api.accounting()["total"]
    assert reopened.spent(0) == 0.0
    again = runner.invoke(app, ["settle", location])
    assert again.exit_code == 0 and "settled 0 late submission(s)" in again.output  # decided once
    other = engine.Project.prepare(parse_config(small_config()), str(tmp_path / "simulated"))
    out = runner.invoke(app, ["settle", other.store.url])
    assert out.exit_code == 0 and "vendor 'simulated' takes no work after a batch closed" in out.output


def test_a_submission_without_an_answer_is_decided_by_settle_or_booked_when_prolific_decides(
        tmp_path: Path, api: FakeProlific, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is paid outside the books: a submission that came back without an answer in the app
    waits for a decision (listed with the money at stake and Prolific's auto-approval day), is
    rejected by ``crowdloop settle --unmatched reject`` with Prolific's ``NO_DATA``, and one that
    Prolific approves on its own is booked by the next ``settle``, so the project's spent equals
    what Prolific charged. A participant whose answer the app holds but who typed another code
    did the work: their answer is a label and they are paid."""
    from typer.testing import CliRunner

    from crowdloop.cli import app
    from crowdloop.engine import collection

    location, p, truth, study, desk, clock = one_round_dispatched(tmp_path, api)
    batch = read_json(p.store, keys.round_key(0, keys.DISPATCH))["batch_id"]
    places = api.studies[study]["total_available_places"]
    crowd = iter(participant_ids(60))
    erin, dave, frank = next(crowd), next(crowd), next(crowd)
    erin_session = api.start(study, erin)
    assert desk.admit(erin, study, erin_session)
    item = desk.next_task(erin)[0].item_id
    desk.answer(erin, batch, item, truth[item])
    api.complete(erin_session, "TYPO-" + desk.completion(erin)[0])  # the answer is in the app, the code is not
    dave_session, frank_session = api.start(study, dave), api.start(study, frank)
    api.complete(dave_session, "GUESSED")  # never opened the app
    while take_part(api, desk, study, next(crowd), lambda i, who: truth[i], clock=clock, seconds=5.0) is not None:
        pass  # every other place
    clock.advance(700)  # past the deadline: the loop's last poll of round 0
    monkeypatch.setattr(collection, "time", type("Later", (), {"time": staticmethod(lambda: time.time() + 700)}))
    engine.run_round(p, 0)
    labels = {(a.worker_id, a.item_id) for a in p.annotations()}
    assert (erin, item) in labels and p.record(0, keys.COLLECTED)["n_annotations"] == places - 2
    assert api.submissions[erin_session]["status"] == "APPROVED"

    runner = CliRunner()
    listed = runner.invoke(app, ["settle", location])
    assert listed.exit_code == 0, listed.output
    text = " ".join(listed.output.split())
    assert "settled 0 late submission(s)" in text
    due = (dt.datetime.fromisoformat(api.submissions[dave_session]["completed_at"].replace("Z", "+00:00"))
           + dt.timedelta(days=21)).date().isoformat()
    assert f"undecided: submission {dave_session} (participant {dave}): no answer in the app; " \
           f"the platform approves it on its own after {due} (0.27 USD with the fee)" in text
    assert "1 submission(s) without a usable answer await your decision" in text
    assert api.submissions[dave_session]["status"] == "AWAITING REVIEW"  # nothing decided without being asked
    status = runner.invoke(app, ["status", location, "--json"])
    assert json.loads(status.output)["awaiting_decision"] == [
        {"submission_id": dave_session, "participant_id": dave, "batch_id": batch, "problem": "no answer in the app",
         "at_stake": 0.27, "auto_approval_after": due}]
    shown = " ".join(runner.invoke(app, ["status", location]).output.split())
    assert f"1 submission(s) await your decision (0.27 USD at stake, approved by the platform on its own after {due})" in shown

    bad_option = runner.invoke(app, ["settle", location, "--unmatched", "pay"])
    assert bad_option.exit_code == 2 and "--unmatched 'pay': expected keep, approve or reject" in bad_option.output
    rejected = runner.invoke(app, ["settle", location, "--unmatched", "reject"])
    assert rejected.exit_code == 0, rejected.output
    assert "settled 1 late submission(s): 0.00 USD" in " ".join(rejected.output.split())
    assert api.submissions[dave_session]["status"] == "REJECTED"
    assert api.submissions[dave_session]["rejection"]["category"] == "NO_DATA"
    assert "await your decision" not in rejected.output

    api.complete(frank_session, "GUESSED")  # frank's place was still active: he comes back later, without an answer
    assert api.auto_approve() == [frank_session]  # nobody decided: 21 days later Prolific approves and pays
    booked = runner.invoke(app, ["settle", location])
    assert booked.exit_code == 0, booked.output
    assert "settled 1 late submission(s): 0.27 USD" in " ".join(booked.output.split())
    reopened = engine.Project.open(location)
    assert reopened.spent(1) == round(p.record(0, keys.PAY)["total"] + 0.27, 2) == api.accounting()["total"]
    books = reopened.vendor.ledger()
    assert (books["approved"], books["rejected"], books["total"]) == (places - 1, 1, api.accounting()["total"])
    again = runner.invoke(app, ["settle", location])
    assert "settled 0 late submission(s)" in again.output and "await" not in again.output  # booked once
    assert json.loads(runner.invoke(app, ["status", location, "--json"]).output)["awaiting_decision"] == []
