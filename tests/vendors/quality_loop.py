"""Three rounds with one spammer on every vendor (issue 17's acceptance), as tests and the
``benchmarks/vendor_quality.py`` script run them.

The same project on each vendor: digits, adaptive redundancy (two judgments per new item, one
more from somebody else while the consensus is unsure, at most three), gold questions mixed in
(a worker with two or more gold answers below 60% is blocked), $12/h at 9 s a task ($0.03).
Four workers: three answer the truth, one spammer always answers the next class. Each vendor's
crowd is played through the vendor's own channel:

* MTurk: the fake behind boto3's real client (every request validated by botocore's model);
  workers take HIT slots in turn, as MTurk lets them (never a HIT twice, never when blocked);
* the local app: real HTTP to the annotation app, one thread per annotator with their own link;
* the manifest drop-box: an outside tool reads each manifest and drops a result file; the
  spammer ignores the block list and answers anyway (those lines must be rejected);
* Label Studio: the real server; annotators sign up, take tasks from the labeling stream with
  their own API tokens and submit annotations.

``report`` reads what happened from the project's store and the vendor's side: the spammer's
judgments before and after the block, re-asks answered by a worker who had answered the item
(must be 0), the spammer's approved work, and the money by the status JSON and by the vendor.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.report import status
from tests.conftest import small_config

ROUNDS = 3
WAGE, SECONDS = 12.0, 9.0  # $0.03 a task


def quality_config(project: str, vendor: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return small_config(**{
        "project": project, "vendor": vendor,
        "sampler.initial_size": 12, "sampler.batch_size": 8,
        "consensus": {"method": "majority_vote", "redundancy": 3, "confidence_threshold": 0.9,
                      "min_judgments": 2, "max_judgments": 3},
        # evidence_level 1: block on the observed share, so this 4-worker crowd blocks its always-wrong
        # spammer on 2 gold answers within 3 rounds (the default 0.05 needs 4: 0 of 3 is what a
        # 60% worker does 6% of the time); tests/consensus/test_gold_questions.py covers the default
        "gold": {"share": 0.25, "n_items": 16, "min_answers": 2, "min_accuracy": 0.6, "evidence_level": 1.0},
        "pay": {"hourly_wage": WAGE, "pilot_seconds_per_task": SECONDS},
        "collect": {"poll_interval_s": 0.05, "timeout_s": 300},
        "stopping.max_rounds": ROUNDS, **overrides})


class Crowd:
    """Who answers what: the truth, except the spammer, who answers the next class."""

    def __init__(self, p: Project, honest: list[str], spammer: str) -> None:
        self.truth = {str(i): str(y) for i, y in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
        self.classes = list(p.classes)
        self.honest, self.spammer = honest, spammer
        self.workers = [spammer, *honest]  # the spammer is first in line

    def answer(self, item: str, worker: str) -> str:
        true = self.truth[item]
        return self.classes[(self.classes.index(true) + 1) % len(self.classes)] if worker == self.spammer else true


# -- what happened -----------------------------------------------------------------------------
def report(p: Project, vendor: str, spammer: str, **extra: Any) -> dict[str, Any]:
    """Per-vendor figures (see the module docstring); with an audit, ``audit_report``'s too."""
    intents = {r: p.record(r, keys.DISPATCH) for r in p.rounds() if p.has(r, keys.DISPATCH)}
    block_round = min((r for r, d in intents.items() if spammer in d.get("block_reasons", {})), default=None)
    anns = p.annotations()
    by_round = Counter(a.round for a in anns if a.worker_id == spammer)
    excluded = {(r, t["item_id"]): set(t["exclude_workers"]) for r, d in intents.items() for t in d["tasks"]
                if t["exclude_workers"]}
    reask_answers = [a for a in anns if (a.round, a.item_id) in excluded]
    repeats = sum(1 for a in reask_answers if a.worker_id in excluded[(a.round, a.item_id)])
    pairs = Counter((a.item_id, a.worker_id) for a in anns)
    rejected = {aid for r in p.rounds() for rej in (p.record(r, keys.PAY, default={}) or {}).get("rejections", [])
                for aid in rej["assignment_ids"]}
    spam = [a for a in anns if a.worker_id == spammer]
    state = status(p)
    ledger = p.vendor.ledger() if callable(getattr(p.vendor, "ledger", None)) else {}
    return {
        "vendor": vendor, "rounds": len([r for r in intents if p.has(r, keys.PAY)]), "judgments": len(anns),
        "spammer": spammer, "blocked_before_round": block_round,
        "block_reason": intents[block_round]["block_reasons"][spammer] if block_round is not None else None,
        "spammer_judgments_by_round": {str(r): by_round.get(r, 0) for r in sorted(intents)},
        "spammer_judgments_before_block": sum(n for r, n in by_round.items() if block_round is None or r < block_round),
        "spammer_judgments_after_block": sum(n for r, n in by_round.items() if block_round is not None and r >= block_round),
        "spammer_paid_judgments": sum(1 for a in spam if a.assignment_id not in rejected),
        "spammer_paid": round(sum(a.reward for a in spam if a.assignment_id not in rejected), 2),
        "reask_tasks": len(excluded), "reask_answers": len(reask_answers),
        "reasks_by_a_repeat_worker": repeats, "same_worker_twice_on_an_item": sum(1 for n in pairs.values() if n > 1),
        "status_cost": state["totals"]["cost"], "paid_to_workers": state["totals"]["paid_to_workers"],
        "vendor_ledger": ledger, **(audit_report(p) if p.config.evaluation.enabled else {}), **extra,
    }


