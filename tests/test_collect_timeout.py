"""``collect.timeout_s`` is counted from the dispatch recorded in the store (issue 21).

README: "`timeout_s` (counted from dispatch)"; the config: "after this (from dispatch), aggregate
what has arrived"; docs/vendors.md: "then the round goes on with the answers that arrived". So a
round some of whose assignments are never answered ends ``timeout_s`` after ``refs.json``'s
``dispatched_at`` — also when the process that dispatched died and another one collects, which
must not start the clock again — and aggregates and pays what came in.

The vendor is the manifest drop-box; the test plays its workers and answers part of the batch.
The clock is controlled, never raced: in this process the collect module's clock is a fake that
``sleep`` advances; through ``crowdloop run`` the fault launcher shifts the dispatch and collect
steps' clock (``CROWDLOOP_TEST_CLOCK_OFFSET_S``), as if the rerun started that much later.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project, collection
from crowdloop.storage import PrefixedStore, open_store
from tests.conftest import REPO, small_config
from tests.faults import CLOCK_OFFSET_ENV

TIMEOUT_S = 1800.0
POLL_S = 60.0
FULL, ONE, NONE = 20, 5, 5  # of round 0's 30 items: every replica answered, one of three, none


def _config(**overrides: Any) -> dict[str, Any]:
    return small_config(**{"vendor": {"name": "manifest", "params": {}}, "stopping.max_rounds": 1,
                           "collect.timeout_s": TIMEOUT_S, "collect.poll_interval_s": POLL_S, **overrides})


class FakeClock:
    """``time.time`` for the collect step; ``sleep`` moves it on instead of waiting."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps = 0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def answer_part(location: str, truth: dict[str, str]) -> dict[str, list[str]]:
    """The vendor's workers answer round 0's manifest in part: the first ``FULL`` items (by id)
    with every replica, the next ``ONE`` with one replica, the last ``NONE`` never."""
    exchange = PrefixedStore(open_store(location, create=False), "vendor/manifest")
    (request,) = exchange.list("requests/")
    lines = [json.loads(raw) for raw in exchange.read_bytes(request).splitlines()]
    assert len(lines) == FULL + ONE + NONE and all(line["replicas"] == 3 for line in lines)
    items = sorted(line["item-id"] for line in lines)
    groups = {"full": items[:FULL], "one": items[FULL:FULL + ONE], "none": items[FULL + ONE:]}
    done = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for item in items:
        replicas = 3 if item in groups["full"] else 1 if item in groups["one"] else 0
        for k in range(replicas):
            out.append(json.dumps({"item-id": item, "worker-id": f"mw{k}", "label": truth[item], "duration-s": 9.0,
                                   "submitted-at": (done + timedelta(seconds=len(out))).isoformat()}))
    exchange.write_bytes("results/part-1.jsonl", ("\n".join(out) + "\n").encode(), create_only=True)
    return groups


def _truth(p: Project) -> dict[str, str]:
    return dict(zip(p.pool.ids.astype(str).tolist(), p.pool.y.astype(str).tolist(), strict=True))


def check_round_goes_on_with_what_arrived(p: Project, groups: dict[str, list[str]]) -> None:
    """Round 0 closed short: the missing items are named, the answers that came are labeled and
    paid (no more), and nothing was paid for answers that never came."""
    collected = p.record(0, keys.COLLECTED)
    arrived = 3 * FULL + ONE
    assert (collected["complete"], collected["n_annotations"], collected["expected"]) == (False, arrived, 90)
    assert collected["n_incomplete"] == ONE + NONE
    assert collected["incomplete_items"] == sorted(groups["one"] + groups["none"])
    labeled = {json.loads(line)["item_id"] for line in p.store.read_bytes(keys.round_key(0, keys.LABELS)).splitlines()}
    assert labeled == set(groups["full"] + groups["one"])  # an item nobody answered has no label
    pay = p.record(0, keys.PAY)
    reward = p.record(0, keys.DISPATCH)["reward"]
    assert pay["n_approved"] == arrived and pay["rewards"] == pytest.approx(arrived * reward, abs=0.001)
    assert p.vendor.ledger()["paid"] == pytest.approx(arrived * reward, abs=0.001)
    assert p.record(1, keys.TRAIN)["n_labeled"] == FULL + ONE  # the next round trains on what arrived


