"""Amazon Mechanical Turk as an annotation vendor (boto3 is imported only here).

Install with ``pip install 'crowdloop[mturk]'``. Credentials come from the Prefect Secret block
the config names (``credentials.aws``), else from boto3's credential chain (environment,
shared config, instance role); never from the YAML config itself.

Reliability (the rules of docs/reliability.md, "Guarantees"):

* every HIT is created with a deterministic ``UniqueRequestToken`` derived from (project,
  batch, items, replicas) and a ``RequesterAnnotation`` that carries project/round/items;
* the *intent* of a HIT is written to the vendor's store prefix before ``create_hit`` and
  the HIT id after it. A rerun that finds an intent without a HIT id calls ``create_hit``
  again with the same token: MTurk answers with a duplicate-token error for 24 h, which is
  resolved to the existing HIT. After 24 h (the token has expired) the HIT is found with
  ``list_hits`` by its ``RequesterAnnotation`` before anything new is created;
* throttling is retried by botocore (``retries={"mode": "adaptive"}``) and a client-side
  rate limit spaces requests;
* answers are parsed from ``QuestionFormAnswers`` XML; a malformed answer is logged and
  skipped (never a crash), and it is never returned as a label.

Quality controls (capabilities ``blocks_workers``, ``excludes_workers_per_item``):

* a blocked worker gets ``CreateWorkerBlock`` with a reason naming the evidence (MTurk keeps it
  for the requester; the worker does not see it): no HIT of this requester reaches them again.
  The call is idempotent and recorded after it succeeds, so a crash between the engine's
  decision and the call repeats it on the rerun; work done before stays approved and paid;
* a re-ask (a task with ``exclude_workers``) adds assignments to the item's own earlier HIT
  (``CreateAdditionalAssignmentsForHIT``, with a request token and a ``GetHIT`` check after a
  crash): MTurk never gives one worker the same HIT twice, so the new judgment is somebody
  else's. It keeps that HIT's reward. This needs ``items_per_hit: 1``;
* assignments a worker returned or abandoned go back on offer by themselves while the HIT is
  listed; when the HIT expired with such slots open, ``poll`` lists it again (a later expiry, never
  past the batch's collect deadline or its image URLs), so items reach their judgments and
  nothing is paid twice (the HIT's assignments are the same).

Images (capability ``images_by_url``): an image item is shown from an S3 presigned URL
(``context.image_url``) valid for ``image_url_expiry_s``, longer than the HIT can be worked on.

Money: MTurk charges a 20% commission on rewards and bonuses (minimum $0.01 per assignment
or bonus) and another 20% on HITs with 10 or more assignments, so ``max_assignments`` is
capped at 9 unless ``allow_ten_or_more_assignments`` is set. ``MTurkVendor.fee_for`` is that
rule; the loop's ledger and budget use it too, so ``ledger()`` and the project's money agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import logging
import math
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crowdloop.credentials import DEFAULT as DEFAULT_CREDENTIALS
from crowdloop.credentials import Credentials
from crowdloop.errors import ConfigError, RecordExistsError, VendorError
from crowdloop.pay import bonus_cap
from crowdloop.records import Annotation, Task, utcnow
from crowdloop.redact import protect_loggers
from crowdloop.storage import read_json, store_identity, write_json, write_json_once
from crowdloop.vendor import (
    BLOCKS_WORKERS,
    EXCLUDES_WORKERS_PER_ITEM,
    IMAGES_BY_URL,
    PAYS,
    UNMATCHED_POLICIES,
    Ref,
    VendorContext,
    VendorPlan,
    block_of,
    image_payload,
    parse_params,
    record_block,
)

log = logging.getLogger(__name__)
protect_loggers()  # botocore logs request headers (the access key id) at DEBUG

SANDBOX_ENDPOINT = "https://mturk-requester-sandbox.{region}.amazonaws.com"
PRODUCTION_ENDPOINT = "https://mturk-requester.{region}.amazonaws.com"
MIN_TEXT_BYTES = 500  # an item's text shown in a HIT gets at least this much of the question's room
HTML_QUESTION_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
TOKEN_TTL_S = 24 * 3600.0
STORE_ID_KEY = "store.json"
# Reconcile by RequesterAnnotation a little before MTurk forgets the token, not after.
TOKEN_SAFE_AGE_S = 23 * 3600.0

# System qualification type ids (MTurk documentation, "Qualification requirements").
QUAL_LOCALE = "00000000000000000071"
QUAL_APPROVAL_RATE = "000000000000000000L0"
QUAL_NUMBER_APPROVED = "00000000000000000040"

COMMISSION = 0.20
LARGE_HIT_SURCHARGE = 0.20
LARGE_HIT_ASSIGNMENTS = 10
MIN_FEE = 0.01
MIN_LISTING_S = 60  # the shortest listing crowdloop asks for (lifetime_s and the listing cut by the deadline)
MAX_ANSWER_CHARS = 1_000_000  # a classification answer is a few hundred bytes; refuse megabytes unparsed
MAX_QUESTION_BYTES = 65_535  # CreateHIT: "The XML question data must not be larger than 64 kilobytes"

# Sessions are built through this name so tests can hand in a session with a fake wired into
# botocore's ``before-send`` event (every request is still validated by the real model).
_session_factory: Callable[[], boto3.session.Session] = boto3.session.Session


class QualificationTest(BaseModel):
    """A qualification type with a test; workers need ``min_score``. Taking it is paid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    qualification_type_id: str = Field(min_length=1, max_length=64)
    min_score: int = Field(ge=0, le=100)
    reward: float = Field(gt=0, description="paid once to each worker who passed, as a bonus on their first approved assignment")


class Qualifications(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    locales: list[str] = Field(default_factory=list, description="ISO 3166 country codes, e.g. ['US', 'GB']")
    min_approval_rate: int | None = Field(None, ge=0, le=100, description="percent; needs min_approved_hits")
    min_approved_hits: int | None = Field(None, ge=0, description="workers' approved HITs; pairs with min_approval_rate")
    test: QualificationTest | None = None

    @model_validator(mode="after")
    def _paired(self) -> Qualifications:
        # A 99% approval rate means nothing for a worker with 3 HITs: MTurk reports 100% for
        # new workers until they have 100 HITs, so the rate is only a filter with a count.
        if (self.min_approval_rate is None) != (self.min_approved_hits is None):
            raise ValueError(
                f"min_approval_rate={self.min_approval_rate!r}, min_approved_hits={self.min_approved_hits!r}: "
                "expected both or neither (an approval rate alone admits new workers)"
            )
        for code in self.locales:
            if not re.fullmatch(r"[A-Z]{2}", code):
                raise ValueError(f"locales: {code!r} is not a two-letter upper-case country code like 'US'")
        return self


class MTurkParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sandbox: bool = Field(True, description="use the worker sandbox; production must be chosen explicitly")
    region: str = Field("us-east-1", pattern=r"^[a-z]{2}-[a-z]+-\d$")
    title: str = Field("Classify an item", min_length=1, max_length=128)
    description: str = Field("Choose the class that fits the item best.", min_length=1, max_length=2000)
    keywords: str = Field("classification, labeling", max_length=1000)
    items_per_hit: int = Field(1, ge=1, le=50, description="items shown in one HIT (one assignment answers all)")
    max_text_chars: int = Field(
        4000, ge=100, le=48_000, description="longest item text shown in a HIT; longer texts are cut with a note "
        "saying so (the whole question must stay under MTurk's 64 KB)")
    assignment_duration_s: int = Field(600, ge=30, le=365 * 86400, description="time a worker has after accepting")
    lifetime_s: int = Field(
        3 * 86400, ge=MIN_LISTING_S, le=365 * 86400,
        description="how long the HIT is listed; at most collect.timeout_s - assignment_duration_s (see listing_s)")
    auto_approval_delay_s: int = Field(86400, ge=0, le=30 * 86400, description="MTurk approves on its own after this")
    qualifications: Qualifications = Qualifications()
    allow_ten_or_more_assignments: bool = Field(
        False, description="MTurk adds a 20% fee to HITs with 10+ assignments; redundancy above 9 needs this"
    )
    max_requests_per_second: float = Field(5.0, gt=0, le=100, description="client-side rate limit")
    max_attempts: int = Field(8, ge=1, le=20, description="botocore attempts per call (throttling, 5xx)")
    frame_height: int = Field(0, ge=0, le=5000, description="HTMLQuestion frame height; 0 = fit")
    endpoint_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="another MTurk API endpoint (a VPC proxy or a test double); default: sandbox or production by `sandbox`",
    )
    image_url_expiry_s: int = Field(
        7 * 86400, ge=60, le=7 * 86400,
        description="presigned image URLs stay valid this long; more than lifetime_s + assignment_duration_s")
    repost_check_s: float = Field(
        300.0, gt=0, description="how often poll looks for expired HITs whose returned/abandoned assignments need re-posting")

    @model_validator(mode="after")
    def _urls_outlive_the_hit(self) -> MTurkParams:
        if self.image_url_expiry_s <= self.lifetime_s + self.assignment_duration_s:
            raise ValueError(
                f"image_url_expiry_s={self.image_url_expiry_s}: expected more than lifetime_s + assignment_duration_s = "
                f"{self.lifetime_s + self.assignment_duration_s}, or images would vanish from listed HITs")
        return self


