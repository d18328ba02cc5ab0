"""Prolific as an annotation vendor: participants recruited on Prolific label in crowdloop's own app.

Install with ``pip install 'crowdloop[prolific]'`` (httpx). The API token comes from the secret
block ``vendor.params.token_secret`` names, else from ``PROLIFIC_API_TOKEN``; never from the YAML,
never in a log line. Reference and assumptions about Prolific's API: ``docs/prolific.md``.

How a batch travels:

* ``submit`` creates one **study** per batch whose places are the batch's assignments (one
  place = one judgment of one item), pointing at the project's public annotation URL with
  Prolific's URL parameters (``{%PROLIFIC_PID%}``, ``{%STUDY_ID%}``, ``{%SESSION_ID%}``), then
  publishes it. The intent (a deterministic ``internal_name``, the body, a completion code) is
  written before the API is called and the study id after; a rerun that finds the intent alone
  looks the study up by its ``internal_name`` before creating anything, and a create that timed
  out is looked up the same way before it is tried again: a batch never gets a second study.
* The local app (``crowdloop annotate``) admits a participant through those parameters
  (``ProlificDesk.admit``): the study must be one of this vendor's open studies and the session
  an ACTIVE submission of that participant in that study (asked of Prolific). The participant
  then sees one item of that study's batch, answers it, and gets the completion code that sends
  them back to Prolific.
* ``poll`` matches the stored answers to the study's submissions that came back
  (``AWAITING REVIEW``); the assignment id is the submission id. The answer in the app is the
  work: a code that is not the study's is only logged.
* ``acknowledge`` approves submissions, or rejects them only with a reason (padded to Prolific's
  100 characters) and a category taken from the evidence; each decision is recorded once.
* Work after the deadline (``collect.timeout_s`` after the submit): the desk admits nobody within
  ``lease_s`` of the deadline (half the collect window if that is shorter), so an admitted
  participant has the time the desk holds their item; the loop's poll after the deadline
  **stops** the study (Prolific's ``STOP`` transition: final, no new places, unused funds go back)
  and closes the batch on the desk (no answer is taken after it) before it reads the
  submissions. A submission that comes back with the code only after that poll is never left to
  Prolific's auto-approval (21 days): ``settle_late`` (run by every later poll, and callable at
  the end of a run) approves it if the desk holds the participant's answer, given before the
  close, and records it under ``late/`` (counted in ``ledger()`` as ``late_paid``); its label does
  not reach the label log. A submission with no answer in the app is never a label: it waits
  under ``bad/`` for ``settle_late(unmatched="reject"|"approve")`` or a decision in Prolific's UI,
  and any decision, Prolific's auto-approval included, is booked by the next sweep.
* ``bonus`` pays top-ups through bulk bonus payments, once per token: the set-up is recorded,
  then the intent to pay, then the payment. Prolific's pay call is not idempotent, so a rerun
  that finds an intent to pay checks the submissions' bonus payments instead of paying again.

Money: the reward per place is what ``pay.hourly_wage`` pays for the study's estimated
completion time (whole minutes, at least one: Prolific's unit), never below the task's own
reward; a wage below Prolific's enforced minimum (``MIN_HOURLY_RATE``) is refused before
anything is sent. Prolific's service fee (``SERVICE_FEE_RATE`` of rewards and bonuses) is
``ProlificVendor.fee_for``, the project's one fee rule for this vendor.

Quality controls (capabilities ``blocks_workers``, ``excludes_workers_per_item``, ``pays``):
blocked participants are added to a participant group that every study of the project uses as a
blocklist filter (groups are live: a block reaches studies already published); the participants
who answered a re-asked item before are on the new study's ``custom_blocklist``, and the desk
never gives an item to someone its task excludes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from crowdloop.engine import hooks
from crowdloop.errors import ConfigError, CrowdloopError, RecordExistsError, TransientError, VendorError
from crowdloop.records import Annotation, Task, utcnow
from crowdloop.storage import read_json, store_identity, write_json, write_json_once
from crowdloop.vendor import (
    BLOCKS_WORKERS,
    EXCLUDES_WORKERS_PER_ITEM,
    PAYS,
    UNMATCHED_POLICIES,
    Ref,
    VendorContext,
    VendorPlan,
    block_of,
    parse_params,
    record_block,
)
from crowdloop.vendors.local import LocalParams, LocalVendor
from crowdloop.web import token_hash

log = logging.getLogger(__name__)

API_URL = "https://api.prolific.com"
TOKEN_ENV = "PROLIFIC_API_TOKEN"
# Prolific's enforced minimum reward per hour (docs/prolific.md, "Fair pay": £6.00 / $8.00; it
# recommends £9.00 / $12.00). Rewards are paid in the workspace's currency, GBP or USD.
MIN_HOURLY_RATE: dict[str, float] = {"GBP": 6.00, "USD": 8.00}
# Prolific's service fee on rewards and bonuses alike (docs/prolific.md, "Costs"): a third of each
# payment (33.33%), to the nearest cent; VAT not included (it applies by the researcher's country).
SERVICE_FEE_RATE = 1 / 3
REJECTION_MIN_CHARS = 100  # Prolific refuses a rejection message shorter than this
REJECTION_CATEGORIES = ("TOO_QUICKLY", "TOO_SLOWLY", "FAILED_INSTRUCTIONS", "INCOMP_LONGITUDINAL", "FAILED_CHECK",
                        "LOW_EFFORT", "MALINGERING", "NO_CODE", "BAD_CODE", "NO_DATA", "UNSUPP_DEVICE", "OTHER")
COMPLETE_URL = "https://app.prolific.com/submissions/complete?cc={code}"
ENTRY_QUERY = "PROLIFIC_PID={%PROLIFIC_PID%}&STUDY_ID={%STUDY_ID%}&SESSION_ID={%SESSION_ID%}"
PROLIFIC_ID = re.compile(r"^[0-9a-f]{24}$")  # participant, study and submission ids: 24 hex digits
RETURNED_WITH_CODE = ("AWAITING REVIEW", "APPROVED")
GAVE_UP = ("RETURNED", "TIMED-OUT")  # the place goes back on offer; the participant is not paid
# Prolific approves (and pays) a submission still awaiting review this long after it came back
# (docs/prolific.md, "Work after the deadline").
AUTO_APPROVAL_DAYS = 21
NO_ANSWER_MESSAGE = ("No answer from your Prolific ID was recorded in the labeling app for this study, so there is "
                     "no work to pay for. If you did answer, contact the researcher through Prolific.")
# Named points inside this vendor where the crash tests kill the process (``hooks.point``).
KILL_POINTS = ("prolific:study_intent", "prolific:study_created", "prolific:approved", "prolific:bonus_set_up",
               "prolific:bonus_paid")


class ProlificParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    app_url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
                         description="where participants reach `crowdloop annotate` (https, public); the study's URL")
    api_url: str = Field(API_URL, pattern=r"^https?://[^\s/]+(/\S*)?$", description="Prolific's API (a test double in tests)")
    name: str = Field("Classify short items", min_length=1, max_length=120, description="study title participants see")
    description: str = Field("You will see one item and choose the class that fits it best.", min_length=1,
                             max_length=5000)
    project_id: str | None = Field(None, min_length=1, max_length=64, description="Prolific project for the studies")
    workspace_id: str | None = Field(None, min_length=1, max_length=64, description="workspace of the block list group")
    token_secret: str | None = Field(None, min_length=1, max_length=128,
                                     description="secret block with the API token; default: the PROLIFIC_API_TOKEN variable")
    device_compatibility: list[str] = Field(default_factory=lambda: ["desktop", "tablet", "mobile"])
    lease_s: float = Field(600.0, gt=0, description="an item on a participant's screen is held for them this long")
    timeout_s: float = Field(30.0, gt=0, le=600, description="HTTP timeout per request")
    max_attempts: int = Field(6, ge=1, le=20, description="attempts per call on 429, 5xx and timeouts")
    backoff_s: float = Field(1.0, ge=0, le=60, description="first retry delay (doubles, capped at 30 s)")


# -- money (pure functions) ----------------------------------------------------------------------
def fee_for(reward: float, n_assignments_per_task: int = 1) -> float:
    """Prolific's service fee on one reward or one bonus payment, to the nearest cent (a third of
    a whole number of cents is never half a cent, so there is no tie to break)."""
    if reward < 0:
        raise ValueError(f"reward={reward}: expected >= 0")
    return round(round(reward * 100) * SERVICE_FEE_RATE) / 100


def check_wage(hourly_wage: float, currency: str, *, field: str = "pay.hourly_wage") -> None:
    """Refuse a target wage below Prolific's enforced minimum, or a currency Prolific does not pay in."""
    minimum = MIN_HOURLY_RATE.get(currency)
    if minimum is None:
        raise ConfigError(f"pay.currency={currency!r}: Prolific pays rewards in {' or '.join(MIN_HOURLY_RATE)}")
    if hourly_wage < minimum:
        raise ConfigError(f"{field}={hourly_wage:.2f} {currency}/h is below Prolific's enforced minimum of "
                          f"{minimum:.2f} {currency}/h (docs/prolific.md); raise it to at least {minimum:.2f}")