def test_the_deadline_is_timeout_s_after_the_recorded_dispatch_also_after_a_restart(tmp_path: Path, monkeypatch) -> None:
    """Dispatch at T0, one poll at T0+10 s (pending, deadline T0+1800), the process dies; a new
    one starts collecting at T0+1500: it polls every 60 s and closes the round at T0+1800 — not
    1800 s after it started — with what arrived."""
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(_config()), location)
    engine.run_round(p, 0, until="dispatch")
    dispatched_at = p.record(0, keys.REFS)["dispatched_at"]
    deadline = dispatched_at + TIMEOUT_S

    clock = FakeClock(dispatched_at + 10)
    monkeypatch.setattr(collection, "time", clock)  # dispatch above ran on the real clock
    first = engine.collect(p, 0, wait=False, sleep=clock.sleep)
    assert first["pending"] and first["n_annotations"] == 0 and first["deadline"] == deadline
    groups = answer_part(location, _truth(p))

    restarted = Project.prepare(parse_config(_config()), location)  # a new process: nothing carried over
    clock.now = dispatched_at + 1500
    result = engine.collect(restarted, 0, sleep=clock.sleep)
    assert deadline <= clock.now < deadline + POLL_S, (clock.now - dispatched_at, clock.sleeps)
    assert clock.sleeps in (5, 6)  # 300 s of polls every 60 s (6 if 5 x 60 s rounds to just below)
    assert result["complete"] is False
    engine.run_in_process(restarted)
    check_round_goes_on_with_what_arrived(restarted, groups)


def test_a_round_before_its_deadline_keeps_waiting(tmp_path: Path, monkeypatch) -> None:
    """The other side of the deadline: a process that starts 1790 s after the dispatch finds the
    answers short and goes on polling (defer mode: reports pending, records nothing final)."""
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(_config()), location)
    engine.run_round(p, 0, until="dispatch")
    dispatched_at = p.record(0, keys.REFS)["dispatched_at"]
    answer_part(location, _truth(p))
    clock = FakeClock(dispatched_at + TIMEOUT_S - 10)
    monkeypatch.setattr(collection, "time", clock)
    restarted = Project.prepare(parse_config(_config()), location)
    out = engine.collect(restarted, 0, wait=False, sleep=clock.sleep)
    assert out["pending"] and out["n_annotations"] == 3 * FULL + ONE and out["deadline"] == dispatched_at + TIMEOUT_S
    assert not restarted.has(0, keys.COLLECTED)


def test_the_poll_that_closes_a_round_is_made_after_its_deadline(tmp_path: Path, monkeypatch) -> None:
    """Answers submitted just before the deadline while a poll was on its way are still taken:
    a poll that started before the deadline and returned after it does not close the round; one
    more poll, made after the deadline, does. (A vendor ends its listing so that all work is due
    by the deadline — MTurk: ``listing_s`` — and that work must reach the label log, or it is
    paid by the platform's auto-approval for labels the project never sees.)"""
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(_config()), location)
    engine.run_round(p, 0, until="dispatch")
    deadline = p.record(0, keys.REFS)["dispatched_at"] + TIMEOUT_S
    clock = FakeClock(deadline - 30)
    monkeypatch.setattr(collection, "time", clock)
    restarted = Project.prepare(parse_config(_config()), location)
    real_poll = restarted.vendor.poll
    polls: list[float] = []

    def slow_poll(refs: list) -> list:
        polls.append(clock.now)
        got = real_poll(refs)
        if len(polls) == 1:  # read before the workers' answers landed (at deadline - 1 s), returned after the deadline
            clock.now = deadline - 1
            answer_part(location, _truth(restarted))
            clock.now = deadline + 5
        return got

    monkeypatch.setattr(restarted.vendor, "poll", slow_poll)
    result = engine.collect(restarted, 0, sleep=clock.sleep)
    assert polls == [deadline - 30, deadline + 5 + POLL_S]
    assert result["n_annotations"] == 3 * FULL + ONE and result["n_incomplete"] == ONE + NONE