def listing_s(params: MTurkParams, collect_timeout_s: float | None) -> int:
    """How long a HIT is listed: ``lifetime_s``, cut so that every worker who accepts it can
    submit before the loop stops waiting for the batch.

    A worker who accepts at the last listed second has ``assignment_duration_s`` to submit, and
    the loop's last poll of a batch comes ``collect.timeout_s`` after its dispatch (after every
    HIT of it was created). Work submitted later would never be collected, and MTurk would
    approve it on its own after ``auto_approval_delay_s``: money paid outside the budget, for
    labels the project never sees.
    """
    if collect_timeout_s is None:
        return params.lifetime_s
    room = int(collect_timeout_s) - params.assignment_duration_s
    if room < MIN_LISTING_S:
        raise ConfigError(
            f"collect.timeout_s={collect_timeout_s:g}: expected at least vendor.params.assignment_duration_s + "
            f"{MIN_LISTING_S} = {params.assignment_duration_s + MIN_LISTING_S} s; a HIT is listed only until "
            "collect.timeout_s - assignment_duration_s after it is sent, so that every worker who accepts it "
            "can submit before the loop stops waiting")
    return min(params.lifetime_s, room)


def fee_for(reward: float, n_assignments_per_hit: int) -> float:
    """MTurk's fee for one assignment paid ``reward``: 20% (min $0.01), +20% at 10+ assignments."""
    if reward < 0 or n_assignments_per_hit < 1:
        raise ValueError(
            f"reward={reward}, n_assignments_per_hit={n_assignments_per_hit}: expected reward >= 0 and at least 1 assignment"
        )
    rate = COMMISSION + (LARGE_HIT_SURCHARGE if n_assignments_per_hit >= LARGE_HIT_ASSIGNMENTS else 0.0)
    return max(MIN_FEE, math.ceil(round(reward * rate * 100, 6)) / 100)


def check_assignments(params: MTurkParams, replicas: int, *, field: str = "consensus.redundancy") -> None:
    """Refuse 10+ assignments per HIT unless the 20% surcharge was allowed explicitly."""
    if replicas >= LARGE_HIT_ASSIGNMENTS and not params.allow_ten_or_more_assignments:
        raise ConfigError(
            f"{field}={replicas}: MTurk charges an extra 20% on HITs with 10 or more assignments; "
            "use at most 9 or set vendor.params.allow_ten_or_more_assignments: true"
        )


def endpoint_for(params: MTurkParams) -> str:
    if params.endpoint_url:
        return params.endpoint_url
    template = SANDBOX_ENDPOINT if params.sandbox else PRODUCTION_ENDPOINT
    return template.format(region=params.region)


def make_client(params: MTurkParams, credentials: Credentials = DEFAULT_CREDENTIALS):
    """A boto3 ``mturk`` client: credentials from the named secret block, else boto3's chain;
    adaptive retries on throttling."""
    config = Config(retries={"mode": "adaptive", "max_attempts": params.max_attempts}, user_agent_extra="crowdloop")
    try:
        return credentials.aws_session(_session_factory).client("mturk", region_name=params.region,
                                                                endpoint_url=endpoint_for(params), config=config)
    except BotoCoreError as exc:
        raise VendorError(f"vendor 'mturk': cannot create the MTurk client: {exc}") from exc


def account_balance(*, sandbox: bool = True, region: str = "us-east-1") -> float:
    """The requester's available balance (the sandbox always shows 10000.00)."""
    params = parse_params(MTurkParams, {"sandbox": sandbox, "region": region}, vendor="mturk")
    try:
        out = make_client(params).get_account_balance()
    except BotoCoreError as exc:
        raise VendorError(f"vendor 'mturk': get_account_balance failed: {exc}") from exc
    except ClientError as exc:
        raise VendorError(f"vendor 'mturk': get_account_balance failed: {_error_code(exc)}: {_error_message(exc)}") from exc
    return float(out.get("AvailableBalance", "0"))


def expire_round(location: str, round_: int) -> list[str]:
    """Expire the open HITs of one round of the project at ``location``; returns their ids."""
    from crowdloop import keys
    from crowdloop.engine.project import Project
    from crowdloop.storage import PrefixedStore

    project = Project.open(location)
    if project.config.vendor.name != "mturk":
        raise ConfigError(f"project {location}: vendor.name is {project.config.vendor.name!r}, expected 'mturk'")
    intent = project.record(round_, keys.DISPATCH, default=None)
    if intent is None:
        raise VendorError(f"project {location}: round {round_} was never dispatched (no {keys.round_key(round_, keys.DISPATCH)})")
    context = VendorContext(project=project.config.project, name="mturk", seed=project.config.seed, classes=(),
                            store=PrefixedStore(project.store, keys.vendor_prefix("mturk")), item_payload=_no_payload)
    return MTurkVendor(dict(project.config.vendor.params), context).expire_batch(intent["batch_id"])


def _no_payload(item_id: str) -> dict[str, Any]:
    raise VendorError(f"vendor 'mturk': no item content available here (item {item_id!r})")


