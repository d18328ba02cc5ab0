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
"""

from __future__ import annotations

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


M = TypeVar("M", bound=BaseModel)


def parse_params(model: type[M], params: dict[str, Any], *, vendor: str) -> M:
    """Validate a vendor's ``params`` with a one-line error under ``vendor.params``."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        message = format_validation_error(exc, source=f"vendor {vendor!r}")
        raise ConfigError(message.replace(f"vendor {vendor!r}: ", f"vendor.params.", 1)) from None


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
        try:
            write_json(store, f"acks/{content_hash(dumps(ids))}.json", record, create_only=True)
        except RecordExistsError:
            pass  # decided before: a retry never pays twice
    return ids


def acknowledged(store: Store) -> set[str]:
    """Assignment ids with a recorded decision (see ``record_decision``)."""
    done: set[str] = set()
    for key in store.list("acks/"):
        done.update(read_json(store, key)["assignment_ids"])
    return done