@pytest.mark.slow
def test_crowdloop_run_restarted_after_the_deadline_closes_the_round_at_once(tmp_path: Path, cli_env: dict) -> None:
    """Through ``crowdloop run``: the first run dispatches and waits in defer mode; the vendor's
    workers answer part of the batch; a run 32 minutes later (by its clock) in wait mode closes
    round 0 at its first poll (it does not wait another ``timeout_s``: the rerun's clock starts
    at the dispatch recorded in the store) and finishes with what arrived. The other side of the
    deadline is ``test_a_round_before_its_deadline_keeps_waiting``."""
    location = str(tmp_path / "p")

    def run(name: str, offset_s: float, mode: str) -> subprocess.CompletedProcess:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(_config(**{"collect.mode": mode})))
        env = {**cli_env, CLOCK_OFFSET_ENV: str(offset_s)}
        done = subprocess.run([sys.executable, "-m", "tests.faults", "run", str(config), "--project-dir", location],
                              env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run("first", 0, "defer")
    p = Project.open(location)
    assert p.has(0, keys.REFS) and not p.has(0, keys.COLLECTED)
    groups = answer_part(location, _truth(p))

    run("after-deadline", TIMEOUT_S + 120, "wait")
    p = Project.open(location)
    check_round_goes_on_with_what_arrived(p, groups)
    assert p.record(1, keys.METRICS)["accuracy"] is not None and p.store.exists(keys.STOP)


def test_an_item_nobody_answered_goes_back_to_the_pool_once(tmp_path: Path) -> None:
    """Kept out after a round that closed without an answer for it, the item the model asked
    for was never labeled (a team labeling its whole pool found it unlabeled at the end). It may
    be picked again; unanswered a second time it stays out (nobody can or will answer it)."""
    from crowdloop.engine.collection import append_segment
    from crowdloop.records import Annotation
    from crowdloop.storage import write_json

    p = Project.prepare(parse_config(_config()), str(tmp_path / "p"))
    a, b, c, d = p.pool.ids.astype(str).tolist()[:4]

    def closed_round(r: int, sent: list[str], answered: list[str], *, closed: bool = True) -> None:
        batch = p.batch_id(r)
        write_json(p.store, keys.round_key(r, keys.DISPATCH),
                   {"batch_id": batch, "tasks": [{"item_id": i, "replicas": 1, "is_gold": False} for i in sent]})
        append_segment(p, r, [Annotation(item_id=i, worker_id="w1", label="0", vendor="manifest",
                                         assignment_id=f"{batch}-{i}", batch_id=batch, round=r,
                                         submitted_at=datetime(2026, 1, 1, tzinfo=UTC), duration_s=5.0, reward=0.05)
                              for i in answered])
        if closed:
            write_json(p.store, keys.round_key(r, keys.COLLECTED), {"round": r})

    closed_round(0, [a, b, c], answered=[a])
    assert p.dispatched_items(before_round=1) == {a}  # b and c: back to the pool
    closed_round(1, [b, c, d], answered=[c])
    assert p.dispatched_items(before_round=2) == {a, b, c}  # b unanswered twice: out for good; c answered
    assert p.dispatched_items(before_round=1) == {a}  # as round 1 saw it
    closed_round(2, [d], answered=[], closed=False)
    assert p.dispatched_items() == {a, b, c, d}  # an open round's items are all out


def test_a_round_nobody_answered_says_so_in_the_run_log() -> None:
    from flows.logs import step_summary

    line = step_summary("collect", 2, {"round": 2, "n_annotations": 0, "expected": 18, "complete": False,
                                       "n_incomplete": 6})
    assert line.startswith("collect · r2: 0 of 18 judgments collected, 6 items short; nobody answered before "
                           "collect.timeout_s (their items go back to the pool once)")
    assert "nobody" not in step_summary("collect", 2, {"n_annotations": 5, "expected": 18, "n_incomplete": 4})
