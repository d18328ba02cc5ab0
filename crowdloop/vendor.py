"""The vendor protocol: how crowdloop sends tasks to humans and gets answers back.

A vendor is a class registered in the ``crowdloop.vendors`` entry-point group and built as
``VendorClass(params, context)``. It must honour four promises:

* ``submit(tasks, batch_id=...)`` is idempotent per ``batch_id``: a retry after a crash or
  timeout never creates a second task on the vendor's side; it returns the same refs.
* ``poll(refs)`` never blocks and returns only assignments it has not returned before (in
  this process); the loop also de-duplicates by ``(vendor, assignment_id)``.
* ``acknowledge(assignments, accept=..., reason=...)`` records the payment decision; a
  rejection always carries a reason the worker sees.
* optional ``bonus(assignments, amount=..., reason=..., token=...)`` pays a top-up once per token.

What else a vendor can do it declares in ``capabilities``, a frozenset of the names below; the
engine plans by these, never by a vendor's name, and a config that asks for something the
vendor cannot do fails before anything is sent (``check_capabilities``). A vendor whose
abilities depend on its params also defines ``capabilities_for(params)`` (a classmethod).

* ``blocks_workers``: ``block_workers(worker_ids, reason=...)`` — a blocked worker gets no new
  task from then on (idempotent per worker; work done before the block is still paid);
* ``excludes_workers_per_item``: a task's ``exclude_workers`` never receive it (a re-ask goes
  to somebody who has not answered the item);
* ``images_by_url``: the vendor's workers open images by http(s) URL; the engine then gives
  the vendor ``context.image_url(item_id, expires_s)`` (S3 presigned URLs);
* ``pays``: the vendor moves the money itself (MTurk); the others record decisions for the
  team's own payroll;
* ``needs_ground_truth``: the vendor answers from the pool's labels (the simulated crowd) and
  gets ``context.ground_truth``.

Fees: a vendor that charges by its own rule defines ``fee_for(reward, n_assignments_per_task)``
(a staticmethod: the fee of one assignment paid ``reward``, or of one bonus with ``1``); the
ledger, the budget planner and the vendor's own accounting use that one function
(``crowdloop.pay.fee_function``). A vendor that pays a judgment more than the task's reward (Prolific
prices whole minutes) defines ``price_for(reward, hourly_wage)`` (a staticmethod) for the budget planner.

A vendor whose workers are a known, finite group (the simulated crowd, the local app's
annotators) says how many in an optional ``workforce`` attribute (``None``: not known, e.g. a
marketplace). The engine then never asks more than that group can give: a task gets at most as
many judgments as there are workers who have neither answered its item nor been blocked
(``crowdloop.engine.dispatching``), and a worn-out gold item is not asked again
(``crowdloop.engine.quality.gold_plan``).

An optional classmethod lets ``crowdloop check`` (``crowdloop.checks``) find a bad setting
before anything is sent or paid: ``check_params(params, plan)`` validates ``params`` against the
vendor's own model and against the ``VendorPlan`` (judgments per item, classes), raising a
one-line ``ConfigError``; it must contact no service and write nothing. (A class attribute
``needs_ground_truth = True`` still counts as the capability of that name.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from crowdloop.config import format_validation_error
from crowdloop.credentials import DEFAULT as DEFAULT_CREDENTIALS
from crowdloop.credentials import Credentials
from crowdloop.errors import ConfigError, RecordExistsError
from crowdloop.records import Annotation, Task, content_hash, dumps
from crowdloop.storage import Store, read_json, write_json

Ref = dict[str, Any]


@dataclass(frozen=True)
class VendorContext:
    """What the loop gives a vendor: its own store prefix, the task setup and item content."""

    project: str
    name: str
    seed: int
    classes: tuple[str, ...]
    store: Store  # a prefix of the project store reserved for this vendor's state
    item_payload: Callable[[str], dict[str, Any]]
    # Only a vendor declaring ``needs_ground_truth`` (the simulated crowd) gets ground truth.
    ground_truth: Callable[[Sequence[str]], list[str | None]] | None = None
    # For vendors declaring ``images_by_url``: an http(s) URL of an image item valid for at least
    # ``expires_s`` seconds (an S3 presigned URL), or a one-line ``CrowdloopError``.
    image_url: Callable[[str, float], str] | None = None
    # How long the loop waits for a batch's answers (``collect.timeout_s``): vendors that re-post
    # returned work do so only within it.
    collect_timeout_s: float | None = None
    # Where the vendor's credentials come from (named secret blocks, else the default chain).
    credentials: Credentials = DEFAULT_CREDENTIALS
    # The project's target wage (``pay.hourly_wage``, ``pay.currency``): vendors that price a
    # session of several minutes themselves (Prolific) pay at least this rate.
    hourly_wage: float | None = None
    currency: str = "USD"
    # What annotators read (``guidelines``): the task's rules and a note per class. A vendor that
    # shows people a task shows them; plain text, which the vendor escapes for its page.
    guidelines: str = ""
    class_notes: Mapping[str, str] = field(default_factory=dict)
    # The most a top-up bonus may add to an assignment, as a share of its reward (``pay.max_top_up``
    # when ``pay.top_up_bonus``, else 0): a vendor that checks the account's funds before a batch
    # reserves it, so the bonuses owed for slow tasks can be paid.
    max_top_up: float = 0.0


@runtime_checkable
class Vendor(Protocol):
    name: str

    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]: ...

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]: ...

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None: ...


# What ``settle_late(unmatched=...)`` does with paid-for work that came back without a usable answer
# (Prolific: no answer in the app; MTurk: an answer that could not be read): ``keep`` it for a
# person to decide on the platform (booked once they have), ``approve`` (pay) or ``reject`` it.
UNMATCHED_POLICIES = ("keep", "approve", "reject")


# -- capabilities (see the module docstring) ----------------------------------------------------
BLOCKS_WORKERS = "blocks_workers"
EXCLUDES_WORKERS_PER_ITEM = "excludes_workers_per_item"
IMAGES_BY_URL = "images_by_url"
PAYS = "pays"
NEEDS_GROUND_TRUTH = "needs_ground_truth"
CAPABILITIES: dict[str, str] = {  # name -> what a vendor without it cannot do (for one-line errors)
    BLOCKS_WORKERS: "block workers",
    EXCLUDES_WORKERS_PER_ITEM: "keep a task from the workers who already answered its item",
    IMAGES_BY_URL: "show images by URL",
    PAYS: "pay workers",
    NEEDS_GROUND_TRUTH: "answer from ground truth",
}


def capabilities_of(vendor_cls: Any, params: dict[str, Any] | None = None) -> frozenset[str]:
    """What ``vendor_cls`` can do with ``params``: its ``capabilities_for(params)`` if it has one,
    else its ``capabilities`` (none declared: nothing beyond the four promises)."""
    by_params = getattr(vendor_cls, "capabilities_for", None)
    found = by_params(dict(params or {})) if callable(by_params) else getattr(vendor_cls, "capabilities", frozenset())
    if getattr(vendor_cls, "needs_ground_truth", False) is True:  # the earlier spelling of that capability
        found = frozenset(found) | {NEEDS_GROUND_TRUTH}
    unknown = sorted(set(found) - set(CAPABILITIES))
    if unknown:
        raise ConfigError(f"vendor.name: vendor {getattr(vendor_cls, 'name', vendor_cls)!r} declares unknown "
                          f"capabilities {unknown}; expected names from {sorted(CAPABILITIES)}")
    return frozenset(found)


def required_capabilities(config: Any) -> dict[str, str]:
    """Capabilities the config asks of its vendor, each with the setting that asks for it."""
    need: dict[str, str] = {}
    gold, consensus = config.gold, config.consensus
    if gold.enabled:
        need[BLOCKS_WORKERS] = f"gold.share={gold.share:g} (workers below gold.min_accuracy={gold.min_accuracy:g} are blocked)"
    elif consensus.block_below_agreement is not None:
        need[BLOCKS_WORKERS] = f"consensus.block_below_agreement={consensus.block_below_agreement:g}"
    elif consensus.block_rings:
        need[BLOCKS_WORKERS] = "consensus.block_rings=true (members of rings of colluders are blocked)"
    if consensus.adaptive:
        need[EXCLUDES_WORKERS_PER_ITEM] = (f"consensus.confidence_threshold={consensus.confidence_threshold:g} "
                                           "(adaptive re-asks go to somebody else)")
    elif gold.enabled:
        need[EXCLUDES_WORKERS_PER_ITEM] = f"gold.share={gold.share:g} (a gold item goes to workers who have not answered it)"
    if config.baseline.random:
        # the random twin buys as many labels again: from a simulated crowd a learning curve, from
        # people a second bill for work nobody uses (run sampler: random as a project of its own)
        need[NEEDS_GROUND_TRUTH] = ("baseline.random=true (the random twin buys every label again; with people "
                                    "that is a second bill)")
    return need


def check_capabilities(vendor_cls: Any, config: Any) -> frozenset[str]:
    """One line naming the vendor and the missing capability if ``config`` asks for more than the
    vendor can do; else the vendor's capabilities. Offline: nothing is built or contacted."""
    have = capabilities_of(vendor_cls, config.vendor.params)
    for capability, wanted_by in required_capabilities(config).items():
        if capability not in have:
            raise ConfigError(
                f"vendor.name: vendor {config.vendor.name!r} cannot {CAPABILITIES[capability]} (it lacks the capability "
                f"{capability!r}{_params_hint(vendor_cls, capability)}), but {wanted_by} needs it; "
                "choose a vendor that has it or turn the setting off")
    return have