def place_terms(task_reward: float, hourly_wage: float) -> tuple[int, int]:
    """(estimated completion time in whole minutes, reward per place in cents) for one judgment.

    The task's reward was priced at ``hourly_wage`` for the expected seconds; Prolific counts time
    in whole minutes (at least one), and the place pays the wage for all of them, rounded up to
    the cent, so the rate Prolific checks (reward over estimated time) is never below the wage.
    """
    if task_reward <= 0 or hourly_wage <= 0:
        raise ValueError(f"task_reward={task_reward}, hourly_wage={hourly_wage}: expected positive numbers")
    seconds = task_reward * 3600.0 / hourly_wage
    minutes = max(1, math.ceil(round(seconds / 60.0, 6)))
    cents = max(round(task_reward * 100), math.ceil(round(hourly_wage * minutes / 60.0 * 100, 5)))
    return minutes, cents


def rejection_category(reason: str) -> str:
    """Prolific's category for a rejection, from the evidence its reason names."""
    text = reason.lower()
    if "known-answer" in text or "gold" in text or "attention" in text:
        return "FAILED_CHECK"
    if "too quickly" in text or "too fast" in text:
        return "TOO_QUICKLY"
    return "OTHER"


def rejection_message(reason: str) -> str:
    """``reason`` as Prolific's rejection message: at least ``REJECTION_MIN_CHARS`` characters."""
    message = reason.strip()
    if len(message) < REJECTION_MIN_CHARS:
        message += (" This decision was made from your answers to questions whose answers were known in advance; "
                    "contact the researcher through Prolific if you think it is wrong.")
    return message


def _is_study_record(key: str) -> bool:
    """``studies/<batch>.json`` (not the intent, the published or the stopped marker next to it)."""
    return key.endswith(".json") and not key.endswith((".intent.json", ".published.json", ".stopped.json"))


def _digest(*parts: object, n: int = 24) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:n]


# -- the HTTP client -------------------------------------------------------------------------------
class ProlificTransientError(TransientError):
    """Prolific throttled, failed with a 5xx or did not answer in time, after every attempt.

    ``maybe_acted`` is True when the request may have reached Prolific (a timeout or a dropped
    connection after sending), False when Prolific answered that it did nothing (429, 5xx).
    """

    def __init__(self, message: str, *, maybe_acted: bool) -> None:
        super().__init__(message)
        self.maybe_acted = maybe_acted


