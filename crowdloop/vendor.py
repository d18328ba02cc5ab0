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

Two optional class-level conventions let ``crowdloop check`` (``crowdloop.checks``) find a bad
setting before anything is sent or paid:

* ``check_params(params, plan)`` (a classmethod): validate ``params`` against the vendor's own
  model and against the ``VendorPlan`` (judgments per item, classes), raising a one-line
  ``ConfigError``. It must contact no service and write nothing.
* ``needs_ground_truth = True``: the vendor answers from the pool's ground truth (the simulated
  crowd), so every pool item needs a label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    # Only the simulated crowd may read ground truth; real vendors get None.
    ground_truth: Callable[[Sequence[str]], list[str | None]] | None = None
    # Where the vendor's credentials come from (named secret blocks, else the default chain).
    credentials: Credentials = DEFAULT_CREDENTIALS


@runtime_checkable
class Vendor(Protocol):
    name: str

    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]: ...

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]: ...

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class VendorPlan:
    """What the loop will ask of a vendor, known before anything is sent (see ``check_params``)."""

    judgments_per_item: int  # the most judgments one item gets over all rounds, each by another worker
    judgments_field: str = "consensus.redundancy"  # the config field that sets it, for messages
    replicas_per_task: tuple[int, ...] = ()  # the replica counts one batch's tasks can hold (several with re-asks)
    replicas_field: str = "consensus.redundancy"
    classes: tuple[str, ...] = ()  # the class list; empty when the pool was not loaded


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
    """Write one approve/reject decision for ``assignments`` under ``acks/``, create-only.

    The key is a hash of the sorted assignment ids, so a retried acknowledge finds the first
    decision and never pays twice. The record holds the ids, the decision, the reason, what
    was paid (rewards when accepted) and any vendor-specific ``extra`` fields. Returns the ids
    (empty: nothing to record).
    """
    ids = sorted(a.assignment_id for a in assignments)
    if ids:
        record = {"assignment_ids": ids, "accept": accept, "reason": reason,
                  "paid": round(sum(a.reward for a in assignments), 2) if accept else 0.0, **extra}
        with contextlib.suppress(RecordExistsError):  # decided before: a retry never pays twice
            write_json(store, f"acks/{content_hash(dumps(ids))}.json", record, create_only=True)
    return ids


def acknowledged(store: Store) -> set[str]:
    """Assignment ids with a recorded decision (see ``record_decision``)."""
    done: set[str] = set()
    for key in store.list("acks/"):
        done.update(read_json(store, key)["assignment_ids"])
    return done