def _params_hint(vendor_cls: Any, capability: str) -> str:
    hint = getattr(vendor_cls, "capability_hints", {}).get(capability)
    return f"; {hint}" if hint else ""


@dataclass(frozen=True)
class VendorPlan:
    """What the loop will ask of a vendor, known before anything is sent (see ``check_params``)."""

    judgments_per_item: int  # the most judgments one item gets over all rounds, each by another worker
    judgments_field: str = "consensus.redundancy"  # the config field that sets it, for messages
    replicas_per_task: tuple[int, ...] = ()  # the replica counts one batch's tasks can hold (several with re-asks)
    replicas_field: str = "consensus.redundancy"
    classes: tuple[str, ...] = ()  # the class list; empty when the pool was not loaded
    hourly_wage: float | None = None  # pay.hourly_wage (a platform with a minimum rate checks it)
    currency: str = "USD"  # pay.currency
    # collect.timeout_s: how long after a dispatch the loop's last poll comes (None: not known)
    collect_timeout_s: float | None = None
    # pay.pilot_seconds_per_task: how long one item is expected to take (None: not known)
    seconds_per_task: float | None = None


def check_vendor_params(vendor_cls: type, params: dict[str, Any], plan: VendorPlan) -> None:
    """Run the vendor's ``check_params`` if it has one (offline, writes nothing)."""
    check = getattr(vendor_cls, "check_params", None)
    if check is not None:
        check(dict(params), plan)


