"""A fake of Prolific's REST API: an HTTP server on 127.0.0.1 (random free port) for the tests.

It implements the endpoints the ``prolific`` vendor uses, validates request bodies against the
documented fields (a missing or unknown field, or a wrong type, is a 400 as Prolific answers),
enforces what Prolific enforces (token auth, the minimum reward per hour, one submission per
participant per study, places, the block list filters, rejection messages of 100+ characters,
the pay call that is *not* idempotent), and can fail like the real service: ``inject`` makes the
next matching request answer 429 or 500 without acting, or act and then hold the answer past
the client's timeout (``timeout_after``).

Participants are played by the tests through ``start`` (take a place: what Prolific does when a
participant opens the study) and ``complete`` (come back with a completion code). Its own
accounting (``accounting``) is what the ledger is compared with: approved rewards, paid bonuses
and the service fee computed from them by Prolific's published rule.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FEE_RATE = 1 / 3  # Prolific's published service fee on rewards and bonuses (docs/prolific.md)
MIN_CENTS_PER_HOUR = {"USD": 800, "GBP": 600}
PLACEHOLDERS = ("{%PROLIFIC_PID%}", "{%STUDY_ID%}", "{%SESSION_ID%}")
REJECTION_CATEGORIES = {"TOO_QUICKLY", "TOO_SLOWLY", "FAILED_INSTRUCTIONS", "INCOMP_LONGITUDINAL", "FAILED_CHECK",
                        "LOW_EFFORT", "MALINGERING", "NO_CODE", "BAD_CODE", "NO_DATA", "UNSUPP_DEVICE", "OTHER"}

STUDY_REQUIRED = {"name": str, "description": str, "external_study_url": str, "prolific_id_option": str,
                  "completion_codes": list, "total_available_places": int, "estimated_completion_time": int,
                  "reward": int}
STUDY_OPTIONAL = {"internal_name": str, "device_compatibility": list, "filters": list, "project": str,
                  "peripheral_requirements": list}


class ApiError(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def check_body(body: Any, required: dict[str, type], optional: dict[str, type] | None = None) -> dict[str, Any]:
    """400 for a body that is not an object, misses a field, has an unknown one or a wrong type."""
    if not isinstance(body, dict):
        raise ApiError(400, {"error": "expected a JSON object"})
    allowed = {**required, **(optional or {})}
    missing = sorted(set(required) - set(body))
    unknown = sorted(set(body) - set(allowed))
    if missing or unknown:
        raise ApiError(400, {"error": "invalid fields", "missing": missing, "unknown": unknown})
    for name, kind in allowed.items():
        if name in body and (not isinstance(body[name], kind) or (kind is int and isinstance(body[name], bool))):
            raise ApiError(400, {"error": f"{name}: expected {kind.__name__}"})
    return body


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    kind: str  # "429", "500" or "timeout_after"
    times: int


class FakeProlific:
    """``with FakeProlific() as api: api.url``; the state is in plain dicts, guarded by one lock."""

    def __init__(self, *, token: str = "test-token", currency: str = "USD", hold_s: float = 4.0) -> None:
        self.token, self.currency, self.hold_s = token, currency, hold_s
        self.studies: dict[str, dict[str, Any]] = {}
        self.submissions: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.bulks: dict[str, dict[str, Any]] = {}
        self.payments: list[dict[str, Any]] = []  # one row per participant per pay call
        self.calls: list[str] = []
        self.faults: list[Fault] = []
        self.injected: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, out, hold = outer.handle(method, urlsplit(self.path).path, raw, self.headers.get("Authorization"))
                if hold:
                    outer._stopping.wait(outer.hold_s)  # acted; the client gives up before this answer
                data = json.dumps(out).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-prolific", daemon=True)

    def __enter__(self) -> FakeProlific:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _id(self) -> str:
        return f"{next(self._ids):024x}"

    # -- faults ----------------------------------------------------------------------------------
    def inject(self, method: str, path: str, kind: str, *, times: int = 1) -> None:
        """The next ``times`` requests ``method`` matching regex ``path`` fail as ``kind``."""
        if kind not in ("429", "500", "timeout_after"):
            raise ValueError(f"kind={kind!r}: expected 429, 500 or timeout_after")
        with self._lock:
            self.faults.append(Fault(method, re.compile(path), kind, times))

    def _fault_for(self, method: str, path: str) -> str | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.path.search(path):
                fault.times -= 1
                self.injected.append(f"{fault.kind} {method} {path}")
                return fault.kind
        return None

    # -- dispatch ----------------------------------------------------------------------------------
    def handle(self, method: str, path: str, raw: bytes, auth: str | None) -> tuple[int, Any, bool]:
        if auth != f"Token {self.token}":
            return 401, {"error": "Authentication credentials were not provided or are invalid."}, False
        with self._lock:
            self.calls.append(f"{method} {path}")
            fault = self._fault_for(method, path)
            if fault == "429":
                return 429, {"error": "Request was throttled."}, False
            if fault == "500":
                return 500, {"error": "Internal server error"}, False
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return 400, {"error": "malformed JSON"}, False
            try:
                status, out = self._route(method, path, body)
            except ApiError as exc:
                return exc.status, exc.detail, False
        return status, out, fault == "timeout_after"

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        p = path.rstrip("/").split("/")[3:]  # after /api/v1
        match method, p:
            case "GET", ["studies"]:
                return 200, {"results": [self._public(s) for s in self.studies.values()]}
            case "POST", ["studies"]:
                return 201, self._public(self._create_study(body))
            case "GET", ["studies", sid]:
                return 200, self._public(self._study(sid))
            case "POST", ["studies", sid, "transition"]:
                return 200, self._public(self._transition_study(sid, body))
            case "GET", ["studies", sid, "submissions"]:
                self._study(sid)
                return 200, {"results": [dict(s) for s in self.submissions.values() if s["study_id"] == sid]}
            case "GET", ["submissions", sub]:
                return 200, dict(self._submission(sub))
            case "POST", ["submissions", "bonus-payments"]:
                return 201, self._set_up_bonus(body)
            case "POST", ["submissions", sub, "transition"]:
                return 200, dict(self._transition_submission(sub, body))
            case "POST", ["bulk-bonus-payments", bulk, "pay"]:
                return 202, self._pay(bulk, body)
            case "GET", ["participant-groups"]:
                return 200, {"results": [self._group_public(g) for g in self.groups.values()]}
            case "POST", ["participant-groups"]:
                check_body(body, {"name": str}, {"workspace_id": str, "project_id": str, "description": str})
                gid = self._id()
                self.groups[gid] = {"id": gid, "name": body["name"], "participant_ids": set()}
                return 201, self._group_public(self.groups[gid])
            case "POST", ["participant-groups", gid, "participants"]:
                check_body(body, {"participant_ids": list})
                group = self.groups.get(gid)
                if group is None:
                    raise ApiError(404, {"error": "participant group not found"})
                group["participant_ids"].update(str(x) for x in body["participant_ids"])
                return 200, self._group_public(group)
        raise ApiError(404, {"error": f"no route {method} {path}"})

    # -- studies ---------------------------------------------------------------------------------
    def _create_study(self, body: Any) -> dict[str, Any]:
        check_body(body, STUDY_REQUIRED, STUDY_OPTIONAL)
        url = body["external_study_url"]
        if not url.startswith(("http://", "https://")) or any(ph not in url for ph in PLACEHOLDERS):
            raise ApiError(400, {"external_study_url": "expected an http(s) URL carrying the Prolific URL parameters"})
        if body["prolific_id_option"] != "url_parameters":
            raise ApiError(400, {"prolific_id_option": "expected url_parameters"})
        codes = body["completion_codes"]
        for code in codes:
            check_body(code, {"code": str, "code_type": str}, {"actions": list})
        if not codes:
            raise ApiError(400, {"completion_codes": "at least one code"})
        if body["total_available_places"] < 1 or body["estimated_completion_time"] < 1 or body["reward"] < 1:
            raise ApiError(400, {"error": "places, estimated_completion_time (minutes) and reward (cents) must be positive"})
        rate = body["reward"] * 60 / body["estimated_completion_time"]
        if rate < MIN_CENTS_PER_HOUR[self.currency]:
            raise ApiError(400, {"reward": f"reward per hour {rate / 100:.2f} is below the minimum "
                                           f"{MIN_CENTS_PER_HOUR[self.currency] / 100:.2f}"})
        for f in body.get("filters", []):
            check_body(f, {"filter_id": str, "selected_values": list})
            if f["filter_id"] == "participant_group_blocklist" and any(g not in self.groups for g in f["selected_values"]):
                raise ApiError(400, {"filters": "unknown participant group"})
        sid = self._id()
        self.studies[sid] = {**body, "id": sid, "status": "UNPUBLISHED", "created_at": _now()}
        return self.studies[sid]

    def _study(self, sid: str) -> dict[str, Any]:
        study = self.studies.get(sid)
        if study is None:
            raise ApiError(404, {"error": "study not found"})
        return study

    def _transition_study(self, sid: str, body: Any) -> dict[str, Any]:
        check_body(body, {"action": str})
        study = self._study(sid)
        if body["action"] == "STOP" and study["status"] in ("ACTIVE", "PAUSED"):
            # final, as Prolific's STOP: no new places; participants already in may still come back
            waiting = any(s["study_id"] == sid and s["status"] in ("ACTIVE", "AWAITING REVIEW")
                          for s in self.submissions.values())
            study["status"] = "AWAITING REVIEW" if waiting else "COMPLETED"
            study["stopped"] = True
            return study
        if body["action"] != "PUBLISH" or study["status"] != "UNPUBLISHED":
            raise ApiError(400, {"error": f"cannot {body['action']} a study that is {study['status']}"})
        study["status"] = "ACTIVE"
        return study

    @staticmethod
    def _public(study: dict[str, Any]) -> dict[str, Any]:
        return dict(study)

    # -- submissions -------------------------------------------------------------------------------
    def _submission(self, sub: str) -> dict[str, Any]:
        found = self.submissions.get(sub)
        if found is None:
            raise ApiError(404, {"error": "submission not found"})
        return found

    def _transition_submission(self, sub: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("action") not in ("APPROVE", "REJECT"):
            raise ApiError(400, {"action": "expected APPROVE or REJECT"})
        if body["action"] == "APPROVE":
            check_body(body, {"action": str})
        else:
            check_body(body, {"action": str, "message": str, "rejection_category": str})
            if len(body["message"]) < 100 or body["rejection_category"] not in REJECTION_CATEGORIES:
                raise ApiError(400, {"message": "at least 100 characters and a known rejection_category"})
        found = self._submission(sub)
        if found["status"] != "AWAITING REVIEW":
            raise ApiError(400, {"error": f"submission is {found['status']}"})
        found["status"] = "APPROVED" if body["action"] == "APPROVE" else "REJECTED"
        if body["action"] == "REJECT":
            found["rejection"] = {"message": body["message"], "category": body["rejection_category"]}
        return found

    def _set_up_bonus(self, body: Any) -> dict[str, Any]:
        check_body(body, {"study_id": str, "csv_bonuses": str})
        study = self._study(body["study_id"])
        rows: list[tuple[str, int]] = []
        for line in body["csv_bonuses"].splitlines():
            if not line.strip():
                continue
            pid, sep, amount = line.partition(",")
            if not sep or not re.fullmatch(r"\d+\.\d{2}", amount.strip()):
                raise ApiError(400, {"csv_bonuses": f"bad line {line!r}: expected participant_id,amount"})
            if not any(s["participant_id"] == pid and s["study_id"] == study["id"] for s in self.submissions.values()):
                raise ApiError(400, {"csv_bonuses": f"{pid} took no part in study {study['id']}"})
            rows.append((pid, round(float(amount) * 100)))
        if not rows:
            raise ApiError(400, {"csv_bonuses": "no bonuses"})
        bid = self._id()
        amount = sum(c for _, c in rows)
        self.bulks[bid] = {"id": bid, "study": study["id"], "rows": rows, "amount": amount}
        return {"id": bid, "study": study["id"], "amount": amount, "fees": round(amount * FEE_RATE),
                "total_amount": amount + round(amount * FEE_RATE)}

    def _pay(self, bid: str, body: Any) -> dict[str, Any]:
        if body not in (None, {}):
            check_body(body, {})
        bulk = self.bulks.get(bid)
        if bulk is None:
            raise ApiError(404, {"error": "bulk bonus payment not found"})
        for pid, cents in bulk["rows"]:  # not idempotent, like the real endpoint: every call pays
            self.payments.append({"bulk_id": bid, "study_id": bulk["study"], "participant_id": pid, "cents": cents})
            for s in self.submissions.values():
                if s["participant_id"] == pid and s["study_id"] == bulk["study"]:
                    s["bonus_payments"].append(cents)
        return {}

    @staticmethod
    def _group_public(group: dict[str, Any]) -> dict[str, Any]:
        return {"id": group["id"], "name": group["name"], "participant_count": len(group["participant_ids"])}

    # -- participants (played by the tests) --------------------------------------------------------
    def eligible(self, study_id: str, participant: str) -> bool:
        with self._lock:
            return self._refusal(study_id, participant) is None

    def _refusal(self, study_id: str, participant: str) -> str | None:
        study = self.studies.get(study_id)
        if study is None or study["status"] != "ACTIVE":
            return "study not active"
        mine = [s for s in self.submissions.values() if s["study_id"] == study_id]
        if any(s["participant_id"] == participant for s in mine):
            return "took part already"
        if sum(s["status"] not in ("RETURNED", "TIMED-OUT") for s in mine) >= study["total_available_places"]:
            return "no places left"
        for f in study.get("filters", []):
            if f["filter_id"] == "custom_blocklist" and participant in f["selected_values"]:
                return "on the study's block list"
            if f["filter_id"] == "participant_group_blocklist" and any(
                    participant in self.groups[g]["participant_ids"] for g in f["selected_values"]):
                return "in a blocked participant group"
        return None

    def start(self, study_id: str, participant: str) -> str | None:
        """The participant takes a place: a new ACTIVE submission (its id is the session id), or None."""
        with self._lock:
            if self._refusal(study_id, participant) is not None:
                return None
            sub = self._id()
            self.submissions[sub] = {"id": sub, "study_id": study_id, "participant_id": participant, "status": "ACTIVE",
                                     "started_at": _now(), "completed_at": None, "study_code": None,
                                     "bonus_payments": []}
            return sub

    def entry_url(self, session: str) -> str:
        """The study URL with Prolific's parameters filled in, as the participant's browser opens it."""
        with self._lock:
            sub = self.submissions[session]
            url = self.studies[sub["study_id"]]["external_study_url"]
        return (url.replace("{%PROLIFIC_PID%}", sub["participant_id"]).replace("{%STUDY_ID%}", sub["study_id"])
                .replace("{%SESSION_ID%}", session))

    def complete(self, session: str, code: str) -> None:
        """The participant comes back to Prolific with ``code``."""
        with self._lock:
            sub = self.submissions[session]
            sub.update(status="AWAITING REVIEW", study_code=code, completed_at=_now())

    def give_back(self, session: str) -> None:
        """The participant returns the place without finishing (it is offered again)."""
        with self._lock:
            self.submissions[session]["status"] = "RETURNED"

    def auto_approve(self) -> list[str]:
        """21 days pass: Prolific approves every submission still awaiting review (and pays it)."""
        with self._lock:
            waiting = [s for s in self.submissions.values() if s["status"] == "AWAITING REVIEW"]
            for s in waiting:
                s.update(status="APPROVED", auto_approved=True)
            return [s["id"] for s in waiting]

    def open_studies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self.studies.values() if s["status"] == "ACTIVE"]

    # -- accounting --------------------------------------------------------------------------------
    def accounting(self) -> dict[str, Any]:
        """What Prolific charged: approved rewards, paid bonuses, the fee on both (to the cent)."""
        with self._lock:
            names = [s.get("internal_name") for s in self.studies.values()]
            approved = [s for s in self.submissions.values() if s["status"] == "APPROVED"]
            rewards = sum(self.studies[s["study_id"]]["reward"] for s in approved) / 100
            bonuses = sum(p["cents"] for p in self.payments) / 100
            per_participant_study: dict[tuple[str, str], int] = {}
            for p in self.payments:
                key = (p["participant_id"], p["study_id"])
                per_participant_study[key] = per_participant_study.get(key, 0) + 1
            fee_cents = sum(round(self.studies[s["study_id"]]["reward"] * FEE_RATE) for s in approved)
            fee_cents += sum(round(p["cents"] * FEE_RATE) for p in self.payments)  # a fee on every payment
            fees = fee_cents / 100
            return {"studies": len(self.studies), "duplicate_studies": len(names) - len(set(names)),
                    "places": sum(s["total_available_places"] for s in self.studies.values()),
                    "approved": len(approved), "rejected": sum(s["status"] == "REJECTED" for s in self.submissions.values()),
                    "rewards": round(rewards, 2), "bonuses": round(bonuses, 2), "fees": fees,
                    "total": round(rewards + bonuses + fees, 2), "bulk_pay_calls": len({p["bulk_id"] for p in self.payments}),
                    "max_bonuses_per_participant_study": max(per_participant_study.values(), default=0)}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def participant_ids(n: int, *, start: int = 0xC0FFEE000) -> list[str]:
    """``n`` Prolific-style participant ids (24 hex digits), distinct from the fake's own ids."""
    return [f"{start + i:024x}" for i in range(n)]


class WorkClock:
    """A desk clock the tests move forward: an answer takes the seconds the test says it took.

    It starts at the wall clock (the desk compares it with batch deadlines set at submit)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def take_part(api: FakeProlific, desk: Any, study_id: str, participant: str, answer: Any,
              *, clock: WorkClock | None = None, seconds: float = 0.0) -> dict[str, Any] | None:
    """One participant through the desk (no browser): take a place, enter by the study's link
    parameters, answer the item shown, come back with the code. None: Prolific gave no place."""
    session = api.start(study_id, participant)
    if session is None:
        return None
    token = desk.admit(participant, study_id, session)
    if token is None:
        raise AssertionError(f"the desk refused participant {participant} with a valid session {session}")
    shown = desk.next_task(participant)
    if shown is None:  # nothing left for them (e.g. every item excludes them): they give the place back
        api.give_back(session)
        return {"session": session, "item": None}
    task = shown[0]
    if clock is not None:
        clock.advance(seconds)
    desk.answer(participant, task.batch_id, task.item_id, answer(task.item_id, participant))
    code, _ = desk.completion(participant)
    api.complete(session, code)
    return {"session": session, "item": task.item_id}
