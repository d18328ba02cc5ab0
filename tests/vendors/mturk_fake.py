"""An in-memory Mechanical Turk behind boto3's real ``mturk`` client.

MTurk cannot be reached from tests and moto has no MTurk backend. The fake answers at
botocore's ``before-send`` event, i.e. after the real client has validated the parameters
against the MTurk service model and serialized them, and its responses are parsed by the
same model; retries (throttling) run through botocore's real retry handler.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape

import boto3
from botocore.awsrequest import AWSResponse


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


class SimulatedCrash(BaseException):
    """Raised by the fake after a side effect, like a process dying mid-call."""


def answer_xml(answers: dict[str, str]) -> str:
    parts = "".join(
        f"<Answer><QuestionIdentifier>{escape(k)}</QuestionIdentifier><FreeText>{escape(v)}</FreeText></Answer>"
        for k, v in answers.items()
    )
    return ('<?xml version="1.0" encoding="UTF-8"?><QuestionFormAnswers xmlns="http://mechanicalturk.amazonaws.com/'
            f'AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd">{parts}</QuestionFormAnswers>')


def items_in_question(question: str) -> list[str]:
    """Item ids from the hidden inputs of a crowdloop HTMLQuestion (as a worker's browser posts them)."""
    found = re.findall(r'<input type="hidden" name="item-(\d+)" value="([^"]*)">', question)
    return [html.unescape(v) for _, v in sorted(found, key=lambda kv: int(kv[0]))]


class FakeMTurk:
    """The MTurk operations crowdloop uses, with tokens, pagination and assignments.

    Workers: with ``answer(item, replica)`` every HIT is answered at once by ``AWORKER000``...
    (one per replica). With a ``crowd`` (worker ids) ``answer(item, worker)`` plays those workers
    as MTurk would let them: a slot on offer goes to the next worker in turn who is not blocked
    (``CreateWorkerBlock``) and never had an assignment of that HIT; workers in ``abandoners``
    accept and abandon, and the HIT then expires short (the case ``poll`` must re-post).
    """

    def __init__(self, *, answer: Callable[[str, Any], str] | None = None, duration_s: float = 12.0,
                 duplicate_message_has_id: bool = True, crowd: list[str] | None = None) -> None:
        self.hits: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.bonus_tokens: set[str] = set()
        self.assignments: dict[str, list[dict[str, Any]]] = {}
        self.bonuses: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.throttle: dict[str, int] = {}
        self.crash_after: dict[str, int] = {}  # operation -> die after its n-th call from now (1 = the next)
        self.answer = answer  # (item_id, replica) -> label; None: no worker answers automatically
        self.duration_s = duration_s
        self.duplicate_message_has_id = duplicate_message_has_id
        self.now = 1_700_000_000.0
        self._n = 0
        self.crowd = list(crowd) if crowd is not None else None
        self.blocked: dict[str, str] = {}  # worker -> reason (CreateWorkerBlock)
        self.abandoners: dict[str, int] = {}  # worker -> how many HITs they accept and abandon
        self.abandoned: list[tuple[str, str]] = []  # (HIT, worker)
        self.extension_tokens: set[str] = set()
        self.assigned_at_call: dict[str, int] = {}  # assignment id -> how many calls had been made then
        self.balance = "10000.00"  # GetAccountBalance's AvailableBalance (the sandbox always says 10000.00)
        self._turn = 0

    # -- wiring -------------------------------------------------------------------------
    def session(self) -> boto3.session.Session:
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name="us-east-1")
        session.events.register("before-send.mturk", self._handle)
        return session

    def _handle(self, request, **_: Any) -> AWSResponse:
        op = request.headers["X-Amz-Target"].decode().split(".")[-1] if isinstance(
            request.headers["X-Amz-Target"], bytes) else request.headers["X-Amz-Target"].split(".")[-1]
        body = json.loads(request.body or b"{}")
        self.calls.append(op)
        self.requests.append((op, body))
        if self.throttle.get(op, 0) > 0:
            self.throttle[op] -= 1
            return self._error(400, "ThrottlingException", "Rate exceeded")
        status, out = self.respond(op, body)
        if op in self.crash_after:
            self.crash_after[op] -= 1
            if self.crash_after[op] == 0:
                del self.crash_after[op]
                raise SimulatedCrash(f"process died after {op}")
        return AWSResponse(request.url, status, {"x-amzn-requestid": f"req-{len(self.calls)}"},
                           _Raw(json.dumps(out).encode()))

    def respond(self, op: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One MTurk operation: (HTTP status, JSON body) as the JSON 1.1 protocol answers."""
        try:
            return 200, getattr(self, f"op_{op}")(body)
        except _Fail as fail:
            return fail.status, {"__type": fail.code, "Message": fail.message, **fail.extra}

    @staticmethod
    def _error(status: int, code: str, message: str) -> AWSResponse:
        body = json.dumps({"__type": code, "Message": message}).encode()
        return AWSResponse("https://fake", status, {}, _Raw(body))

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:0{30 - len(prefix)}d}"

    # -- operations ---------------------------------------------------------------------
    def op_GetAccountBalance(self, body: dict) -> dict:
        return {"AvailableBalance": self.balance}

    def op_CreateHIT(self, body: dict) -> dict:
        token = body.get("UniqueRequestToken")
        if token and token in self.tokens and self.now - self.tokens[token][1] < 24 * 3600:
            hit_id = self.tokens[token][0]
            message = (f'The HIT with ID "{hit_id}" already exists. (1700000000000)' if self.duplicate_message_has_id
                       else f'The idempotency token "{token}" has already been processed. (1700000000000)')
            raise _Fail(400, "RequestError", message, {"TurkErrorCode": "AWS.MechanicalTurk.HitAlreadyExists"})
        hit_id = self._id("3HIT")
        hit = {"HITId": hit_id, "HITTypeId": "3TYPE" + "0" * 25, "Title": body["Title"], "Description": body["Description"],
               "Question": body["Question"], "Keywords": body.get("Keywords", ""), "HITStatus": "Assignable",
               "MaxAssignments": body["MaxAssignments"], "Reward": body["Reward"], "CreationTime": self.now,
               "Expiration": self.now + body["LifetimeInSeconds"], "RequesterAnnotation": body.get("RequesterAnnotation", ""),
               "QualificationRequirements": body.get("QualificationRequirements", []),
               "AutoApprovalDelayInSeconds": body["AutoApprovalDelayInSeconds"],
               "AssignmentDurationInSeconds": body["AssignmentDurationInSeconds"]}
        self.hits[hit_id] = hit
        if token:
            self.tokens[token] = (hit_id, self.now)
        self.assignments[hit_id] = []
        if self.answer is not None and self.crowd is None:
            for replica in range(body["MaxAssignments"]):
                self.work(hit_id, {f"label-{k}": self.answer(item, replica)
                                   for k, item in enumerate(items_in_question(body["Question"]))},
                          worker=f"AWORKER{replica:03d}")
        self._fill(hit_id)
        return {"HIT": self._public(hit)}

    def _public(self, hit: dict) -> dict:
        """A HIT as MTurk returns it, with its assignment counts."""
        done = sum(1 for a in self.assignments[hit["HITId"]] if a["AssignmentStatus"] in ("Submitted", "Approved", "Rejected"))
        available = hit["MaxAssignments"] - done if hit["HITStatus"] == "Assignable" else 0
        return {**hit, "NumberOfAssignmentsCompleted": done, "NumberOfAssignmentsPending": 0,
                "NumberOfAssignmentsAvailable": max(available, 0)}

    def _fill(self, hit_id: str) -> None:
        """Workers of the crowd take the HIT's open slots (see the class docstring)."""
        if self.crowd is None or self.answer is None:
            return
        hit = self.hits[hit_id]
        items = items_in_question(hit["Question"])
        while hit["HITStatus"] == "Assignable":
            had = {a["WorkerId"] for a in self.assignments[hit_id]} | {w for h, w in self.abandoned if h == hit_id}
            open_slots = hit["MaxAssignments"] - len(self.assignments[hit_id])
            eligible = [w for w in self.crowd if w not in had and w not in self.blocked]
            if open_slots <= 0 or not eligible:
                return
            worker = min(eligible, key=lambda w: (self.crowd.index(w) - self._turn) % len(self.crowd))
            self._turn = (self.crowd.index(worker) + 1) % len(self.crowd)
            if self.abandoners.get(worker, 0) > 0:  # accepts, keeps it past the HIT's expiry, abandons
                self.abandoners[worker] -= 1
                self.abandoned.append((hit_id, worker))
                hit["HITStatus"] = "Reviewable"
                hit["Expiration"] = self.now
                return
            self.work(hit_id, {f"label-{k}": self.answer(item, worker) for k, item in enumerate(items)}, worker=worker)

    def op_ListHITs(self, body: dict) -> dict:
        return self._page(list(self.hits.values()), body, "HITs")

    def op_GetHIT(self, body: dict) -> dict:
        return {"HIT": self._public(self._hit(body["HITId"]))}

    def op_CreateWorkerBlock(self, body: dict) -> dict:
        self.blocked[body["WorkerId"]] = body["Reason"]
        return {}

    def op_CreateAdditionalAssignmentsForHIT(self, body: dict) -> dict:
        hit = self._hit(body["HITId"])
        token = body.get("UniqueRequestToken")
        if token and token in self.extension_tokens:
            raise _Fail(400, "RequestError", f'The idempotency token "{token}" has already been processed.')
        total = hit["MaxAssignments"] + body["NumberOfAdditionalAssignments"]
        if hit["MaxAssignments"] < 10 <= total:
            raise _Fail(400, "RequestError", "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease")
        if token:
            self.extension_tokens.add(token)
        hit["MaxAssignments"] = total
        self._fill(body["HITId"])
        return {}

    def op_ListAssignmentsForHIT(self, body: dict) -> dict:
        self._hit(body["HITId"])
        statuses = set(body.get("AssignmentStatuses") or ["Submitted", "Approved", "Rejected"])
        rows = [a for a in self.assignments[body["HITId"]] if a["AssignmentStatus"] in statuses]
        return self._page(rows, body, "Assignments")

    def op_GetAssignment(self, body: dict) -> dict:
        a = self._assignment(body["AssignmentId"])
        return {"Assignment": a, "HIT": self.hits[a["HITId"]]}

    def op_ApproveAssignment(self, body: dict) -> dict:
        return self._decide(body["AssignmentId"], "Approved", body.get("RequesterFeedback"))

    def op_RejectAssignment(self, body: dict) -> dict:
        return self._decide(body["AssignmentId"], "Rejected", body["RequesterFeedback"])

    def op_SendBonus(self, body: dict) -> dict:
        token = body.get("UniqueRequestToken")
        if token in self.bonus_tokens:
            raise _Fail(400, "RequestError", f'The idempotency token "{token}" has already been processed.')
        a = self._assignment(body["AssignmentId"])
        if a["WorkerId"] != body["WorkerId"]:
            raise _Fail(400, "RequestError", "worker does not match the assignment")
        self.bonus_tokens.add(token)
        self.bonuses.append(body)
        return {}

    def op_UpdateExpirationForHIT(self, body: dict) -> dict:
        hit = self._hit(body["HITId"])
        hit["Expiration"] = body["ExpireAt"]
        if body["ExpireAt"] <= self.now:
            hit["HITStatus"] = "Unassignable"
        elif hit["HITStatus"] in ("Reviewable", "Unassignable"):
            hit["HITStatus"] = "Assignable"  # listed again: open slots go back on offer
            self._fill(body["HITId"])
        return {}

    # -- test helpers -------------------------------------------------------------------
    def work(self, hit_id: str, answers: dict[str, str] | str, *, worker: str | None = None) -> str:
        """A worker submits an assignment: answers as a dict, or raw (possibly broken) XML."""
        hit = self._hit(hit_id)
        items = items_in_question(hit["Question"])
        if isinstance(answers, dict):
            answers = {**{f"item-{k}": item for k, item in enumerate(items)}, **answers}
            answers = answer_xml(answers)
        aid = self._id("3ASG")
        self.assigned_at_call[aid] = len(self.calls)
        n = len(self.assignments[hit_id])
        self.assignments[hit_id].append({
            "AssignmentId": aid, "WorkerId": worker or f"AWORKER{n:03d}", "HITId": hit_id, "AssignmentStatus": "Submitted",
            "AutoApprovalTime": self.now + 86400, "AcceptTime": self.now, "SubmitTime": self.now + self.duration_s,
            "Answer": answers,
        })
        return aid

    def _page(self, rows: list[dict], body: dict, name: str) -> dict:
        start = int(body.get("NextToken") or 0)
        size = body.get("MaxResults", 10)
        page = rows[start:start + size]
        out: dict[str, Any] = {name: page, "NumResults": len(page)}
        if start + size < len(rows):
            out["NextToken"] = str(start + size)
        return out

    def _hit(self, hit_id: str) -> dict:
        if hit_id not in self.hits:
            raise _Fail(400, "RequestError", f"Hit {hit_id} does not exist. (1700000000000)")
        return self.hits[hit_id]

    def _assignment(self, aid: str) -> dict:
        for rows in self.assignments.values():
            for a in rows:
                if a["AssignmentId"] == aid:
                    return a
        raise _Fail(400, "RequestError", f"Assignment {aid} does not exist.")

    def _decide(self, aid: str, status: str, feedback: str | None) -> dict:
        a = self._assignment(aid)
        if a["AssignmentStatus"] != "Submitted":
            raise _Fail(400, "RequestError", "This operation can be called with a status of: Submitted (1700000000000)")
        a["AssignmentStatus"] = status
        if feedback:
            a["RequesterFeedback"] = feedback
        a["ApprovalTime" if status == "Approved" else "RejectionTime"] = self.now
        return {}


class _Fail(Exception):
    def __init__(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra or {}