class RateLimiter:
    """At most ``rate`` calls per second from this process (thread-safe)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            self._sleep(delay)


def _digest(*parts: object, n: int = 40) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:n]


def _bundled_by_redundancy(tasks: Sequence[Task], n: int) -> Iterator[list[Task]]:
    """Chunks of up to ``n`` tasks asking the same number of assignments, in batch order."""
    same: dict[int, list[Task]] = {}
    for t in tasks:
        same.setdefault(t.replicas, []).append(t)
    for run in same.values():
        for start in range(0, len(run), n):
            yield run[start:start + n]


def _chunks_in_order(tasks: Sequence[Task], n: int) -> Iterator[list[Task]]:
    """The grouping before HITs were bundled by redundancy: chunks of ``n`` in batch order, a
    chunk of mixed redundancy split into one-item HITs (kept for batches posted that way)."""
    for start in range(0, len(tasks), n):
        group = list(tasks[start:start + n])
        if len({t.replicas for t in group}) != 1:
            yield from ([t] for t in group)
        else:
            yield group


def request_token(project: str, batch_id: str, item_ids: Sequence[str], replicas: int, store_id: str) -> str:
    """Deterministic ``UniqueRequestToken`` (≤ 64 chars) for one HIT of one project store.

    ``store_id`` (``MTurkVendor.store_id``) keeps apart two stores of the same project name: a
    store deleted and made again picks the same items for its first batch, and without it MTurk
    answered the new HIT's token with the old store's HIT, old answers and all."""
    return f"cl-{project[:16]}-{_digest(project, batch_id, *item_ids, replicas, store_id)}"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _is_duplicate_token(exc: ClientError) -> bool:
    text = f"{_error_code(exc)} {exc.response.get('TurkErrorCode', '')} {_error_message(exc)}"
    return ("HitAlreadyExists" in text or "already been processed" in text
            or ("idempotency token" in text.lower()) or "already exists" in text)


def check_time_allowed(params: MTurkParams, seconds_per_task: float | None) -> None:
    """A HIT must give a worker at least twice the time its items are expected to take
    (``items_per_hit`` x ``pay.pilot_seconds_per_task``). Task times spread (log-normal, the
    slowest tenth about twice the median): with less, the slower workers run out of time, MTurk
    takes the HIT back with their work unpaid, and the round waits for others."""
    if seconds_per_task is None:
        return
    need = params.items_per_hit * seconds_per_task
    if params.assignment_duration_s < 2 * need:
        raise ConfigError(
            f"vendor.params.assignment_duration_s={params.assignment_duration_s}: expected at least twice the expected "
            f"time of one HIT (items_per_hit={params.items_per_hit} x pay.pilot_seconds_per_task={seconds_per_task:g} s "
            f"= {need:g} s), so at least {math.ceil(2 * need)} s, or fewer items_per_hit")


class MTurkVendor:
    """Mechanical Turk HITs built from crowdloop tasks; state under the vendor's store prefix."""

    name = "mturk"
    capabilities = frozenset({BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM, IMAGES_BY_URL, PAYS})
    capability_hints: ClassVar[dict[str, str]] = {  # the hint in the one-line error
        EXCLUDES_WORKERS_PER_ITEM: "only with vendor.params.items_per_hit: 1 (a re-ask adds assignments to the "
                                   "item's own HIT)"}

    @classmethod
    def capabilities_for(cls, params: dict[str, Any]) -> frozenset[str]:
        """A re-ask goes to somebody else only if the item has a HIT of its own to extend."""
        if int(params.get("items_per_hit", 1)) != 1:
            return cls.capabilities - {EXCLUDES_WORKERS_PER_ITEM}
        return cls.capabilities

    def __init__(self, params: dict, context: VendorContext) -> None:
        # The listing cap is checked by ``check_params`` (``crowdloop check``, every run) and by
        # ``submit``, not here: ``crowdloop status`` and ``settle`` build the vendor to read an
        # older project's books, whose config may predate the cap.
        self.params = parse_params(MTurkParams, params, vendor=self.name)
        self.context = context
        self.store = context.store
        self._returned: set[str] = set()
        self._complete_hits: set[tuple[str, str]] = set()
        self._limiter = RateLimiter(self.params.max_requests_per_second)
        self._client = None
        self._store_id: str | None = None
        self.clock: Callable[[], float] = time.time  # wall clock, for the token's 24 h validity
        self._repost_checked: dict[str, float] = {}  # HIT id -> when poll last asked whether it needs re-posting
        # MTurk refuses to extend a HIT from fewer than 10 assignments to 10 or more.
        self.max_judgments_per_item = None if self.params.allow_ten_or_more_assignments else LARGE_HIT_ASSIGNMENTS - 1

    @property
    def real_money(self) -> bool:
        """Production spends real money (a run waits for an approval first); the sandbox does not."""
        return not self.params.sandbox

    @property
    def auto_approval_s(self) -> float:
        """MTurk approves unreviewed work on its own this long after submission: past it the loop
        cannot reject any more (``RejectAssignment`` fails), so it does not try (``engine/payment.py``)."""
        return float(self.params.auto_approval_delay_s)

    # -- client -------------------------------------------------------------------------
    @property
    def client(self):
        """The boto3 ``mturk`` client, built on first use (no network until then)."""
        if self._client is None:
            self._client = make_client(self.params, self.context.credentials)
        return self._client

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call behind the client-side rate limit; botocore retries throttling."""
        self._limiter.wait()
        try:
            return getattr(self.client, operation)(**kwargs)
        except BotoCoreError as exc:  # no credentials, connection failures after retries
            raise VendorError(f"vendor 'mturk': {operation} failed: {exc}") from exc

    # -- money --------------------------------------------------------------------------
    @staticmethod
    def fee_for(reward: float, n_assignments_per_hit: int) -> float:
        """MTurk's fee for one assignment (or one bonus with ``n_assignments_per_hit=1``)."""
        return fee_for(reward, n_assignments_per_hit)

    # -- vendor protocol ----------------------------------------------------------------
    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        """Create one HIT per group of ``items_per_hit`` tasks (idempotent per batch id)."""
        listing_s(self.params, self.context.collect_timeout_s)  # refused here, before a HIT is sent or extended
        groups = list(self._groups(tasks, batch_id))
        # each re-ask's earlier HIT, looked up once (every lookup lists the vendor's HITs)
        earlier = [self._earlier_hit(g[0].item_id, batch_id) if len(g) == 1 and g[0].exclude_workers else None
                   for g in groups]
        self._check_funds(groups, batch_id, earlier)
        return [self._submit_group(group, batch_id, earlier=hit) for group, hit in zip(groups, earlier, strict=True)]

    def _check_funds(self, groups: list[list[Task]], batch_id: str, earlier: list[dict[str, Any] | None]) -> None:
        """Refuse a batch the account cannot pay, before any of its HITs is made.

        MTurk checks the funds of each HIT as it is created, so a batch bigger than the balance
        used to stop half-way: some HITs live and worked, the run ended, the rest waited for a
        top-up. The most the batch's new HITs and re-asks can cost (every assignment approved,
        with MTurk's fees, and the largest top-up bonus ``pay.max_top_up`` allows on each, with its
        fee: a bonus the balance cannot pay would leave slow workers waiting for it) is compared
        with the available balance first, and so is a paid qualification test's reward and fee once
        per assignment (whoever takes one may be a worker not paid for the test yet). HITs this
        batch already recorded an intent for are not counted again (a rerun after a top-up goes on)."""
        test = self.params.qualifications.test
        test_cost = test.reward + fee_for(test.reward, 1) if test is not None else 0.0
        need = 0.0
        for group, hit in zip(groups, earlier, strict=True):
            gkey = _digest(*(t.item_id for t in group), n=24)
            if self.store.exists(f"hits/{batch_id}/{gkey}.intent.json") or self.store.exists(self._hit_key(batch_id, gkey)):
                continue
            reward = round(sum(t.reward for t in group), 2)
            replicas = group[0].replicas
            if hit is not None:  # a re-ask: more assignments on the item's earlier HIT, at its reward
                reward = float(hit["reward"])
            else:
                self._check_assignments(replicas)  # a setting's error comes before any call
            bonus = bonus_cap(reward, self.context.max_top_up)
            need += replicas * (reward + fee_for(reward, replicas) + (bonus + fee_for(bonus, 1) if bonus > 0 else 0.0)
                                + test_cost)
        need = round(need, 2)
        if need <= 0:
            return
        balance = float(self._call("get_account_balance").get("AvailableBalance", "0"))
        if balance < need:
            extras = ["MTurk's fees"] + (["the largest top-up bonuses pay.max_top_up allows"] if self.context.max_top_up > 0
                                         else []) + (["a qualification test paid to each worker"] if test is not None else [])
            listed = extras[0] if len(extras) == 1 else ", ".join(extras[:-1]) + ", and " + extras[-1]
            raise VendorError(f"vendor 'mturk': batch {batch_id} may cost up to ${need:,.2f} (every assignment approved, "
                              f"with {listed}) and the account's available balance is ${balance:,.2f}; add "
                              "funds (or lower sampler.batch_size) and run again: none of its HITs was created")

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        """New submitted (or already approved) assignments of the given HITs; never blocks.

        Bad assignments of other batches are settled first (``settle_late``: a decision made on
        MTurk, its auto-approval included, is booked). For a re-ask added to an earlier HIT, the
        assignments not paid with an earlier batch are this batch's (each from a worker who never
        had the HIT). A HIT that expired short of its
        assignments (some were returned or abandoned) is listed again within the batch's deadline.
        """
        self.settle_late(exclude={str(ref["batch_id"]) for ref in refs})  # books decisions made on MTurk
        skip = self._acknowledged() | {k[len("bad/"):-len(".json")] for k in self.store.list("bad/")}
        out: list[Annotation] = []
        for ref in refs:
            if (ref["batch_id"], ref["hit_id"]) in self._complete_hits:
                continue  # every assignment already seen: no need to ask MTurk again
            record = read_json(self.store, self._hit_key(ref["batch_id"], ref["group"]))
            seen = 0
            for assignment in self._assignments(ref["hit_id"]):
                aid = assignment["AssignmentId"]
                seen += 1
                if aid in self._returned or aid in skip:
                    continue
                anns = self._to_annotations(assignment, record)
                self._returned.add(aid)
                out.extend(anns)
            if seen >= record.get("base", 0) + record["replicas"]:
                self._complete_hits.add((ref["batch_id"], ref["hit_id"]))
            else:
                self._repost_if_expired(record, seen)
        return out

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        """Approve or reject each MTurk assignment once; a rejection needs a reason."""
        if not accept and not (reason and reason.strip()):
            raise VendorError("vendor 'mturk': a rejection needs a reason the worker can read (RequesterFeedback)")
        if reason is not None and len(reason) > 1024:
            raise VendorError(f"vendor 'mturk': reason has {len(reason)} characters, expected at most 1024")
        by_assignment: dict[str, list[Annotation]] = {}
        for a in assignments:
            by_assignment.setdefault(self._mturk_assignment_id(a), []).append(a)
        for aid, anns in sorted(by_assignment.items()):
            key = f"acks/{aid}.json"
            if self.store.exists(key):
                continue  # decided before: never approve or reject twice
            status = "Approved" if accept else "Rejected"
            current = self._decide(aid, accept=accept, feedback=reason)
            if current != status:
                raise VendorError(f"vendor 'mturk': cannot mark assignment {aid} {status.lower()}: it is {current} already")
            reward = round(sum(a.reward for a in anns), 2)
            write_json(self.store, key, {"assignment_id": aid, "status": status, "reason": reason,
                                         "worker_id": anns[0].worker_id, "at": utcnow().isoformat(),
                                         "reward": reward if accept else 0.0,
                                         "fee": fee_for(reward, self._assignments_of_hit(anns[0])) if accept else 0.0})
            if accept:
                self._pay_qualification_test(aid, anns[0].worker_id)

    def _decide(self, aid: str, *, accept: bool, feedback: str | None) -> str:
        """Approve or reject an assignment on MTurk; its status afterwards. A refused call (decided
        meanwhile, by MTurk's auto-approval too, or a retry after a crash or a lost answer) reads
        the status back; an assignment still undecided then is an error."""
        try:
            if accept:
                self._call("approve_assignment", AssignmentId=aid, **({"RequesterFeedback": feedback} if feedback else {}))
            else:
                self._call("reject_assignment", AssignmentId=aid, RequesterFeedback=feedback)
        except ClientError as exc:
            status = self._call("get_assignment", AssignmentId=aid)["Assignment"]["AssignmentStatus"]
            if status not in ("Approved", "Rejected"):
                raise VendorError(f"vendor 'mturk': cannot decide assignment {aid} (it is {status}): "
                                  f"{_error_message(exc)}") from exc
            return status
        return "Approved" if accept else "Rejected"

    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        """Pay ``amount`` per annotation as one bonus per MTurk assignment, once per token."""
        if amount <= 0:
            raise VendorError(f"vendor 'mturk': bonus amount={amount}: expected a positive amount")
        by_assignment: dict[str, list[Annotation]] = {}
        for a in assignments:
            by_assignment.setdefault(self._mturk_assignment_id(a), []).append(a)
        for aid, anns in sorted(by_assignment.items()):
            total = round(amount * len(anns), 2)
            self._send_bonus(aid, anns[0].worker_id, total, reason, f"{token}|{aid}")

    def block_workers(self, worker_ids: Sequence[str], *, reason: str) -> None:
        """``CreateWorkerBlock`` for each worker not blocked before; ``reason`` (the evidence) is kept
        by MTurk for the requester. Recorded after the call, so a crash before it repeats the call."""
        if len(reason) > 1024:
            reason = reason[:1021] + "..."
        for worker in sorted(set(worker_ids)):
            if block_of(self.store, worker) is not None:
                continue  # blocked before (the record is written only after MTurk accepted the block)
            try:
                self._call("create_worker_block", WorkerId=worker, Reason=reason)
            except ClientError as exc:
                raise VendorError(f"vendor 'mturk': create_worker_block for {worker} failed: {_error_message(exc)}") from exc
            record_block(self.store, worker, reason=reason, at=utcnow().isoformat())

    def _repost_if_expired(self, record: dict[str, Any], seen: int) -> None:
        """List a HIT again when it expired while returned or abandoned assignments left it short.

        Only until the batch's collect deadline (and never past its image URLs); the HIT keeps its
        assignments, so nothing is paid twice. Asked at most every ``repost_check_s`` per HIT.
        """
        now = self.clock()
        hit_id = record["hit_id"]
        if now - self._repost_checked.get(hit_id, float("-inf")) < self.params.repost_check_s:
            return
        self._repost_checked[hit_id] = now
        deadline = self._deadline(record)
        if deadline is not None and now >= deadline:
            return
        try:
            hit = self._call("get_hit", HITId=hit_id)["HIT"]
        except ClientError as exc:
            raise VendorError(f"vendor 'mturk': get_hit {hit_id} failed: {_error_message(exc)}") from exc
        missing = hit["MaxAssignments"] - hit.get("NumberOfAssignmentsCompleted", seen) - hit.get("NumberOfAssignmentsPending", 0)
        if hit.get("HITStatus") not in ("Reviewable", "Unassignable") or missing <= 0 or hit.get("NumberOfAssignmentsPending", 0):
            return  # still listed (returned work is offered again by MTurk itself), or nothing lost
        limits = [now + self.params.lifetime_s]
        if deadline is not None:  # a worker who accepts must be able to submit before the loop's last poll
            limits.append(deadline - self.params.assignment_duration_s)
        if record.get("url_expires_at") is not None:  # a worker needs the image until they submit
            limits.append(record["url_expires_at"] - self.params.assignment_duration_s)
        until = min(limits)
        if until <= now + 60:
            return
        try:
            self._call("update_expiration_for_hit", HITId=hit_id, ExpireAt=datetime.fromtimestamp(until, UTC))
        except ClientError as exc:
            raise VendorError(f"vendor 'mturk': cannot re-post HIT {hit_id}: {_error_message(exc)}") from exc
        write_json(self.store, f"reposts/{hit_id}-{int(now)}.json",
                   {"hit_id": hit_id, "batch_id": record["batch_id"], "missing": missing, "until": until, "at": now})
        log.info("mturk: HIT %s expired %d assignment(s) short; listed again until %s", hit_id, missing, until)

    def _deadline(self, record: dict[str, Any]) -> float | None:
        """When the loop stops waiting for this batch (collect.timeout_s after the HIT was sent)."""
        timeout = self.context.collect_timeout_s
        return None if timeout is None else float(record.get("at", self.clock())) + timeout

    def reposts(self) -> list[dict[str, Any]]:
        """Every time a HIT was listed again (for reports and tests)."""
        return [read_json(self.store, k) for k in sorted(self.store.list("reposts/"))]

    # -- operations beyond the protocol -------------------------------------------------
    def expire_batch(self, batch_id: str) -> list[str]:
        """Stop listing a batch's HITs (submitted work stays collectable); returns HIT ids."""
        expired: list[str] = []
        for key in sorted(self.store.list(f"hits/{batch_id}/")):
            if not key.endswith(".hit.json"):
                continue
            hit_id = read_json(self.store, key)["hit_id"]
            try:  # a time in the past expires the HIT at once
                self._call("update_expiration_for_hit", HITId=hit_id, ExpireAt=datetime(2015, 1, 1, tzinfo=UTC))
            except ClientError as exc:
                raise VendorError(f"vendor 'mturk': cannot expire HIT {hit_id}: {_error_message(exc)}") from exc
            expired.append(hit_id)
        return expired

    # -- helpers: submit ----------------------------------------------------------------
    def _groups(self, tasks: Sequence[Task], batch_id: str) -> Iterator[list[Task]]:
        """HITs of ``items_per_hit`` tasks that ask the same number of assignments.

        Tasks are bundled among those of equal redundancy (in the batch's order), so an audit item
        (5 judgments) mixed into a batch of 3-judgment items does not break its neighbours into
        one-item HITs, each paying MTurk's $0.01 minimum fee. A batch that already has HITs from
        the earlier rule (chunks in batch order, a mixed chunk split into single items) keeps it:
        a rerun must find the HITs it made, not post the items again in other groups.
        """
        n = self.params.items_per_hit
        if n == 1:  # one item a HIT: HITs are posted in the batch's order, audit and gold items mixed in
            yield from ([t] for t in tasks)
            return
        marker = f"grouping/{batch_id}.json"
        if self.store.list(f"hits/{batch_id}/") and not self.store.exists(marker):
            yield from _chunks_in_order(tasks, n)
            return
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, marker, {"items_per_hit": n, "rule": "by redundancy"}, create_only=True)
        yield from _bundled_by_redundancy(tasks, n)

    def _check_assignments(self, replicas: int) -> None:
        check_assignments(self.params, replicas)

    @classmethod
    def check_params(cls, params: dict, plan: VendorPlan) -> MTurkParams:
        """Offline check (no client is built, nothing is sent): the params and HIT size."""
        parsed = parse_params(MTurkParams, params, vendor=cls.name)
        check_assignments(parsed, max(plan.replicas_per_task, default=1), field=plan.replicas_field)
        if parsed.items_per_hit == 1:  # re-asks add assignments to the item's HIT: it grows to every judgment of it
            check_assignments(parsed, plan.judgments_per_item, field=plan.judgments_field)
        listing_s(parsed, plan.collect_timeout_s)
        check_time_allowed(parsed, plan.seconds_per_task)
        return parsed

    @staticmethod
    def _hit_key(batch_id: str, group: str) -> str:
        return f"hits/{batch_id}/{group}.hit.json"

    def _earlier_hit(self, item_id: str, batch_id: str) -> dict[str, Any] | None:
        """The first HIT of another batch that holds only ``item_id`` (a re-ask extends it)."""
        gkey = _digest(item_id, n=24)
        found = sorted(k for k in self.store.list("hits/") if k.endswith(f"/{gkey}.hit.json")
                       and not k.startswith(f"hits/{batch_id}/"))
        for key in found:
            record = read_json(self.store, key)
            if record["item_ids"] == [item_id] and not record.get("base"):
                return record
        return None

    def _extend_hit(self, task: Task, earlier: dict[str, Any], batch_id: str) -> Ref:
        """A re-ask of ``task.item_id``: ``task.replicas`` more assignments on its earlier HIT."""
        gkey = earlier["group"]
        hit_key = self._hit_key(batch_id, gkey)
        done = read_json(self.store, hit_key, default=None)
        if done is not None:
            return self._ref(done)
        hit_id = earlier["hit_id"]
        intent_key = f"hits/{batch_id}/{gkey}.intent.json"
        intent = read_json(self.store, intent_key, default=None)
        current = self._call("get_hit", HITId=hit_id)["HIT"]
        if intent is None:
            base = int(current["MaxAssignments"])
            self._check_assignments(base + task.replicas)
            intent = {**{k: earlier[k] for k in ("group", "item_ids", "rewards", "reward", "hit_id")},
                      "batch_id": batch_id, "round": task.round, "replicas": task.replicas, "base": base,
                      "is_gold": [task.is_gold], "extends": earlier["batch_id"], "at": self.clock(),
                      "token": f"cla-{_digest(self.context.project, batch_id, hit_id, task.replicas, n=56)}",
                      "url_expires_at": earlier.get("url_expires_at")}
            intent = write_json_once(self.store, intent_key, intent)
        if int(current["MaxAssignments"]) < intent["base"] + intent["replicas"]:  # not extended yet (or lost in a crash)
            try:
                self._call("create_additional_assignments_for_hit", HITId=hit_id,
                           NumberOfAdditionalAssignments=intent["replicas"], UniqueRequestToken=intent["token"])
            except ClientError as exc:
                if not _is_duplicate_token(exc):
                    raise VendorError(f"vendor 'mturk': cannot add assignments to HIT {hit_id}: {_error_message(exc)}") from exc
        if current.get("HITStatus") not in ("Assignable", "Unassignable"):  # expired: list it again for the re-ask
            until = self.clock() + listing_s(self.params, self.context.collect_timeout_s)
            if intent.get("url_expires_at") is not None:
                until = min(until, intent["url_expires_at"] - self.params.assignment_duration_s)
            self._call("update_expiration_for_hit", HITId=hit_id, ExpireAt=datetime.fromtimestamp(until, UTC))
        record = {**intent, "created_at": utcnow().isoformat(), "sandbox": self.params.sandbox}
        record = write_json_once(self.store, hit_key, record)
        return self._ref(record)

    def _submit_group(self, group: list[Task], batch_id: str, *, earlier: dict[str, Any] | None) -> Ref:
        """One HIT for ``group``, or, for a re-ask whose item has an ``earlier`` HIT, more assignments on it."""
        ctx = self.context
        items = [t.item_id for t in group]
        replicas = group[0].replicas
        if earlier is not None:  # ask somebody else: MTurk never gives a worker the same HIT twice
            return self._extend_hit(group[0], earlier, batch_id)
        self._check_assignments(replicas)
        token = request_token(ctx.project, batch_id, items, replicas, self.store_id())
        gkey = _digest(*items, n=24)
        hit_key = self._hit_key(batch_id, gkey)
        done = read_json(self.store, hit_key, default=None)
        if done is not None:
            return self._ref(done)
        round_ = group[0].round
        shown_items = items[0] if len(items) == 1 else f"{len(items)}:{items[0]}..{items[-1]}"
        annotation = f"crowdloop|{ctx.project}|r{round_}|{token}|{shown_items}"[:255]
        reward = round(sum(t.reward for t in group), 2)
        intent_key = f"hits/{batch_id}/{gkey}.intent.json"
        intent = read_json(self.store, intent_key, default=None)
        if intent is None:
            intent = {"token": token, "annotation": annotation, "batch_id": batch_id, "round": round_,
                      "group": gkey, "item_ids": items, "replicas": replicas, "rewards": [t.reward for t in group],
                      "is_gold": [t.is_gold for t in group], "reward": reward, "at": self.clock()}
            if any(self._is_image_file(t.item_id) for t in group):
                intent["url_expires_at"] = intent["at"] + self.params.image_url_expiry_s
            intent = write_json_once(self.store, intent_key, intent)
            hit_id = None
        else:
            # A previous attempt died between the intent and the HIT id. Within 24 h the token
            # still guards create_hit; later, look the HIT up by its annotation first.
            hit_id = None
            if self.clock() - float(intent["at"]) >= TOKEN_SAFE_AGE_S:
                hit_id = self._find_hit_by_annotation(intent["annotation"])
                if hit_id:
                    log.info("mturk: reconciled HIT %s for %s by RequesterAnnotation", hit_id, intent_key)
        if hit_id is None:
            hit_id = self._create_hit(group, intent)
        record = {**intent, "hit_id": hit_id, "sandbox": self.params.sandbox, "created_at": utcnow().isoformat()}
        record = write_json_once(self.store, hit_key, record)
        return self._ref(record)

    def store_id(self) -> str:
        """A random id made once per project store (``vendor/mturk/store.json``), part of every new
        HIT's token and annotation (see ``request_token``). HITs recorded before it existed keep
        the tokens in their intents."""
        if self._store_id is None:
            self._store_id = store_identity(self.store, STORE_ID_KEY)
        return self._store_id

    def _is_image_file(self, item_id: str) -> bool:
        payload = self.context.item_payload(item_id)
        return payload.get("kind") == "image" and bool(payload.get("path"))

    def _assignments_of_hit(self, a: Annotation) -> int:
        """Assignments of the HIT an annotation came from (for MTurk's 10+ surcharge)."""
        gkey = _digest(a.item_id, n=24)
        record = read_json(self.store, self._hit_key(a.batch_id, gkey), default=None)
        if record is None:
            return 1
        return int(record.get("base", 0)) + int(record["replicas"])

    @staticmethod
    def _ref(record: dict[str, Any]) -> Ref:
        return {"hit_id": record["hit_id"], "batch_id": record["batch_id"], "group": record["group"],
                "item_ids": record["item_ids"]}

    def _create_hit(self, group: list[Task], intent: dict[str, Any]) -> str:
        p = self.params
        try:
            out = self._call(
                "create_hit",
                MaxAssignments=intent["replicas"],
                AutoApprovalDelayInSeconds=p.auto_approval_delay_s,
                LifetimeInSeconds=listing_s(p, self.context.collect_timeout_s),
                AssignmentDurationInSeconds=p.assignment_duration_s,
                Reward=f"{intent['reward']:.2f}",
                Title=p.title,
                Keywords=p.keywords,
                Description=p.description,
                Question=self.question_xml(group),
                RequesterAnnotation=intent["annotation"],
                QualificationRequirements=self.qualification_requirements(),
                UniqueRequestToken=intent["token"],
            )
            return out["HIT"]["HITId"]
        except ClientError as exc:
            if not _is_duplicate_token(exc):
                raise VendorError(f"vendor 'mturk': create_hit failed: {_error_code(exc)}: {_error_message(exc)}") from exc
            found = re.search(r'HIT(?:\s+with)?\s+(?:ID|id)\s*"?([A-Z0-9]{20,40})"?', _error_message(exc))
            hit_id = found.group(1) if found else self._find_hit_by_annotation(intent["annotation"])
            if not hit_id:
                raise VendorError(
                    f"vendor 'mturk': token {intent['token']} was used before but no HIT carries annotation "
                    f"{intent['annotation']!r}; refusing to create a second HIT"
                ) from exc
            log.info("mturk: duplicate token %s resolved to existing HIT %s", intent["token"], hit_id)
            return hit_id

    def _find_hit_by_annotation(self, annotation: str) -> str | None:
        """Reconciliation: the requester's HITs carrying exactly ``annotation``."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"MaxResults": 100}
            if token:
                kwargs["NextToken"] = token
            page = self._call("list_hits", **kwargs)
            for hit in page.get("HITs", []):
                if hit.get("RequesterAnnotation") == annotation:
                    return hit["HITId"]
            token = page.get("NextToken")
            if not token or not page.get("HITs"):
                return None

    def qualification_requirements(self) -> list[dict[str, Any]]:
        q = self.params.qualifications
        reqs: list[dict[str, Any]] = []
        if q.locales:
            reqs.append({"QualificationTypeId": QUAL_LOCALE, "Comparator": "In",
                         "LocaleValues": [{"Country": c} for c in q.locales], "ActionsGuarded": "DiscoverPreviewAndAccept"})
        if q.min_approval_rate is not None:
            reqs.append({"QualificationTypeId": QUAL_APPROVAL_RATE, "Comparator": "GreaterThanOrEqualTo",
                         "IntegerValues": [q.min_approval_rate], "ActionsGuarded": "DiscoverPreviewAndAccept"})
            reqs.append({"QualificationTypeId": QUAL_NUMBER_APPROVED, "Comparator": "GreaterThanOrEqualTo",
                         "IntegerValues": [q.min_approved_hits], "ActionsGuarded": "DiscoverPreviewAndAccept"})
        if q.test is not None:
            reqs.append({"QualificationTypeId": q.test.qualification_type_id, "Comparator": "GreaterThanOrEqualTo",
                         "IntegerValues": [q.test.min_score], "ActionsGuarded": "Accept"})
        return reqs

    # -- the form -------------------------------------------------------------------------
    def question_xml(self, group: Sequence[Task]) -> str:
        """``HTMLQuestion`` with every item's content HTML-escaped (no markup from data).

        Item texts share what MTurk's 64 KB limit leaves after the form itself (measured by
        rendering it with empty texts), so many long items in one HIT are cut, not refused."""
        payloads = [image_payload(self.context, t.item_id, self.params.image_url_expiry_s) for t in group]
        skeleton = self._page(group, payloads, text_bytes=0)
        spare = MAX_QUESTION_BYTES - len(skeleton.encode("utf-8")) - 32 * len(group)  # the notes' numbers grow a little
        per_item = max(spare // max(len(group), 1), 0)
        if per_item < MIN_TEXT_BYTES and any(p.get("kind") == "text" for p in payloads):
            raise VendorError(f"vendor 'mturk': the form (guidelines, classes and their notes) leaves {per_item:,} bytes "
                              f"for each item's text in MTurk's {MAX_QUESTION_BYTES:,}-byte question; shorten "
                              "guidelines.text or the class notes, or lower items_per_hit")
        xml = self._page(group, payloads, text_bytes=per_item)
        size = len(xml.encode("utf-8"))
        if size > MAX_QUESTION_BYTES:
            raise VendorError(f"vendor 'mturk': the question for items {[t.item_id for t in group][:3]} is {size:,} bytes; "
                              f"MTurk accepts at most {MAX_QUESTION_BYTES:,}: lower items_per_hit or max_text_chars, "
                              "or shorten guidelines.text")
        return xml

    def _page(self, group: Sequence[Task], payloads: list[dict[str, Any]], *, text_bytes: int) -> str:
        blocks = [self._item_html(k, t.item_id, payload, text_bytes)
                  for k, (t, payload) in enumerate(zip(group, payloads, strict=True))]
        guide = self.context.guidelines
        page = _FORM.format(title=html.escape(self.params.title), description=html.escape(self.params.description),
                            guidelines=(f'<details open><summary><b>Guidelines</b></summary><p class="text">{html.escape(guide)}'
                                        "</p></details>" if guide else ""),
                            items="\n".join(blocks))
        if "]]>" in page:  # cannot happen with escaped content; refuse rather than break the CDATA
            raise VendorError("vendor 'mturk': the rendered form contains ']]>'")
        return (f'<HTMLQuestion xmlns="{HTML_QUESTION_NS}"><HTMLContent><![CDATA[{page}]]></HTMLContent>'
                f"<FrameHeight>{self.params.frame_height}</FrameHeight></HTMLQuestion>")

    def _item_html(self, k: int, item_id: str, payload: dict[str, Any], text_bytes: int) -> str:
        body = render_payload(payload, max_text_chars=self.params.max_text_chars, max_text_bytes=text_bytes)
        notes = self.context.class_notes
        choices = "\n".join(
            f'<label><input type="radio" name="label-{k}" value="{html.escape(c, quote=True)}" required> '
            f"{html.escape(c)}</label>"
            + (f' <span class="note">{html.escape(notes[c])}</span>' if notes.get(c) else "") + "<br>"
            for c in self.context.classes
        )
        return (f'<fieldset><legend>Item {k + 1}</legend>'
                f'<input type="hidden" name="item-{k}" value="{html.escape(item_id, quote=True)}">'
                f"{body}<div class=\"choices\">{choices}</div></fieldset>")

    # -- helpers: poll ----------------------------------------------------------------------
    def _assignments(self, hit_id: str) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"HITId": hit_id, "MaxResults": 100,
                                      "AssignmentStatuses": ["Submitted", "Approved"]}
            if token:
                kwargs["NextToken"] = token
            page = self._call("list_assignments_for_hit", **kwargs)
            yield from page.get("Assignments", [])
            token = page.get("NextToken")
            if not token or not page.get("Assignments"):
                return

    def _to_annotations(self, assignment: dict[str, Any], record: dict[str, Any]) -> list[Annotation]:
        aid = assignment["AssignmentId"]
        try:
            answers = parse_answers(assignment.get("Answer", ""))
        except ValueError as exc:
            self._report_bad(assignment, record, f"malformed answer XML: {exc}")
            return []
        items = record["item_ids"]
        labels: list[str] = []
        for k, item in enumerate(items):
            label = answers.get(f"label-{k}")
            echoed = answers.get(f"item-{k}")
            if echoed is not None and echoed != item:
                self._report_bad(assignment, record, f"answer {k} is for item {echoed!r}, expected {item!r}")
                return []
            if label not in self.context.classes:
                self._report_bad(assignment, record, f"answer {k} {label!r} is not one of {list(self.context.classes)}")
                return []
            labels.append(label)
        accepted, submitted = assignment.get("AcceptTime"), assignment.get("SubmitTime")
        seconds = (submitted - accepted).total_seconds() if accepted and submitted else 0.0
        per_item = max(0.0, seconds) / len(items)
        return [
            Annotation(item_id=item, worker_id=assignment["WorkerId"], label=label, vendor=self.name,
                       assignment_id=aid if len(items) == 1 else f"{aid}:{k}", batch_id=record["batch_id"],
                       round=record["round"], submitted_at=submitted or utcnow(), duration_s=round(per_item, 3),
                       reward=record["rewards"][k], is_gold=bool(record.get("is_gold", [False] * len(items))[k]))
            for k, (item, label) in enumerate(zip(items, labels, strict=True))
        ]

    def _report_bad(self, assignment: dict[str, Any], record: dict[str, Any], problem: str) -> None:
        aid = assignment["AssignmentId"]
        log.warning("mturk: skipping assignment %s of HIT %s (worker %s): %s", aid, record["hit_id"],
                    assignment.get("WorkerId"), problem)
        self._returned.add(aid)
        with contextlib.suppress(RecordExistsError):
            submitted = assignment.get("SubmitTime")
            write_json(self.store, f"bad/{aid}.json", {"assignment_id": aid, "hit_id": record["hit_id"],
                                                       "batch_id": record["batch_id"],
                                                       "worker_id": assignment.get("WorkerId"), "problem": problem,
                                                       "submitted_at": submitted.isoformat() if submitted else None,
                                                       "answer": str(assignment.get("Answer", ""))[:4000]},
                       create_only=True)

    def bad_assignments(self) -> list[dict[str, Any]]:
        """Assignments skipped because their answers could not be used: never labels; ``settle_late``
        decides them, or books the decision made on MTurk (its auto-approval included)."""
        return [read_json(self.store, k) for k in sorted(self.store.list("bad/"))]

    # -- work the loop could not use ------------------------------------------------------------
    def settle_late(self, *, exclude: Sequence[str] = (), unmatched: str = "keep") -> list[dict[str, Any]]:
        """Decide the bad assignments of batches not in ``exclude`` (docs/mturk.md, "Answers that
        cannot be used"): MTurk approves, and pays, an undecided assignment ``auto_approval_delay_s``
        after it was submitted, outside the loop's books. ``unmatched``: ``keep`` (decide on MTurk;
        booked once decided), ``approve`` or ``reject`` (with the problem as feedback). A decision
        made on MTurk, its auto-approval included, is booked here (``acks/``, ``decided_by:
        "mturk"``), so ``ledger()`` and ``late_paid()`` see the money. MTurk takes no work after a
        batch's deadline (the listing cap), so nothing else comes late. Returns the decisions booked now.
        """
        if unmatched not in UNMATCHED_POLICIES:
            raise VendorError(f"vendor 'mturk': unmatched={unmatched!r}; expected one of {', '.join(UNMATCHED_POLICIES)}")
        made = []
        for bad, hit in self._undecided_bad():
            aid, batch = bad["assignment_id"], bad["batch_id"]
            if batch in exclude:
                continue
            status = self._call("get_assignment", AssignmentId=aid)["Assignment"]["AssignmentStatus"]
            by, feedback = "mturk", None
            if status == "Submitted" and unmatched != "keep":
                accept = unmatched == "approve"
                feedback = None if accept else unusable_feedback(bad["problem"])
                status = self._decide(aid, accept=accept, feedback=feedback)
                by = "loop" if (status == "Approved") == accept else "mturk"
            if status not in ("Approved", "Rejected"):
                continue  # still waiting for somebody's decision
            reward, fee = self._price(hit) if status == "Approved" else (0.0, 0.0)
            record = {"assignment_id": aid, "status": status, "reason": feedback, "worker_id": bad.get("worker_id"),
                      "batch_id": batch, "unusable": bad["problem"], "decided_by": by,
                      "at": utcnow().isoformat(), "reward": reward, "fee": fee}
            if by == "mturk":
                log.warning("mturk: assignment %s (answer not usable) was %s on MTurk; booked", aid, status.lower())
            if reward:  # also apart, so late_paid reads these few records, not every decision; first, so
                # a crash before the decision record leaves the assignment to the next sweep, which books it
                with contextlib.suppress(RecordExistsError):
                    write_json(self.store, f"late/{aid}.json", record, create_only=True)
            with contextlib.suppress(RecordExistsError):
                write_json(self.store, f"acks/{aid}.json", record, create_only=True)
            made.append(record)
        return made

    def late_paid(self) -> dict[str, float]:
        """Per batch, reward + fee paid for assignments whose answers were not used (booked by
        ``settle_late``); ``Project.spent`` adds it to the batch's round."""
        out: dict[str, float] = {}
        for key in self.store.list("late/"):
            paid = read_json(self.store, key)
            out[paid["batch_id"]] = round(out.get(paid["batch_id"], 0.0) + paid["reward"] + paid["fee"], 2)
        return out

    def unmatched_pending(self) -> list[dict[str, Any]]:
        """Bad assignments nobody has decided yet (as far as the store knows), each with the reward
        and fee at stake and the day MTurk approves it on its own (``auto_approval_delay_s`` after
        submission); the keys are the platform-neutral ones ``crowdloop status`` prints."""
        out = []
        for bad, hit in self._undecided_bad():
            due = None
            if bad.get("submitted_at"):
                due = (datetime.fromisoformat(bad["submitted_at"])
                       + timedelta(seconds=self.params.auto_approval_delay_s)).date().isoformat()
            out.append({"submission_id": bad["assignment_id"], "participant_id": bad.get("worker_id"),
                        "batch_id": bad["batch_id"], "problem": bad["problem"],
                        "at_stake": round(sum(self._price(hit)), 2), "auto_approval_after": due})
        return out

    def _undecided_bad(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Each bad assignment not decided yet, with the record of its HIT as first created (its
        reward and size; a re-ask's extension is not it) and ``batch_id`` filled in: the batch the
        answer came for, else the HIT's (bad records written before they named it). Every poll runs
        this: the HIT records are read only when something is undecided, and then once."""
        decided = self._acknowledged()
        pending = [b for b in self.bad_assignments() if b["assignment_id"] not in decided]
        if not pending:
            return
        first = {}
        for key in self.store.list("hits/"):
            if key.endswith(".hit.json"):
                record = read_json(self.store, key)
                if not record.get("base"):
                    first[record["hit_id"]] = record
        for bad in pending:
            hit = first.get(bad["hit_id"])
            if hit is not None:
                yield bad | {"batch_id": bad.get("batch_id") or hit["batch_id"]}, hit

    @staticmethod
    def _price(hit: dict[str, Any]) -> tuple[float, float]:
        """Reward and MTurk's fee of one assignment of ``hit`` (its items' rewards together)."""
        reward = round(sum(hit["rewards"]), 2)
        return reward, fee_for(reward, int(hit.get("base", 0)) + int(hit["replicas"]))

    def _acknowledged(self) -> set[str]:
        return {k[len("acks/"):-len(".json")] for k in self.store.list("acks/")}

    @staticmethod
    def _mturk_assignment_id(a: Annotation) -> str:
        return a.assignment_id.split(":", 1)[0]

    # -- helpers: money -----------------------------------------------------------------------
    def _send_bonus(self, aid: str, worker_id: str, amount: float, reason: str, token_seed: str) -> None:
        key = f"bonuses/{_digest(token_seed, n=32)}.json"
        if self.store.exists(key):
            return  # paid before; MTurk's token is only valid for 24 h, our record forever
        token = f"clb-{_digest(token_seed, n=56)}"
        try:
            self._call("send_bonus", WorkerId=worker_id, BonusAmount=f"{amount:.2f}", AssignmentId=aid,
                       Reason=reason, UniqueRequestToken=token)
        except ClientError as exc:
            if not _is_duplicate_token(exc):
                raise VendorError(f"vendor 'mturk': send_bonus for {aid} failed: {_error_message(exc)}") from exc
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, key, {"assignment_id": aid, "worker_id": worker_id, "amount": amount,
                                         "reason": reason, "token": token, "fee": fee_for(amount, 1)}, create_only=True)

    def _pay_qualification_test(self, aid: str, worker_id: str) -> None:
        test = self.params.qualifications.test
        if test is None:
            return
        self._send_bonus(aid, worker_id, test.reward,
                         "Payment for the qualification test you took for these tasks. Thank you!",
                         f"qualification-test|{test.qualification_type_id}|{worker_id}")

    def ledger(self) -> dict[str, float | int]:
        """Money and HITs as recorded in the vendor's store: for reconciliation and reports."""
        records = [read_json(self.store, k) for k in self.store.list("hits/") if k.endswith(".hit.json")]
        hits = [h for h in records if not h.get("base")]  # a re-ask's extension of an earlier HIT is no HIT of its own
        acks = [read_json(self.store, k) for k in self.store.list("acks/")]
        bonuses = [read_json(self.store, k) for k in self.store.list("bonuses/")]
        approved = [a for a in acks if a["status"] == "Approved"]
        paid = round(sum(a.get("reward", 0.0) for a in approved), 2)
        fees = round(sum(a.get("fee", 0.0) for a in approved) + sum(b["fee"] for b in bonuses), 2)
        return {"hits": len(hits), "approved": len(approved), "rejected": sum(a["status"] == "Rejected" for a in acks),
                "paid": paid, "bonuses": round(sum(b["amount"] for b in bonuses), 2),
                "bonus_fees": round(sum(b["fee"] for b in bonuses), 2), "fees": fees,
                "total": round(paid + sum(b["amount"] for b in bonuses) + fees, 2)}


# -- rendering and parsing (pure functions, tested directly) ---------------------------------
def unusable_feedback(problem: str) -> str:
    """The RequesterFeedback of a rejected assignment whose answer could not be used (at most
    1024 characters, as MTurk allows): what was wrong, and that the worker can write back."""
    return (f"Your answer could not be read as an answer to this task ({problem[:300]}), so it cannot be used. "
            "If you think this is wrong, contact the requester through MTurk.")


def shorten_text(text: str, *, max_chars: int, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_chars`` characters whose escaped UTF-8 form fits
    ``max_bytes`` (escaping can grow ``<`` to four bytes, a character may take four)."""
    cut = text[:max_chars]
    if len(html.escape(cut).encode("utf-8")) <= max_bytes:
        return cut
    lo, hi = 0, len(cut)
    while lo < hi:  # binary search on the prefix length
        mid = (lo + hi + 1) // 2
        if len(html.escape(cut[:mid]).encode("utf-8")) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return cut[:lo]


def render_payload(payload: dict[str, Any], *, max_text_chars: int = 4000, max_text_bytes: int = MAX_QUESTION_BYTES) -> str:
    """HTML for one item: tabular rows, text or an image URL; every value escaped. A text longer
    than the caps is cut, with a note that tells the worker so."""
    kind = payload.get("kind")
    if kind == "tabular":
        rows = "".join(
            f"<tr><th>{html.escape(str(c))}</th><td>{html.escape(_fmt_value(v))}</td></tr>"
            for c, v in zip(payload.get("columns", []), payload.get("values", []), strict=True)
        )
        return f'<table class="row">{rows}</table>'
    if kind == "text":
        text = str(payload.get("text", ""))
        shown = shorten_text(text, max_chars=max_text_chars, max_bytes=max_text_bytes)
        note = ("" if shown == text else f'<p class="cut">Shortened for this form: showing the first {len(shown):,} '
                f"of {len(text):,} characters.</p>")
        return f'<p class="text" dir="auto">{html.escape(shown)}</p>{note}'
    if kind == "image_url":
        url = str(payload.get("url", ""))
        if not re.match(r"^https?://", url, flags=re.IGNORECASE):
            raise VendorError(f"vendor 'mturk': image url {url[:80]!r}: expected an http(s) URL (e.g. an S3 presigned URL)")
        return f'<img class="item" src="{html.escape(url, quote=True)}" alt="item to classify">'
    if kind == "image" and payload.get("pixels") is not None:
        return _render_pixels(payload["pixels"])
    if kind == "image":
        raise VendorError(
            f"vendor 'mturk': image item {str(payload.get('path', ''))[:80]!r} is a local file that workers cannot "
            "open; put the images on S3 so tasks carry an http(s) URL (payload kind 'image_url')"
        )
    raise VendorError(f"vendor 'mturk': item payload kind {kind!r}: expected one of tabular, text, image, image_url")


def _render_pixels(pixels: list[list[float]]) -> str:
    """A small grayscale grid (e.g. an 8×8 digit) as a table of shaded cells: no external resources."""
    values = [float(v) for row in pixels for v in row]
    top = max(values) or 1.0
    cells = "".join(
        "<tr>" + "".join(
            f'<td style="width:24px;height:24px;background:rgb({g},{g},{g})"></td>'
            for g in (round(255 * (1 - float(v) / top)) for v in row)
        ) + "</tr>"
        for row in pixels
    )
    return f'<table class="pixels" style="border-collapse:collapse">{cells}</table>'


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def parse_answers(xml_text: str) -> dict[str, str]:
    """``QuestionFormAnswers`` → {QuestionIdentifier: FreeText}; ``ValueError`` if malformed.

    Document type declarations are refused outright, so entity expansion cannot be abused.
    """
    if not isinstance(xml_text, str) or not xml_text.strip():
        raise ValueError("empty answer")
    if len(xml_text) > MAX_ANSWER_CHARS:
        raise ValueError(f"answer has {len(xml_text)} characters, expected at most {MAX_ANSWER_CHARS}")
    if "<!DOCTYPE" in xml_text.upper() or "<!ENTITY" in xml_text.upper():
        raise ValueError("document type declarations are not allowed")
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(str(exc)) from None
    if _local(root.tag) != "QuestionFormAnswers":
        raise ValueError(f"root element {_local(root.tag)!r}, expected 'QuestionFormAnswers'")
    out: dict[str, str] = {}
    for answer in root:
        if _local(answer.tag) != "Answer":
            continue
        qid = text = None
        for child in answer:
            name = _local(child.tag)
            if name == "QuestionIdentifier":
                qid = (child.text or "").strip()
            elif name == "FreeText":
                text = child.text or ""
        if not qid:
            raise ValueError("an Answer without QuestionIdentifier")
        out[qid] = text if text is not None else ""
    return out


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# The worker's page. MTurk appends assignmentId and turkSubmitTo to the frame URL; in preview
# the id is ASSIGNMENT_ID_NOT_AVAILABLE and the form cannot be submitted.
_FORM = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:46em;margin:1em auto}}table.row td,table.row th{{padding:2px 8px;text-align:left}}
img.item{{max-width:100%}}fieldset{{margin-bottom:1em}}p.text{{white-space:pre-wrap;overflow-wrap:anywhere;unicode-bidi:isolate}}
p.cut{{color:#555;font-size:.85em;font-style:italic}}span.note{{color:#555;font-size:.9em}}</style></head>
<body><h3>{title}</h3><p>{description}</p>{guidelines}
<form id="f" method="post" action="https://www.mturk.com/mturk/externalSubmit">
<input type="hidden" id="assignmentId" name="assignmentId" value="">
{items}
<button type="submit" id="submit">Submit</button>
</form>
<script>
(function(){{var q=new URLSearchParams(window.location.search);var a=q.get("assignmentId")||"";
document.getElementById("assignmentId").value=a;var to=q.get("turkSubmitTo");
if(to&&/^https:\\/\\/(www|workersandbox)\\.mturk\\.com$/.test(to)){{document.getElementById("f").action=to+"/mturk/externalSubmit";}}
if(!a||a==="ASSIGNMENT_ID_NOT_AVAILABLE"){{var b=document.getElementById("submit");b.disabled=true;b.textContent="Accept the HIT to answer";}}}})();
</script></body></html>"""  # noqa: E501 - an HTML/JS template, not code