class ProlificClient:
    """``Authorization: Token …`` JSON calls; transient failures are retried only where asked."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float, max_attempts: int, backoff_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                  headers={"Authorization": f"Token {token}", "Accept": "application/json"})
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.sleep = sleep

    def call(self, method: str, path: str, *, body: dict[str, Any] | None = None, retry: bool = True) -> Any:
        """One API call; with ``retry`` transient failures are tried again (only for calls whose
        repetition cannot act twice). A 4xx other than 429 is a ``VendorError`` at once."""
        attempts = self.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(method, path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                failure = ProlificTransientError(f"vendor 'prolific': {method} {path}: {type(exc).__name__}",
                                                 maybe_acted=sent)
            else:
                if response.status_code < 400:
                    return response.json() if response.content else {}
                if response.status_code != 429 and response.status_code < 500:
                    raise VendorError(f"vendor 'prolific': {method} {path} answered {response.status_code}: "
                                      f"{' '.join(response.text.split())[:300]}")
                failure = ProlificTransientError(
                    f"vendor 'prolific': {method} {path} answered {response.status_code} (throttled or failing)",
                    maybe_acted=False)
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit() and attempt < attempts:
                    self.sleep(min(float(retry_after), 60.0))
                    continue
            if attempt == attempts:
                raise failure
            self.sleep(min(self.backoff_s * 2 ** (attempt - 1), 30.0))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        self._http.close()


# -- the desk: the local app's view of Prolific participants ---------------------------------------
class ProlificDesk(LocalVendor):
    """The annotation desk for Prolific participants (served by ``crowdloop annotate``).

    A participant is admitted by the entry link's parameters, not by a personal token; they see
    only their study's batch, answer one item (their place), and then the completion code.
    """

    def __init__(self, vendor: ProlificVendor, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(LocalParams(undo_window_s=0, lease_s=vendor.params.lease_s).model_dump(), vendor.context,
                         clock=clock)
        self.vendor = vendor

    def admit(self, participant: str, study_id: str, session_id: str) -> str | None:
        """A fresh desk token for ``participant`` if the study is one of ours and open, and Prolific
        knows the session as that participant's ACTIVE submission in it; else None."""
        if not all(PROLIFIC_ID.match(x or "") for x in (participant, study_id, session_id)):
            return None
        study = self.vendor.study_by_id(study_id)
        if study is None or self.store.exists(f"closed/{study['batch_id']}.json"):
            return None
        if not self.offering(study["batch_id"]):
            return None  # too close to the deadline for the time an item is held: nobody works for nothing
        try:  # one attempt: a page request never waits out back-offs (the participant can reload)
            session = self.vendor.client.call("GET", f"/api/v1/submissions/{session_id}/", retry=False)
        except (VendorError, ProlificTransientError):
            return None  # unknown session (404), not ours, or Prolific busy
        if (session.get("participant_id"), session.get("study_id"), session.get("status")) != (
                participant, study_id, "ACTIVE"):
            return None
        token = f"{participant}.{secrets.token_urlsafe(24)}"  # names its record: no scan of every participant
        write_json(self.store, f"annotators/{participant}.json",
                   {"name": participant, "token_sha256": token_hash(token), "study_id": study_id,
                    "session_id": session_id, "batch_id": study["batch_id"], "admitted_at": self._now().isoformat()})
        return token

    def authenticate(self, token: str | None) -> str | None:
        """The participant holding ``token`` (their latest admission), by one read and a constant-time
        comparison of hashes."""
        participant, _, _ = (token or "").partition(".")
        if not PROLIFIC_ID.match(participant) or len(token or "") > 200:
            return None
        record = self.participant(participant)
        if record is None or not hmac.compare_digest(record["token_sha256"], token_hash(str(token))):
            return None
        return participant

    def add_annotator(self, name: str) -> str:
        """No personal links here: participants come from Prolific through the study's link."""
        raise CrowdloopError("vendor 'prolific': participants enter through the study's link on Prolific; "
                             "there are no personal annotator links (crowdloop annotators add is for vendor 'local')")

    def participant(self, worker: str) -> dict[str, Any] | None:
        record = read_json(self.store, f"annotators/{worker}.json", default=None)
        return record if record and "batch_id" in record else None

    def next_task_and_progress(self, worker: str) -> tuple[tuple[Task, float] | None, dict[str, int]]:
        """Only the participant's study's batch, and nothing once they answered their one item."""
        record = self.participant(worker)
        tasks = [t for t in self.open_tasks() if record and t.batch_id == record["batch_id"]]
        index = self._index(tasks)
        if record is None or self._answer_of(worker, record["batch_id"]) is not None:
            self.store.delete(f"leases/{worker}.json")
            return None, self._progress(worker, tasks, index)
        return self._next(worker, tasks, index), self._progress(worker, tasks, index)

    def completion(self, worker: str) -> tuple[str, str] | None:
        """(completion code, the link back to Prolific) once ``worker`` answered their item."""
        record = self.participant(worker)
        if record is None or self._answer_of(worker, record["batch_id"]) is None:
            return None
        study = self.vendor.study_by_id(record["study_id"])
        if study is None:
            return None
        return study["completion_code"], COMPLETE_URL.format(code=study["completion_code"])

    def answer_key(self, worker: str, batch_id: str) -> str | None:
        """The store key of ``worker``'s answer in ``batch_id`` (None: none)."""
        return self._answer_of(worker, batch_id)

    def _answer_of(self, worker: str, batch_id: str) -> str | None:
        suffix = f".{worker}.json"
        return next((k for k in self.store.list(f"answers/{batch_id}/") if k.endswith(suffix)), None)

    def answers_by_participant(self, batch_id: str) -> dict[str, Annotation]:
        out: dict[str, Annotation] = {}
        for ann, _ in self._read_answers(self.store.list(f"answers/{batch_id}/")):
            out[ann.worker_id] = ann
        return out


