"""Contract tests for vendors, for crowdloop's own and third-party plug-ins.

``check_vendor`` drives a vendor the way the loop does and fails with a
``VendorContractError`` naming the broken promise:

* ``submit`` is idempotent per ``batch_id`` (same refs, no second task, also from a fresh
  instance, i.e. after a restart), and its refs are JSON (the loop stores them);
* ``poll`` never blocks, returns valid annotations for the submitted tasks only, never the
  same assignment twice, and exactly ``replicas`` per item once workers are done;
* ``acknowledge`` accepts approvals (twice, as a retry would) and refuses a rejection
  without a reason;
* optional ``bonus`` accepts a repeated token; with a ``ledger()`` method, repeated
  submits, acknowledgements and bonuses must leave the vendor's accounting unchanged, and its
  ``paid`` (when it keeps one) grows by exactly the rewards approved.

The promises a vendor declares in ``capabilities`` (``crowdloop.vendor``) are checked with a
second batch, played by the same ``respond`` (if any) by the worker ids in ``workers``:

* ``blocks_workers``: ``workers[0]`` is blocked (twice: idempotent) after the first batch; the
  second batch gets no answer from them, and their first-batch answers are still approved;
* ``excludes_workers_per_item``: the second batch re-asks every first-batch item of somebody
  else (``exclude_workers`` = who answered it); no re-ask comes back from an excluded worker.

``respond`` must let every worker it plays try every task (a blocked or excluded worker too): a
vendor that cannot stop them then fails the check.

Vendors whose answers come from people get them through ``respond(vendor, tasks, batch_id)``,
a callback that plays the workers (drops a result file, posts to the annotation app, ...).

Usage in a plug-in's test suite::

    from crowdloop.testing import check_vendor
    report = check_vendor(MyVendor, params={"api_url": "..."}, respond=fake_workers)
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crowdloop.errors import CrowdloopError
from crowdloop.records import Annotation, Task
from crowdloop.storage import PrefixedStore, Store
from crowdloop.vendor import BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM, VendorContext, capabilities_of

Respond = Callable[[Any, Sequence[Task], str], None]

DEFAULT_CLASSES = ("cat", "dog", "bird")


class VendorContractError(AssertionError):
    """A vendor broke one of the promises of the vendor protocol (see ``crowdloop.vendor``)."""


@dataclass
class ContractReport:
    """What ``check_vendor`` verified, with the slowest poll (seconds) it measured."""

    vendor: str
    checks: list[str] = field(default_factory=list)
    n_annotations: int = 0
    max_poll_seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)


def make_context(store: Store, *, name: str = "vendor", classes: Sequence[str] = DEFAULT_CLASSES,
                 project: str = "contract", seed: int = 0, truth: dict[str, str] | None = None) -> VendorContext:
    """A ``VendorContext`` over ``store`` whose items are short texts ``item-0000`` ...

    ``truth`` (item id → class) is offered as ground truth, which only a simulated crowd uses.
    """
    truth = dict(truth or {})

    def item_payload(item_id: str) -> dict[str, Any]:
        return {"kind": "text", "text": f"contract item {item_id}", "columns": [], "values": []}

    def ground_truth(item_ids: Sequence[str]) -> list[str | None]:
        return [truth.get(i) for i in item_ids]

    return VendorContext(project=project, name=name, seed=seed, classes=tuple(classes),
                         store=PrefixedStore(store, f"vendor/{name}"), item_payload=item_payload,
                         ground_truth=ground_truth)


def _fail(check: str, message: str) -> VendorContractError:
    return VendorContractError(f"vendor contract, {check}: {message}")


def check_vendor(
    vendor: Any,
    *,
    params: dict[str, Any] | None = None,
    context: VendorContext | None = None,
    respond: Respond | None = None,
    n_items: int = 4,
    replicas: int = 2,
    reward: float = 0.05,
    timeout_s: float = 30.0,
    poll_interval_s: float = 0.05,
    max_poll_s: float = 5.0,
    batch_id: str = "contract-r0000",
    workers: Sequence[str] | None = None,
) -> ContractReport:
    """Run the vendor contract against ``vendor`` and return what was checked.

    ``vendor`` is either an instance, or a factory called as ``vendor(params, context)``
    (a vendor class is such a factory). With a factory, a second instance built from the same
    context plays a restarted loop process. Without ``context`` a temporary local store is
    used and every item's ground truth is the first class. ``workers`` names the worker ids
    ``respond`` plays; it is needed to check declared capabilities (at least ``replicas + 2``).
    """
    if n_items < 1 or replicas < 1:
        raise ValueError(f"n_items={n_items}, replicas={replicas}: expected positive integers")
    tmp: tempfile.TemporaryDirectory[str] | None = None
    is_instance = hasattr(vendor, "submit") and not isinstance(vendor, type)
    try:
        if context is None and not is_instance:
            from crowdloop.storage.local import LocalStore

            tmp = tempfile.TemporaryDirectory(prefix="crowdloop-contract-")
            name = getattr(vendor, "name", "vendor")
            context = make_context(LocalStore(Path(tmp.name)), name=name,
                                   truth={f"item-{i:04d}": DEFAULT_CLASSES[0] for i in range(2 * n_items)})
        return _run(vendor, params or {}, context, is_instance, respond, n_items, replicas, reward, timeout_s,
                    poll_interval_s, max_poll_s, batch_id, tuple(workers or ()))
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(factory: Any, params: dict[str, Any], context: VendorContext | None, is_instance: bool,
         respond: Respond | None, n_items: int, replicas: int, reward: float, timeout_s: float,
         poll_interval_s: float, max_poll_s: float, batch_id: str, workers: tuple[str, ...]) -> ContractReport:
    def build() -> Any:
        return factory(dict(params), context)

    v = factory if is_instance else build()
    name = getattr(v, "name", None)
    report = ContractReport(vendor=str(name))
    if not isinstance(name, str) or not name:
        raise _fail("name", f"expected a non-empty str attribute 'name', got {name!r}")
    for method in ("submit", "poll", "acknowledge"):
        if not callable(getattr(v, method, None)):
            raise _fail("protocol", f"{name!r} has no method {method}()")
    classes = tuple(context.classes) if context is not None else tuple(getattr(getattr(v, "context", None), "classes", ()))
    if len(classes) < 2:
        raise _fail("setup", "pass a context (or give the vendor a .context) with at least two classes")
    tasks = [Task(item_id=f"item-{i:04d}", round=0, batch_id=batch_id, replicas=replicas, reward=reward)
             for i in range(n_items)]
    ledger = getattr(v, "ledger", None)

    # submit: JSON refs, idempotent in-process and after a restart
    refs = v.submit(tasks, batch_id=batch_id)
    try:
        refs_json = json.dumps(refs, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _fail("submit", f"refs must be JSON-serializable (the loop stores them): {exc}") from None
    if not isinstance(refs, list):
        raise _fail("submit", f"expected a list of refs, got {type(refs).__name__}")
    before = ledger() if callable(ledger) else None
    again = v.submit(tasks, batch_id=batch_id)
    if json.dumps(again, sort_keys=True) != refs_json:
        raise _fail("idempotent submit", f"a retry with the same batch_id returned other refs: {again!r} != {refs!r}")
    restarted = None
    if not is_instance:
        restarted = build()
        third = restarted.submit(tasks, batch_id=batch_id)
        if json.dumps(third, sort_keys=True) != refs_json:
            raise _fail("idempotent submit", f"a restarted vendor returned other refs for the same batch_id: {third!r}")
    if before is not None and ledger() != before:
        raise _fail("idempotent submit", f"a retried submit changed the vendor's ledger: {before} -> {ledger()}")
    report.checks.append("submit is idempotent per batch_id" + (" (also after a restart)" if restarted else ""))

    def timed_poll(vendor_: Any) -> list[Annotation]:
        start = time.monotonic()
        got = vendor_.poll(refs)
        took = time.monotonic() - start
        report.max_poll_seconds = max(report.max_poll_seconds, took)
        if took > max_poll_s:
            raise _fail("non-blocking poll", f"poll took {took:.2f}s, more than max_poll_s={max_poll_s}")
        if not isinstance(got, list):
            raise _fail("poll", f"expected a list of Annotation, got {type(got).__name__}")
        return got

    if respond is not None:
        timed_poll(v)  # before anyone answered: must return at once (usually nothing)
        respond(v, tasks, batch_id)
    expected = n_items * replicas
    items = {t.item_id for t in tasks}
    seen: dict[str, Annotation] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for a in timed_poll(v):
            if not isinstance(a, Annotation):
                raise _fail("poll", f"expected crowdloop.records.Annotation, got {type(a).__name__}")
            problem = None
            if a.assignment_id in seen:
                problem = f"assignment {a.assignment_id!r} was returned twice"
            elif a.item_id not in items:
                problem = f"item {a.item_id!r} was never submitted"
            elif a.label not in classes:
                problem = f"label {a.label!r} is not one of {list(classes)}"
            elif a.batch_id != batch_id:
                problem = f"batch_id {a.batch_id!r}, expected {batch_id!r}"
            elif a.vendor != name:
                problem = f"vendor {a.vendor!r}, expected {name!r}"
            if problem:
                raise _fail("poll returns only new, valid answers", problem)
            seen[a.assignment_id] = a
        if len(seen) >= expected or time.monotonic() >= deadline:
            break
        time.sleep(poll_interval_s)
    per_item: dict[str, set[str]] = {}
    for a in seen.values():
        per_item.setdefault(a.item_id, set()).add(a.worker_id)
    if len(seen) != expected:
        raise _fail("poll", f"expected {expected} answers ({n_items} items x {replicas} replicas) within "
                            f"{timeout_s}s, got {len(seen)}")
    short = {i: len(w) for i, w in per_item.items() if len(w) != replicas}
    if short or set(per_item) != items:
        raise _fail("poll", f"expected {replicas} distinct workers per item, got {short or 'missing items'}")
    if timed_poll(v):
        raise _fail("poll returns only new answers", "a poll after all answers arrived returned answers again")
    if restarted is not None:
        for a in timed_poll(restarted):
            if a.assignment_id not in seen:
                raise _fail("idempotent submit", f"a restarted vendor returned an unknown assignment {a.assignment_id!r}")
    report.n_annotations = len(seen)
    report.checks.append(f"poll is non-blocking (slowest {report.max_poll_seconds:.3f}s) and returns each answer once")

    # acknowledge: approvals (retried), and no rejection without a reason
    answers = sorted(seen.values(), key=lambda a: a.assignment_id)
    v.acknowledge(answers[:1], accept=True)
    before = ledger() if callable(ledger) else None
    v.acknowledge(answers[:1], accept=True)
    if before is not None and ledger() != before:
        raise _fail("acknowledge", f"a retried approval changed the ledger: {before} -> {ledger()}")
    try:
        v.acknowledge(answers[1:2], accept=False, reason=None)
    except CrowdloopError:
        pass
    else:
        raise _fail("acknowledge", "a rejection without a reason was accepted; workers must see why")
    report.checks.append("acknowledge approves idempotently and refuses reasonless rejections")

    bonus = getattr(v, "bonus", None)
    if callable(bonus):
        bonus(answers[:2], amount=0.05, reason="contract check top-up", token=f"{batch_id}-contract")
        before = ledger() if callable(ledger) else None
        bonus(answers[:2], amount=0.05, reason="contract check top-up", token=f"{batch_id}-contract")
        if before is not None and ledger() != before:
            raise _fail("bonus", f"a repeated bonus token paid again: {before} -> {ledger()}")
        report.checks.append("bonus is idempotent per token" + ("" if callable(ledger) else " (not verified: no ledger())"))
    else:
        report.skipped.append("bonus (optional, not implemented)")
    if not callable(ledger):
        report.skipped.append("ledger() checks (optional, not implemented)")
    caps = capabilities_of(type(v), params)
    if caps & {BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM}:
        if len(workers) < replicas + 2:
            report.skipped.append(f"capabilities {sorted(caps)} (need workers=: at least replicas + 2 worker ids)")
        else:
            _check_capabilities(v, caps, report, answers, respond, workers, n_items, replicas, reward, timeout_s,
                                poll_interval_s, batch_id, timed_poll_of=timed_poll)
    return report


def _check_capabilities(v: Any, caps: frozenset[str], report: ContractReport, answers: list[Annotation],
                        respond: Respond | None, workers: tuple[str, ...], n_items: int, replicas: int, reward: float,
                        timeout_s: float, poll_interval_s: float, batch_id: str, *, timed_poll_of: Any) -> None:
    """The second batch: a blocked worker gets nothing, a re-ask never reaches who answered the item."""
    name = report.vendor
    ledger = getattr(v, "ledger", None)
    blocked = workers[0] if BLOCKS_WORKERS in caps else None
    if blocked is not None:
        v.block_workers([blocked], reason="contract check: 0 of 4 known-answer questions right")
        v.block_workers([blocked], reason="contract check: 0 of 4 known-answer questions right")
    # work done before the block is still approved and paid, once
    before = ledger() if callable(ledger) else None
    v.acknowledge(answers, accept=True)
    after = ledger() if callable(ledger) else None
    if before is not None and "paid" in before:
        newly = sum(a.reward for a in answers[1:])  # answers[0] was approved above; answers[1] was never decided
        if round(after["paid"] - before["paid"], 2) != round(newly, 2):
            raise _fail("ledger", f"approving {len(answers) - 1} more answers at {newly:.2f} moved 'paid' by "
                                  f"{after['paid'] - before['paid']:.2f}")
    answered: dict[str, set[str]] = {}
    for a in answers:
        answered.setdefault(a.item_id, set()).add(a.worker_id)
    second = f"{batch_id}-second"
    tasks: list[Task] = []
    if EXCLUDES_WORKERS_PER_ITEM in caps:
        tasks += [Task(item_id=item, round=1, batch_id=second, replicas=1, reward=reward,
                       exclude_workers=tuple(sorted(who))) for item, who in sorted(answered.items())]
    if blocked is not None:
        tasks += [Task(item_id=f"item-{n_items + i:04d}", round=1, batch_id=second, replicas=replicas, reward=reward)
                  for i in range(n_items)]
    refs = v.submit(tasks, batch_id=second)
    if respond is not None:
        respond(v, tasks, second)
    expected = sum(t.replicas for t in tasks)
    got: list[Annotation] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got += v.poll(refs)
        if len(got) < expected:
            time.sleep(poll_interval_s)
    excluded = {t.item_id: set(t.exclude_workers) for t in tasks if t.exclude_workers}
    for a in got:
        if blocked is not None and a.worker_id == blocked:
            raise _fail("blocks_workers", f"blocked worker {blocked!r} answered {a.item_id!r} in a later batch")
        if a.worker_id in excluded.get(a.item_id, ()):
            raise _fail("excludes_workers_per_item", f"item {a.item_id!r} was re-asked of {a.worker_id!r}, who had answered it")
    if len(got) != expected:
        raise _fail("poll", f"expected {expected} answers in the second batch ({name}), got {len(got)}")
    if blocked is not None:
        report.checks.append(f"blocks_workers: {blocked!r} got nothing of the next batch; their earlier work was paid")
    if excluded:
        report.checks.append(f"excludes_workers_per_item: {len(excluded)} re-asks answered by somebody else")
    v.acknowledge(got, accept=True)
    report.n_annotations += len(got)