M = TypeVar("M", bound=BaseModel)


def parse_params(model: type[M], params: dict[str, Any], *, vendor: str) -> M:
    """Validate a vendor's ``params`` with a one-line error under ``vendor.params``."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        message = format_validation_error(exc, source=f"vendor {vendor!r}", model=model)
        message = message.replace(f"vendor {vendor!r}: <top level>: ", "vendor.params: ", 1)
        raise ConfigError(message.replace(f"vendor {vendor!r}: ", "vendor.params.", 1)) from None


# -- the decision ledger: acks/<hash of the assignment ids>.json, written once -----------------
def record_decision(store: Store, assignments: Sequence[Annotation], /, *, accept: bool, reason: str | None,
                    **extra: Any) -> list[str]:
    """Write one approve/reject decision for the ``assignments`` not decided before, under ``acks/``.

    The key is a hash of the sorted assignment ids, written create-only, and assignments with a
    decision already are left out: a retried acknowledge (or one that regroups assignments) never
    pays twice. The record holds the ids, the decision, the reason, what was paid (rewards when
    accepted) and any vendor-specific ``extra`` fields. Returns the ids decided now.
    """
    done = acknowledged(store)
    fresh = [a for a in assignments if a.assignment_id not in done]
    ids = sorted(a.assignment_id for a in fresh)
    if ids:
        record = {"assignment_ids": ids, "accept": accept, "reason": reason,
                  "paid": round(sum(a.reward for a in fresh), 2) if accept else 0.0, **extra}
        with contextlib.suppress(RecordExistsError):  # decided before: a retry never pays twice
            write_json(store, f"acks/{content_hash(dumps(ids))}.json", record, create_only=True)
    return ids


def acknowledged(store: Store) -> set[str]:
    """Assignment ids with a recorded decision (see ``record_decision``)."""
    done: set[str] = set()
    for key in store.list("acks/"):
        done.update(read_json(store, key)["assignment_ids"])
    return done


# -- the block list: blocks/<digest of the worker id>.json, written once per worker -------------
def record_block(store: Store, worker_id: str, *, reason: str, **extra: Any) -> bool:
    """Record that ``worker_id`` gets no new task, and why (create-only; the first reason stays).

    Returns whether this call recorded it (False: blocked before, e.g. a rerun after a crash).
    """
    if not reason or not reason.strip():
        raise ConfigError(f"blocking worker {worker_id!r} needs a reason the worker can read")
    record = {"worker_id": worker_id, "reason": reason, **extra}
    try:
        write_json(store, f"blocks/{content_hash(worker_id.encode(), 24)}.json", record, create_only=True)
    except RecordExistsError:
        return False
    return True


def block_of(store: Store, worker_id: str) -> dict[str, Any] | None:
    """The block record of ``worker_id`` (``worker_id``, ``reason``, ...), or None."""
    return read_json(store, f"blocks/{content_hash(worker_id.encode(), 24)}.json", default=None)


def blocked_workers(store: Store) -> dict[str, str]:
    """Every blocked worker and the reason they were told."""
    out: dict[str, str] = {}
    for key in store.list("blocks/"):
        record = read_json(store, key, default=None)
        if record:
            out[str(record["worker_id"])] = str(record.get("reason", ""))
    return out


def image_payload(context: VendorContext, item_id: str, expires_s: float) -> dict[str, Any]:
    """``item_id``'s payload, an image file replaced by an http(s) URL valid for ``expires_s``
    (``{"kind": "image_url", "url": ...}``) when the engine gives the vendor ``image_url``."""
    payload = context.item_payload(item_id)
    if payload.get("kind") == "image" and payload.get("path") and context.image_url is not None:
        return {"kind": "image_url", "url": context.image_url(item_id, expires_s)}
    return payload