# -- the vendor ------------------------------------------------------------------------------------
class ProlificVendor:
    """One Prolific study per batch; participants label in the local app; Prolific pays them."""

    name = "prolific"
    capabilities = frozenset({BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM, PAYS})

    def __init__(self, params: dict, context: VendorContext) -> None:
        self.params = parse_params(ProlificParams, params, vendor=self.name)
        if context.hourly_wage is not None:
            check_wage(context.hourly_wage, context.currency)
        self.context = context
        self.store = context.store
        self.hourly_wage = context.hourly_wage
        self._client: ProlificClient | None = None
        self._returned: set[str] = set()
        self.desk = ProlificDesk(self)

    @classmethod
    def check_params(cls, params: dict, plan: VendorPlan) -> ProlificParams:
        """Offline: the params, and the target wage against Prolific's minimum (nothing is sent)."""
        parsed = parse_params(ProlificParams, params, vendor=cls.name)
        if plan.hourly_wage is not None:
            check_wage(plan.hourly_wage, plan.currency)
        return parsed

    @staticmethod
    def fee_for(reward: float, n_assignments_per_task: int = 1) -> float:
        """Prolific's service fee on one reward (or one bonus)."""
        return fee_for(reward, n_assignments_per_task)

    @staticmethod
    def price_for(reward: float, hourly_wage: float) -> float:
        """What Prolific pays for one judgment of a task priced ``reward`` (the budget plans by it)."""
        return place_terms(reward, hourly_wage)[1] / 100

    @property
    def real_money(self) -> bool:
        """Prolific's own API spends real money (a run waits for an approval first)."""
        return self.params.api_url.rstrip("/") == API_URL

    @property
    def client(self) -> ProlificClient:
        """The HTTP client, built on first use (the token is read then, never logged)."""
        if self._client is None:
            self._client = ProlificClient(self.params.api_url, self._token(), timeout_s=self.params.timeout_s,
                                          max_attempts=self.params.max_attempts, backoff_s=self.params.backoff_s)
        return self._client

    def _token(self) -> str:
        if self.params.token_secret is not None:
            from crowdloop.credentials import read_secret

            value = read_secret(self.context.credentials.source, self.params.token_secret,
                                field="vendor.params.token_secret")
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"vendor.params.token_secret: secret block {self.params.token_secret!r} must hold "
                                  "the Prolific API token as a string")
            return value.strip()
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ConfigError(f"vendor 'prolific': no API token; set {TOKEN_ENV} or vendor.params.token_secret "
                              "(a secret block), never the YAML")
        return token

    def _rate(self) -> float:
        if self.hourly_wage is None:
            raise ConfigError("vendor 'prolific': the context carries no pay.hourly_wage; the reward per place needs it")
        return self.hourly_wage

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        """One published study for the batch (idempotent per batch id, also across a crash)."""
        done = read_json(self.store, f"studies/{batch_id}.json", default=None)
        if done is not None:
            self._ensure_published(done)
            return [self._ref(done)]
        if not tasks:
            return []  # nothing to ask: no study (a study needs places)
        self.desk.submit(tasks, batch_id=batch_id)
        intent_key = f"studies/{batch_id}.intent.json"
        intent = read_json(self.store, intent_key, default=None)
        resumed = intent is not None
        if intent is None:
            intent = self._intent(tasks, batch_id)
            written = write_json_once(self.store, intent_key, intent)
            intent, resumed = written, written is not intent
        hooks.point("prolific:study_intent", intent["round"])
        study = self._find_study(intent["internal_name"]) if resumed else None
        if study is None:
            study = self._create_study(intent)
        hooks.point("prolific:study_created", intent["round"])
        # Recorded before it is published, so the desk knows the study before any participant can come.
        record = {**intent, "study_id": study["id"], "created_at": utcnow().isoformat()}
        record = write_json_once(self.store, f"studies/{batch_id}.json", record)
        self._ensure_published(record, status=study.get("status"))
        return [self._ref(record)]

    def _ensure_published(self, record: dict[str, Any], *, status: str | None = None) -> None:
        """Publish the study unless this vendor recorded that it did (a crash may come between)."""
        marker = f"studies/{record['batch_id']}.published.json"
        if self.store.exists(marker):
            return
        if status is None:
            status = self.client.call("GET", f"/api/v1/studies/{record['study_id']}/").get("status")
        if status == "UNPUBLISHED":
            self._publish(record["study_id"])
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, marker, {"study_id": record["study_id"], "at": utcnow().isoformat()},
                       create_only=True)

    def _intent(self, tasks: Sequence[Task], batch_id: str) -> dict[str, Any]:
        minutes, cents = place_terms(max(t.reward for t in tasks), self._rate())
        places = sum(t.replicas for t in tasks)
        ctx = self.context
        # the store's identity keeps apart two stores of one project name, which pick the same
        # items for their first batch: a lookup by name must never adopt the other's study
        store_id = store_identity(self.store)
        internal = (f"crowdloop|{ctx.project}|{batch_id}|"
                    f"{_digest(ctx.project, batch_id, *(t.item_id for t in tasks), places, store_id)}")
        code = "CL" + secrets.token_hex(5).upper()  # stored in the create-only intent: a rerun uses the same
        filters = [{"filter_id": "participant_group_blocklist", "selected_values": [self._blocklist_group()]}]
        excluded = sorted({w for t in tasks for w in t.exclude_workers})
        if excluded:  # ask somebody else: who answered a re-asked item before does not get this study
            filters.append({"filter_id": "custom_blocklist", "selected_values": excluded})
        body: dict[str, Any] = {
            "name": self.params.name, "internal_name": internal, "description": self.params.description,
            "external_study_url": f"{self.params.app_url.rstrip('/')}/?{ENTRY_QUERY}",
            "prolific_id_option": "url_parameters",
            "completion_codes": [{"code": code, "code_type": "COMPLETED", "actions": [{"action": "MANUALLY_REVIEW"}]}],
            "total_available_places": places, "estimated_completion_time": minutes, "reward": cents,
            "device_compatibility": list(self.params.device_compatibility), "filters": filters,
        }
        if self.params.project_id:
            body["project"] = self.params.project_id
        return {"batch_id": batch_id, "round": min(t.round for t in tasks), "internal_name": internal, "body": body,
                "completion_code": code, "places": places, "reward_cents": cents, "minutes": minutes,
                "excluded": excluded, "at": time.time()}

    def _find_study(self, internal_name: str) -> dict[str, Any] | None:
        for study in self.client.call("GET", "/api/v1/studies/").get("results", []):
            if study.get("internal_name") == internal_name:
                return study
        return None

    def _create_study(self, intent: dict[str, Any]) -> dict[str, Any]:
        return self._create_once("/api/v1/studies/", intent["body"], lambda: self._find_study(intent["internal_name"]))

    def _create_once(self, path: str, body: dict[str, Any], lookup: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """POST a create; after a failure that may have acted (a timeout), ``lookup`` finds what it
        made before anything is tried again, so a retry never makes a second one."""
        for attempt in range(1, self.params.max_attempts + 1):
            try:
                return self.client.call("POST", path, body=body, retry=False)
            except ProlificTransientError as exc:
                if attempt == self.params.max_attempts:
                    raise
                self.client.sleep(min(self.params.backoff_s * 2 ** (attempt - 1), 30.0))
                if exc.maybe_acted:
                    found = lookup()
                    if found is not None:
                        log.info("prolific: a create that timed out had made %s %s; adopted", path, found["id"])
                        return found
        raise AssertionError("unreachable")  # pragma: no cover

    def _publish(self, study_id: str) -> None:
        try:
            self.client.call("POST", f"/api/v1/studies/{study_id}/transition/", body={"action": "PUBLISH"})
        except VendorError:
            status = self.client.call("GET", f"/api/v1/studies/{study_id}/").get("status")
            if status == "UNPUBLISHED":
                raise
            # published already (a retry after a lost answer)

    @staticmethod
    def _ref(record: dict[str, Any]) -> Ref:
        return {"batch_id": record["batch_id"], "study_id": record["study_id"]}

    def study_by_id(self, study_id: str) -> dict[str, Any] | None:
        """This vendor's record of study ``study_id`` (None: not one of ours)."""
        for key in self.store.list("studies/"):
            if _is_study_record(key):
                record = read_json(self.store, key, default=None)
                if record and hmac.compare_digest(str(record.get("study_id", "")), study_id):
                    return record
        return None

    def _study_of_batch(self, batch_id: str) -> dict[str, Any]:
        record = read_json(self.store, f"studies/{batch_id}.json", default=None)
        if record is None:
            raise VendorError(f"vendor 'prolific': batch {batch_id!r} has no study (submit it first)")
        return record

    # -- poll -----------------------------------------------------------------------------------
    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        """Answers whose submission came back to Prolific with the study's code; never blocks.

        A poll after a batch's deadline first stops its study and closes the batch on the desk,
        then reads the submissions (so every answer the desk took is seen if its code is back).
        Every poll also settles late submissions of earlier, closed batches (``settle_late``).
        """
        batches = {str(ref["batch_id"]) for ref in refs}
        self.settle_late(exclude=batches)
        decided = self._decided()
        out: list[Annotation] = []
        for ref in refs:
            study = self._study_of_batch(str(ref["batch_id"]))
            if self.desk.past_deadline(study["batch_id"]):
                self._close(study, reason="deadline")
            answers = None
            for sub in self.client.call("GET", f"/api/v1/studies/{study['study_id']}/submissions/").get("results", []):
                sid = str(sub["id"])
                if sid in self._returned or sid in decided:
                    continue
                if sub.get("status") in GAVE_UP:
                    self._void(sub, study)
                    continue
                if sub.get("status") not in RETURNED_WITH_CODE:
                    continue
                if answers is None:
                    answers = self.desk.answers_by_participant(study["batch_id"])
                ann = answers.get(str(sub.get("participant_id")))
                if ann is None:
                    self._report_bad(sub, study, "no answer in the app")
                    continue
                self._note_code(sub, study)
                self._returned.add(sid)
                out.append(ann.model_copy(update={"assignment_id": sid, "vendor": self.name,
                                                  "reward": study["reward_cents"] / 100}))
        return out

    def _void(self, sub: dict[str, Any], study: dict[str, Any]) -> None:
        """A participant who gave their place back (or ran out of time) is not paid: their answer, if
        any, is taken out of the desk, so the item is open for whoever takes the place next, and
        their entry is revoked."""
        sid, pid = str(sub["id"]), str(sub.get("participant_id"))
        self._returned.add(sid)
        if self.store.exists(f"void/{sid}.json"):
            return
        record = self.desk.participant(pid)
        if record is not None and record.get("session_id") == sid:
            self.store.delete(f"annotators/{pid}.json")
            self.store.delete(f"leases/{pid}.json")
        key = self.desk.answer_key(pid, study["batch_id"])
        if key is not None:
            self.store.delete(key)
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"void/{sid}.json", {"submission_id": sid, "participant_id": pid,
                                                        "status": sub.get("status"), "answer_removed": key is not None},
                       create_only=True)

    def _report_bad(self, sub: dict[str, Any], study: dict[str, Any], problem: str) -> None:
        sid = str(sub["id"])
        self._returned.add(sid)
        log.warning("prolific: submission %s of study %s is not used: %s", sid, study["study_id"], problem)
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"bad/{sid}.json", {"submission_id": sid, "study_id": study["study_id"],
                                                       "batch_id": study["batch_id"],
                                                       "participant_id": sub.get("participant_id"), "problem": problem,
                                                       "completed_at": sub.get("completed_at")},
                       create_only=True)

    @staticmethod
    def _note_code(sub: dict[str, Any], study: dict[str, Any]) -> None:
        """A participant whose answer the app holds did the work, whatever code they typed (the app
        admitted them only with their own active session): the answer is used and paid; a code
        that is not the study's is only logged."""
        if sub.get("study_code") != study["completion_code"]:
            log.info("prolific: submission %s of study %s came back with another code (%r); the app holds the "
                     "participant's answer, so it is used", sub["id"], study["study_id"], sub.get("study_code"))

    def bad_submissions(self) -> list[dict[str, Any]]:
        """Submissions that came back without an answer in the app (never a label; ``settle_late``
        decides them, or records the decision made in Prolific's UI or by its auto-approval)."""
        return [read_json(self.store, k) for k in sorted(self.store.list("bad/"))]

    def unmatched_pending(self) -> list[dict[str, Any]]:
        """Bad submissions nobody has decided yet, each with what is at stake: the reward and fee
        Prolific pays on its own ``AUTO_APPROVAL_DAYS`` after it came back (``auto_approval_after``)."""
        decided = self._decided()
        out = []
        for record in self.bad_submissions():
            if str(record["submission_id"]) in decided:
                continue
            study = self.study_by_id(str(record["study_id"]))
            reward = (study or {}).get("reward_cents", 0) / 100
            came_back = record.get("completed_at")
            due = None
            if came_back:
                due = (datetime.fromisoformat(str(came_back).replace("Z", "+00:00"))
                       + timedelta(days=AUTO_APPROVAL_DAYS)).date().isoformat()
            out.append(record | {"at_stake": round(reward + fee_for(reward), 2), "auto_approval_after": due})
        return out

    # -- acknowledge ----------------------------------------------------------------------------
    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        """Approve or reject each submission once; a rejection carries the evidence and its category."""
        if not accept and not (reason and reason.strip()):
            raise VendorError("vendor 'prolific': a rejection needs a reason the participant can read")
        action = {"action": "APPROVE"}
        if not accept:
            action = {"action": "REJECT", "message": rejection_message(str(reason)),
                      "rejection_category": rejection_category(str(reason))}
        status = "APPROVED" if accept else "REJECTED"
        for a in sorted(assignments, key=lambda x: x.assignment_id):
            key = f"acks/{a.assignment_id}.json"
            if self.store.exists(key):
                continue  # decided before: never twice
            current = self._decide(a.assignment_id, action)
            if current != status:
                raise VendorError(f"vendor 'prolific': cannot mark submission {a.assignment_id} {status.lower()}: "
                                  f"it is {current} already")
            write_json(self.store, key, {"submission_id": a.assignment_id, "status": status, "reason": reason,
                                         "worker_id": a.worker_id, "batch_id": a.batch_id, "item_id": a.item_id,
                                         "reward": a.reward if accept else 0.0, "at": utcnow().isoformat()},
                       create_only=True)
        for batch in sorted({a.batch_id for a in assignments}):  # a paid batch: no new places, no new answers
            self._close(self._study_of_batch(batch), reason="paid")
        if assignments:
            hooks.point("prolific:approved", min(a.round for a in assignments))

    def _decide(self, sid: str, action: dict[str, Any]) -> str:
        """Send ``action`` (APPROVE or REJECT) for a submission; its status afterwards. A refused
        transition (decided meanwhile in Prolific's UI, or a retry after a lost answer) reads the
        status back; a submission still undecided then is an error."""
        try:
            self.client.call("POST", f"/api/v1/submissions/{sid}/transition/", body=action)
        except VendorError as exc:
            status = self.client.call("GET", f"/api/v1/submissions/{sid}/").get("status")
            if status not in ("APPROVED", "REJECTED"):
                raise VendorError(f"vendor 'prolific': cannot decide submission {sid} (it is {status}): {exc}") from exc
            return status
        return "APPROVED" if action["action"] == "APPROVE" else "REJECTED"

    def _decided(self) -> set[str]:
        return {k[len("acks/"):-len(".json")] for k in self.store.list("acks/")}

    # -- closing and late work --------------------------------------------------------------------
    def _close(self, study: dict[str, Any], *, reason: str) -> None:
        """Stop the study on Prolific (final: no new places; unused funds go back), then close the
        batch on the desk (no answer is taken after it). Each once; a repeat finds the records."""
        batch = study["batch_id"]
        marker = f"studies/{batch}.stopped.json"
        if not self.store.exists(marker):
            try:
                self.client.call("POST", f"/api/v1/studies/{study['study_id']}/transition/", body={"action": "STOP"})
            except VendorError:  # stopped before (a retry after a lost answer), or finished: read the truth
                status = self.client.call("GET", f"/api/v1/studies/{study['study_id']}/").get("status")
                if status in ("ACTIVE", "PAUSED", "PUBLISHING", "SCHEDULED"):
                    raise
            with contextlib.suppress(RecordExistsError):
                write_json(self.store, marker, {"study_id": study["study_id"], "reason": reason,
                                                "at": utcnow().isoformat()}, create_only=True)
        self.desk.close_batch(batch, reason=reason)

    def settle_late(self, *, exclude: Sequence[str] = (), unmatched: str = "keep") -> list[dict[str, Any]]:
        """Decide every submission of a closed study that came back after the loop's last poll of it.

        The loop pays exactly the answers in its label log; a submission that came back with the
        code later would otherwise wait for Prolific's auto-approval (21 days after submission),
        paid outside the loop's books. One whose answer the desk holds (given before the batch
        closed) is approved and recorded under ``late/`` (``ledger()["late_paid"]``); one without
        is kept under ``bad/``, and ``unmatched`` says what becomes of it: ``keep`` (the default:
        somebody decides in Prolific's UI; the study is swept again until they have), ``approve``
        or ``reject`` (category ``NO_DATA``, ``NO_ANSWER_MESSAGE``). A bad submission approved in
        Prolific's UI or by its auto-approval is recorded as paid too, so the money is in the
        books whoever decided. Batches in ``exclude`` (still being collected or not yet paid) are
        left alone; a study is settled for good once none of its submissions is ACTIVE or waiting
        for a decision. Returns the decisions recorded now (``reward`` 0 for a rejection).
        """
        if unmatched not in UNMATCHED_POLICIES:
            raise VendorError(f"vendor 'prolific': unmatched={unmatched!r}; expected one of {', '.join(UNMATCHED_POLICIES)}")
        made: list[dict[str, Any]] = []
        for key in sorted(self.store.list("studies/")):
            if not key.endswith(".stopped.json"):
                continue
            batch = key[len("studies/"):-len(".stopped.json")]
            if batch in exclude or self.store.exists(f"settled/{batch}.json"):
                continue
            study = self._study_of_batch(batch)
            decided = self._decided()
            bad = {str(b["submission_id"]) for b in self.bad_submissions()}
            pending = False
            answers = None
            for sub in self.client.call("GET", f"/api/v1/studies/{study['study_id']}/submissions/").get("results", []):
                sid, status = str(sub["id"]), sub.get("status")
                if status == "ACTIVE":
                    pending = True  # may still come back with the code (or time out)
                if sid in decided:
                    continue
                if sid not in bad and status in RETURNED_WITH_CODE:  # APPROVED: by Prolific, 21 days on
                    if answers is None:
                        answers = self.desk.answers_by_participant(batch)
                    ann = answers.get(str(sub.get("participant_id")))
                    if ann is not None:
                        self._note_code(sub, study)
                        made.append(self._approve_late(sub, study, ann))
                        continue
                    self._report_bad(sub, study, "no answer in the app")
                    bad.add(sid)
                if sid in bad:
                    record = self._settle_unmatched(sub, study, unmatched)
                    if record is None:
                        pending = pending or status == "AWAITING REVIEW"
                    else:
                        made.append(record)
            if not pending:
                with contextlib.suppress(RecordExistsError):
                    write_json(self.store, f"settled/{batch}.json", {"batch_id": batch, "at": utcnow().isoformat()},
                               create_only=True)
        return made

    def _approve_late(self, sub: dict[str, Any], study: dict[str, Any], ann: Annotation) -> dict[str, Any]:
        """Approve a submission whose answer the desk took before the close; recorded under ``late/``."""
        sid = str(sub["id"])
        late = ann.model_copy(update={"assignment_id": sid, "vendor": self.name, "reward": study["reward_cents"] / 100})
        log.warning("prolific: submission %s of study %s came back after the batch closed; approved "
                    "(answered before the close), its label is not in the label log", sid, study["study_id"])
        record = {"submission_id": sid, "batch_id": study["batch_id"], "study_id": study["study_id"],
                  "participant_id": ann.worker_id, "item_id": ann.item_id, "label": ann.label,
                  "reward": late.reward, "fee": fee_for(late.reward), "at": utcnow().isoformat()}
        # the money record before the decision record: a crash between them leaves the submission
        # undecided in the store, and the next sweep approves it (again harmlessly) and books it;
        # the other order would leave an approval whose money late_paid never sees
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"late/{sid}.json", record, create_only=True)
        self.acknowledge([late], accept=True)
        return record

    def _settle_unmatched(self, sub: dict[str, Any], study: dict[str, Any], policy: str) -> dict[str, Any] | None:
        """A submission with no answer in the app: record a decision made outside the loop (Prolific's
        UI, its auto-approval), or make ``policy``'s; None while it waits for somebody's decision."""
        sid, status = str(sub["id"]), sub.get("status")
        if status == "AWAITING REVIEW":
            if policy == "keep":
                return None
            accept = policy == "approve"
            action = {"action": "APPROVE"} if accept else {"action": "REJECT", "message": NO_ANSWER_MESSAGE,
                                                           "rejection_category": "NO_DATA"}
            status = self._decide(sid, action)
            by = "loop" if (status == "APPROVED") == accept else "prolific"
        elif status in ("APPROVED", "REJECTED"):
            by = "prolific"  # decided in Prolific's UI, or approved by Prolific after 21 days
        else:
            return None  # returned or timed out: never paid
        reward = study["reward_cents"] / 100 if status == "APPROVED" else 0.0
        if by == "prolific":
            log.warning("prolific: submission %s of study %s (no answer in the app) was %s outside the loop; "
                        "recorded in the books", sid, study["study_id"], status.lower())
        record = {"submission_id": sid, "batch_id": study["batch_id"], "study_id": study["study_id"],
                  "participant_id": sub.get("participant_id"), "item_id": None, "label": None,
                  "status": status, "decided_by": by, "problem": "no answer in the app",
                  "reward": reward, "fee": fee_for(reward) if reward else 0.0, "at": utcnow().isoformat()}
        if reward:  # the money first: a crash before the decision record leaves it to the next sweep
            with contextlib.suppress(RecordExistsError):
                write_json(self.store, f"late/{sid}.json", record, create_only=True)
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"acks/{sid}.json", {"submission_id": sid, "status": status, "decided_by": by,
                                                        "reason": None if status == "APPROVED" else NO_ANSWER_MESSAGE,
                                                        "worker_id": sub.get("participant_id"),
                                                        "batch_id": study["batch_id"], "item_id": None,
                                                        "reward": reward, "at": record["at"]}, create_only=True)
        return record

    def late_paid(self) -> dict[str, float]:
        """Money (reward + fee) paid per batch for submissions settled after the batch closed;
        ``Project.spent`` adds it, so the money budget and the status see it."""
        out: dict[str, float] = {}
        for x in self.late_submissions():
            out[x["batch_id"]] = round(out.get(x["batch_id"], 0.0) + x["reward"] + x["fee"], 2)
        return out

    def late_submissions(self) -> list[dict[str, Any]]:
        """Submissions approved after their batch closed (their labels are not in the label log)."""
        return [read_json(self.store, k) for k in sorted(self.store.list("late/"))]

    # -- bonus ----------------------------------------------------------------------------------
    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        """``amount`` per annotation, one bulk bonus payment per study, paid once per token."""
        if amount <= 0:
            raise VendorError(f"vendor 'prolific': bonus amount={amount}: expected a positive amount")
        by_batch: dict[str, list[Annotation]] = {}
        for a in assignments:
            by_batch.setdefault(a.batch_id, []).append(a)
        for batch, anns in sorted(by_batch.items()):
            self._bonus_study(self._study_of_batch(batch), anns, amount, reason, token)

    def _bonus_study(self, study: dict[str, Any], anns: list[Annotation], amount: float, reason: str,
                     token: str) -> None:
        key = f"bonuses/{_digest(token, study['study_id'])}"
        if self.store.exists(f"{key}.paid.json"):
            return  # paid before
        rows: dict[str, float] = {}
        submissions: dict[str, str] = {}
        for a in anns:
            rows[a.worker_id] = round(rows.get(a.worker_id, 0.0) + amount, 2)
            submissions[a.worker_id] = a.assignment_id
        round_ = min(a.round for a in anns)
        setup = read_json(self.store, f"{key}.setup.json", default=None)
        if setup is None:
            before = {pid: len(self._bonus_payments(sid)) for pid, sid in sorted(submissions.items())}
            csv = "".join(f"{pid},{value:.2f}\n" for pid, value in sorted(rows.items()))
            made = self.client.call("POST", "/api/v1/submissions/bonus-payments/",
                                    body={"study_id": study["study_id"], "csv_bonuses": csv})
            setup = {"bulk_id": str(made["id"]), "study_id": study["study_id"], "token": token, "reason": reason,
                     "rows": rows, "submissions": submissions, "before": before, "amount": round(sum(rows.values()), 2)}
            # (a set-up that is never paid costs nothing: a rerun may make another)
            setup = write_json_once(self.store, f"{key}.setup.json", setup)
        hooks.point("prolific:bonus_set_up", round_)
        if self.store.exists(f"{key}.pay.json"):  # an earlier attempt may have paid: look, never pay blind
            if not self._bonus_visible(setup):
                raise VendorError(
                    f"vendor 'prolific': bulk bonus {setup['bulk_id']} of study {setup['study_id']} was sent to be paid "
                    "by a run that stopped before the answer, and Prolific shows no such bonus yet; check the study's "
                    f"bonuses in Prolific, then delete {key}.pay.json under the vendor's store to pay it, or write "
                    f"{key}.paid.json if it was paid")
        else:
            write_json(self.store, f"{key}.pay.json", {"bulk_id": setup["bulk_id"], "at": utcnow().isoformat()},
                       create_only=True)
            self._pay_bulk(setup)
        hooks.point("prolific:bonus_paid", round_)
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"{key}.paid.json", {**setup, "fee": round(sum(map(fee_for, setup["rows"].values())), 2),
                                                        "paid_at": utcnow().isoformat()}, create_only=True)

    def _pay_bulk(self, setup: dict[str, Any]) -> None:
        """Prolific's pay call is not idempotent: retried only when Prolific said it did nothing."""
        for attempt in range(1, self.params.max_attempts + 1):
            try:
                self.client.call("POST", f"/api/v1/bulk-bonus-payments/{setup['bulk_id']}/pay/", body={}, retry=False)
                return
            except ProlificTransientError as exc:
                if self._bonus_visible(setup):
                    return  # it acted; the answer was lost
                if exc.maybe_acted:
                    raise VendorError(f"vendor 'prolific': paying bulk bonus {setup['bulk_id']} timed out and Prolific "
                                      "shows no bonus yet (it pays asynchronously); not paying again: check the study "
                                      "in Prolific and rerun") from exc
                if attempt == self.params.max_attempts:
                    raise
                self.client.sleep(min(self.params.backoff_s * 2 ** (attempt - 1), 30.0))

    def _bonus_payments(self, submission_id: str) -> list[Any]:
        return list(self.client.call("GET", f"/api/v1/submissions/{submission_id}/").get("bonus_payments") or [])

    def _bonus_visible(self, setup: dict[str, Any]) -> bool:
        """Whether every submission of the set-up has one bonus payment more than before it."""
        return all(len(self._bonus_payments(sid)) > setup["before"][pid] for pid, sid in setup["submissions"].items())

    # -- blocking -------------------------------------------------------------------------------
    def block_workers(self, worker_ids: Sequence[str], *, reason: str) -> None:
        """Add each participant to the project's block list group (every study filters it out);
        recorded after Prolific accepted it, so a crash before repeats the (idempotent) call."""
        for worker in sorted(set(worker_ids)):
            if block_of(self.store, worker) is not None:
                continue
            group = self._blocklist_group()
            self.client.call("POST", f"/api/v1/participant-groups/{group}/participants/",
                             body={"participant_ids": [worker]})
            record_block(self.store, worker, reason=reason, at=utcnow().isoformat(), group_id=group)
            self.store.delete(f"leases/{worker}.json")

    def block_reason(self, worker: str) -> str | None:
        record = block_of(self.store, worker)
        return None if record is None else str(record["reason"])

    def _blocklist_group(self) -> str:
        """The id of the project's block list participant group, made once (found by name after a crash)."""
        done = read_json(self.store, "group.json", default=None)
        if done is not None:
            return str(done["group_id"])
        name = f"crowdloop {self.context.project} blocked {_digest(self.context.project, self.context.seed, n=8)}"
        found = next((g for g in self.client.call("GET", "/api/v1/participant-groups/").get("results", [])
                      if g.get("name") == name), None)
        if found is None:
            body: dict[str, Any] = {"name": name}
            if self.params.workspace_id:
                body["workspace_id"] = self.params.workspace_id
            if self.params.project_id:
                body["project_id"] = self.params.project_id
            found = self._create_once("/api/v1/participant-groups/", body, lambda: next(
                (g for g in self.client.call("GET", "/api/v1/participant-groups/").get("results", [])
                 if g.get("name") == name), None))
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, "group.json", {"group_id": str(found["id"]), "name": name}, create_only=True)
        return str(read_json(self.store, "group.json")["group_id"])

    # -- accounting -----------------------------------------------------------------------------
    def ledger(self) -> dict[str, float | int]:
        """Studies, decisions and money as recorded in the vendor's store (reconciliation, reports)."""
        studies = [k for k in self.store.list("studies/") if _is_study_record(k)]
        acks = [read_json(self.store, k) for k in self.store.list("acks/")]
        paid_bonuses = [read_json(self.store, k) for k in self.store.list("bonuses/") if k.endswith(".paid.json")]
        approved = [a for a in acks if a["status"] == "APPROVED"]
        paid = round(sum(a["reward"] for a in approved), 2)
        bonuses = round(sum(b["amount"] for b in paid_bonuses), 2)
        fees = round(sum(fee_for(a["reward"]) for a in approved)
                     + sum(fee_for(v) for b in paid_bonuses for v in b["rows"].values()), 2)
        late = self.late_submissions()
        return {"studies": len(studies), "approved": len(approved), "rejected": len(acks) - len(approved),
                "paid": paid, "bonuses": bonuses, "fees": fees, "total": round(paid + bonuses + fees, 2),
                "late": len(late), "late_paid": round(sum(x["reward"] for x in late), 2)}