AUDIT = {"evaluation": {"method": "random", "max_items": 20, "batch_size": 10, "redundancy": 3, "reask_below": 0.9}}
"""The accuracy audit on top of the quality controls (issue 15): 20 reserve items drawn in two
batches, 3 judgments each, and an item whose three votes are not unanimous asked once more, 2
judgments from workers who have not answered it. The re-ask needs 5 workers besides a blocked
spammer, so the audit runs use six honest workers."""


def own_data(root: Path) -> dict[str, Any]:
    """A team's own-data settings on top of the quality controls (issue 15): 40 seed labels and 30
    gold items from files, the active audit, ``sampler: auto``, ``semi_supervised: auto``,
    auto-labeling and stopping by stabilizing predictions. The files hold the pool's true labels."""
    probe = Project.prepare(parse_config(quality_config("probe", {"name": "simulated", "params": {}})), str(root / "probe"))
    rows = list(zip(map(str, probe.pool.ids.tolist()), map(str, probe.pool.y.tolist()), strict=True))
    (root / "seeds.csv").write_text("id,label\n" + "".join(f"{i},{y}\n" for i, y in rows[:40]))
    (root / "gold.csv").write_text("id,label\n" + "".join(f"{i},{y}\n" for i, y in rows[100:130]))
    return {
        "evaluation": {"method": "active", "max_items": 20, "batch_size": 10, "redundancy": 3},
        "pool.seed_labels": {"path": str(root / "seeds.csv")},
        "gold": {"path": str(root / "gold.csv"), "share": 0.25, "min_answers": 2, "min_accuracy": 0.6,
                 "evidence_level": 1.0},
        "semi_supervised": {"method": "auto"}, "sampler.name": "auto",
        "autolabel": {"enabled": True, "min_validation": 20, "min_support": 5},
        "stopping.stabilizing_predictions": {"agreement": 0.99, "rounds": 2, "stop_set": 200},
    }


def audit_report(p: Project) -> dict[str, Any]:
    """What the audit bought, through the vendor's channel, and what the status JSON says of it."""
    from crowdloop.engine.auditing import audit_items, audit_labels, audit_redundancy

    after = p.rounds()[-1] + 1
    sent = audit_items(p, after)
    truth = {str(i): str(y) for i, y in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    reasked = {t["item_id"] for r in p.rounds() if p.has(r, keys.AUDIT) for t in p.record(r, keys.AUDIT)["reask"]}
    workers: dict[str, list[str]] = {}
    for a in p.annotations():
        workers.setdefault(a.item_id, []).append(a.worker_id)
    trained = {label.item_id for r in p.rounds() for label in p.round_labels(r, keys.LABELS) or []}
    labels = audit_labels(p, after)
    last = status(p)["rounds"][-1]
    k = audit_redundancy(p.config)
    return {
        "audit_items": len(sent), "audit_items_labeled": len(labels), "audit_items_trained_on": len(sent & trained),
        "audit_labels_wrong": sum(1 for i, a in labels.items() if a.label != truth[i]),
        "audit_reasked": len(reasked),
        "audit_items_with_other_counts": sum(1 for i in sent if len(workers.get(i, [])) != (2 * k - 1 if i in reasked else k)),
        "audit_items_with_a_repeat_worker": sum(1 for i in sent if len(set(workers.get(i, []))) != len(workers.get(i, []))),
        **{f"last_{f}": last[f] for f in ("estimated_accuracy", "ci_low", "ci_high", "n_eval_labels", "audit_judgments",
                                          "audit_cost")},
    }


def finish(p: Project) -> None:
    """The round after the last paid one, as ``crowdloop run`` walks it: the model trains on the
    last answers, the audit counts them, then the stopping rule ends the run (max_rounds)."""
    if engine.run_round(p, ROUNDS) is None:
        raise RuntimeError(f"round {ROUNDS} should have stopped the run at stopping.max_rounds={ROUNDS}")


# -- MTurk --------------------------------------------------------------------------------------
def mturk_bill(fake: Any) -> dict[str, float]:
    """What MTurk charges for the fake's approved work, by MTurk's published rule, computed here on
    its own: 20% of each reward and bonus, +20% on HITs with 10+ assignments, $0.01 at least each."""
    import math

    def fee(amount: float, assignments: int) -> float:
        rate = 0.2 + (0.2 if assignments >= 10 else 0.0)
        return max(0.01, math.ceil(round(amount * rate * 100, 6)) / 100)

    rewards = fees = 0.0
    for hit_id, rows in fake.assignments.items():
        hit = fake.hits[hit_id]
        for a in rows:
            if a["AssignmentStatus"] == "Approved":
                rewards += float(hit["Reward"])
                fees += fee(float(hit["Reward"]), hit["MaxAssignments"])
    bonuses = sum(float(b["BonusAmount"]) for b in fake.bonuses)
    fees += sum(fee(float(b["BonusAmount"]), 1) for b in fake.bonuses)
    return {"rewards": round(rewards, 2), "bonuses": round(bonuses, 2), "fees": round(fees, 2),
            "total": round(rewards + bonuses + fees, 2)}


def run_mturk(root: Path, extra: dict[str, Any] | None = None, n_honest: int = 3) -> dict[str, Any]:
    """Three rounds on MTurk (the fake behind boto3's real client, installed by the caller)."""
    from crowdloop.vendors import mturk
    from tests.vendors.mturk_fake import FakeMTurk

    cfg = quality_config("qmturk", {"name": "mturk", "params": {"max_requests_per_second": 100,
                                                                      "assignment_duration_s": 30}}, **(extra or {}))
    p = Project.prepare(parse_config(cfg), str(root / "mturk"))
    crowd = Crowd(p, [f"AHONEST{k}" for k in range(1, n_honest + 1)], "ASPAMMER")
    fake = FakeMTurk(crowd=crowd.workers, duration_s=SECONDS)
    fake.answer = crowd.answer
    saved = mturk._session_factory
    mturk._session_factory = fake.session
    try:
        engine.run_in_process(p)
        blocked_at = fake.calls.index("CreateWorkerBlock") if "CreateWorkerBlock" in fake.calls else None
        hits = {h: fake.hits[h] for h in fake.assignments}
        offered_after = sum(1 for rows in fake.assignments.values() for a in rows if a["WorkerId"] == crowd.spammer
                            and blocked_at is not None and fake.assigned_at_call[a["AssignmentId"]] > blocked_at)
        spam_status = Counter(a["AssignmentStatus"] for rows in fake.assignments.values() for a in rows
                              if a["WorkerId"] == crowd.spammer)
        out = report(p, "mturk", crowd.spammer, mturk_bill=mturk_bill(fake), worker_blocks=dict(fake.blocked),
                     spammer_assignments_after_block=offered_after,
                     spammer_assignments_by_status=dict(spam_status), n_hits=len(hits),
                     extensions=fake.calls.count("CreateAdditionalAssignmentsForHIT"),
                     botocore_validated_requests=len(fake.calls))
    finally:
        mturk._session_factory = saved
    return out


# -- the local annotation app --------------------------------------------------------------------
def run_local(root: Path, extra: dict[str, Any] | None = None, n_honest: int = 3) -> dict[str, Any]:
    """Three rounds on the local app over real HTTP, one thread per annotator."""
    import httpx

    from crowdloop.vendors.local import LocalVendor
    from crowdloop.vendors.local_app import create_app, csrf_for
    from tests.vendors.app_server import running

    cfg = quality_config("qlocal", {"name": "local", "params": {"undo_window_s": 0, "lease_s": 60}}, **(extra or {}))
    p = Project.prepare(parse_config(cfg), str(root / "local"))
    crowd = Crowd(p, [f"honest{k}" for k in range(1, n_honest + 1)], "spammer")
    tokens = {w: p.vendor.add_annotator(w) for w in crowd.workers}
    # the app's own vendor object, as `crowdloop annotate` has in its own process
    desk = LocalVendor(dict(cfg["vendor"]["params"]), p.vendor.context)
    stop = threading.Event()
    seen: dict[str, Any] = {"blocked_page": None, "spammer_items_after_block": 0, "errors": []}

    def annotator(worker: str, base: str) -> None:
        with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as client:
            client.get(f"/?token={tokens[worker]}")
            while not stop.is_set():
                page = client.get("/").text
                if 'id="blocked"' in page:
                    seen["blocked_page"] = re.sub(r"<[^>]+>", " ", page.split('id="blocked">')[1].split("</div>")[0])
                found = re.search(r'name="batch_id" value="([^"]+)">\s*<input type="hidden" name="item_id" value="([^"]+)"',
                                  page)
                if found is None:
                    time.sleep(0.05)
                    continue
                batch, item = found.group(1), found.group(2)
                if worker == crowd.spammer and desk.block_reason(worker) is not None:
                    seen["spammer_items_after_block"] += 1
                r = client.post("/answer", data={"csrf": csrf_for(tokens[worker]), "batch_id": batch, "item_id": item,
                                                 "label": crowd.answer(item, worker)}, headers={"Origin": base})
                if r.status_code != 303:
                    seen["errors"].append(r.text[:200])
                if worker != crowd.spammer:
                    time.sleep(0.01)  # the spammer clicks fastest

    with running(create_app(desk, project="qlocal")) as base:
        threads = [threading.Thread(target=annotator, args=(w, base), daemon=True) for w in crowd.workers]
        for t in threads:
            t.start()
        try:
            engine.run_in_process(p)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
    return report(p, "local", crowd.spammer, blocked_page=" ".join((seen["blocked_page"] or "").split()),
                  spammer_items_shown_after_block=seen["spammer_items_after_block"], app_errors=seen["errors"][:3])


# -- the manifest drop-box ----------------------------------------------------------------------
T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def run_manifest(root: Path, extra: dict[str, Any] | None = None, n_honest: int = 3) -> dict[str, Any]:
    """Three rounds through the drop-box; the spammer answers every line once blocked (rejected)."""
    cfg = quality_config("qmanifest", {"name": "manifest", "params": {}}, **(extra or {}))
    p = Project.prepare(parse_config(cfg), str(root / "manifest"))
    crowd = Crowd(p, [f"honest-{k}" for k in range(1, n_honest + 1)], "spammer-9")
    turn = 0
    for r in range(ROUNDS):
        engine.run_round(p, r, until="dispatch")
        batch = p.batch_id(r)
        lines = []
        for raw in p.vendor.exchange.read_bytes(f"requests/{batch}.manifest.jsonl").splitlines():
            task = json.loads(raw)
            barred = set(task.get("exclude-workers", [])) | set(task.get("blocked-workers", []))
            if crowd.spammer in task.get("blocked-workers", []):
                lines.append((task, crowd.spammer))  # ignores the block list
            allowed = [w for w in crowd.workers if w not in barred]
            for k in range(task["replicas"]):
                lines.append((task, allowed[(turn + k) % len(allowed)]))
            turn += 1
        body = b"".join(json.dumps({
            "item-id": t["item-id"], "batch-id": t["batch-id"], "worker-id": w, "label": crowd.answer(t["item-id"], w),
            "started-at": (T0 + timedelta(minutes=n)).isoformat(),
            "submitted-at": (T0 + timedelta(minutes=n, seconds=SECONDS)).isoformat()}).encode() + b"\n"
            for n, (t, w) in enumerate(lines))
        p.vendor.exchange.write_bytes(f"results/{batch}.jsonl", body, create_only=True)
        assert engine.run_round(p, r) is None or r == ROUNDS - 1
    finish(p)
    rejects = [json.loads(x) for k in p.vendor.exchange.list("rejects/") for x in p.vendor.exchange.read_bytes(k).splitlines()]
    spam_rejects = [x for x in rejects if f"worker {crowd.spammer!r} was blocked" in x["reason"]]
    return report(p, "manifest", crowd.spammer, spammer_lines_rejected=len(spam_rejects),
                  reject_reason=spam_rejects[0]["reason"] if spam_rejects else None)


# -- Label Studio ---------------------------------------------------------------------------------
def sign_up(base: str, email: str, password: str) -> tuple[int, str]:
    """An annotator signs up through Label Studio's own page; (user id, their API token)."""
    import httpx

    with httpx.Client(base_url=base, follow_redirects=True, timeout=60) as c:
        c.get("/user/signup/")
        c.post("/user/signup/", data={"email": email, "password": password, "csrfmiddlewaretoken": c.cookies["csrftoken"]},
               headers={"Referer": f"{base}/user/signup/"})
        who = c.get("/api/current-user/whoami").json()
        token = c.get("/api/current-user/token").json()["token"]
    return int(who["id"]), token


def run_label_studio(root: Path, url: str, admin_token: str, extra: dict[str, Any] | None = None,
                     n_honest: int = 3) -> dict[str, Any]:
    """Three rounds on a real Label Studio server; annotators work from the labeling stream."""
    import os

    import httpx

    os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"] = url, admin_token
    # one sign-up per e-mail, and one Label Studio project per run, on a server tests share
    tag = re.sub(r"[^a-z0-9]", "", root.name.lower())[-12:]
    cfg = quality_config("qls", {"name": "label_studio", "params": {"block_removes_membership": True,
                                                                    "title": f"crowdloop qls {tag}"}}, **(extra or {}))
    p = Project.prepare(parse_config(cfg), str(root / "label_studio"))
    users = {f"ann{k}-{tag}@example.com": sign_up(url, f"ann{k}-{tag}@example.com", f"Annotator-{k}-pass!")
             for k in range(n_honest + 1)}
    ids = {f"ls-user-{uid}": token for uid, token in users.values()}
    workers = list(ids)
    crowd = Crowd(p, workers[1:], workers[0])
    refused: list[int] = []
    for r in range(ROUNDS):
        engine.run_round(p, r, until="dispatch")
        pid = json.loads(p.vendor.store.read_bytes("project.json"))["id"]
        active = list(crowd.workers)
        while active:
            for worker in list(active):
                headers = {"Authorization": f"Token {ids[worker]}"}
                nxt = httpx.get(f"{url}/api/projects/{pid}/next/", headers=headers, timeout=60)
                if nxt.status_code == 403:
                    refused.append(r)  # no longer a member: no task reaches them
                if nxt.status_code != 200:
                    active.remove(worker)
                    continue
                task = nxt.json()
                item = task["data"]["crowdloop_item"]
                result = [{"from_name": "label", "to_name": "item", "type": "choices",
                           "value": {"choices": [crowd.answer(item, worker)]}}]
                done = httpx.post(f"{url}/api/tasks/{task['id']}/annotations/", headers=headers, timeout=60,
                                  json={"result": result, "lead_time": SECONDS})
                done.raise_for_status()
        engine.run_round(p, r)
    finish(p)
    return report(p, "label_studio", crowd.spammer, spammer_refused_by_the_stream_in_rounds=sorted(set(refused)))


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"mturk": run_mturk, "local": run_local, "manifest": run_manifest,
                                                     "label_studio": run_label_studio}
