"""The ``local`` vendor: your own annotators, working in crowdloop's web app.

``submit`` records the batch in the vendor's store prefix; ``crowdloop annotate PROJECT``
serves the tasks one at a time to annotators holding a personal token (``crowdloop
annotators add NAME``); every answer is written to the store at once (create-only, so a
double submit is harmless); ``poll`` reads them. Nothing lives only in memory: the loop and
the app are separate processes sharing the store.

Quality controls (capabilities ``blocks_workers`` and ``excludes_workers_per_item``): a blocked
annotator sees no new item and a sentence saying why; a task never reaches an annotator named
in its ``exclude_workers`` (who answered the item before), so a re-ask comes from somebody else.

Pay time is what the server saw: an answer counts only for the item leased to that annotator
(on their screen), and its time runs from the lease to the answer, capped at ``lease_s``; the
page's own timer may only lower it. An answer for an item never shown to the annotator is
refused, so nobody can post answers (and claim time) for items they never saw.

Undo: an annotator may take back their last answer within ``undo_window_s`` seconds. So
that the loop never sees an answer that is later taken back, ``poll`` returns an answer
only once it is older than the window plus a safety margin.

Store layout (under ``vendor/local/``)::

    annotators/<name>.json                       name, sha256 of the token (never the token)
    batches/<batch_id>.json                      the tasks of a batch and its deadline (create-only)
    answers/<batch_id>/<item>.<annotator>.json   one Annotation (create-only); <item> is a digest
    skips/<batch_id>/<item>.<annotator>.json     an item the annotator skipped
    leases/<annotator>.json                      the item on the annotator's screen, since when
    blocks/<digest>.json                         a blocked annotator and the reason they are shown
    closed/<batch_id>.json                       written by the loop's poll after the batch's deadline
                                                 (or when it pays the batch): no answer is taken after it

Work after the deadline: a batch's deadline is ``collect.timeout_s`` after it was submitted (the
loop stops waiting then). No new item of it is shown within ``lease_s`` of it (half the collect
window if that is shorter), so whoever gets an item has the time it is held for them; an item
already on somebody's screen may still be answered until the loop's poll after the deadline
closes the batch, and that
poll returns every stored answer (none can be undone any more), so an answer the desk accepted
is always collected and paid, and one it would not collect is refused with a sentence saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crowdloop.errors import CrowdloopError, RecordExistsError, VendorDataError, VendorError
from crowdloop.records import Annotation, Task
from crowdloop.storage import KeyNotFoundError, read_json, write_json
from crowdloop.vendor import (
    BLOCKS_WORKERS,
    EXCLUDES_WORKERS_PER_ITEM,
    Ref,
    VendorContext,
    VendorPlan,
    acknowledged,
    block_of,
    parse_params,
    record_block,
    record_decision,
)
from crowdloop.web import PERSON_NAME, PersonalLinks, item_key

UNDO_MARGIN_S = 2.0  # poll waits this much longer than the undo window (clock and request skew)


class LocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suggestions: bool = Field(False, description="show the current model's suggestion (never for gold items, "
                                                 "audit items or re-asks of split votes)")
    undo_window_s: float = Field(30.0, ge=0, le=3600, description="how long an answer can be taken back")
    lease_s: float = Field(600.0, gt=0, description="an item on one annotator's screen is held for them this long")


class LocalVendor:
    """Tasks for in-house annotators; the web app (``crowdloop.vendors.local_app``) is their desk."""

    name = "local"
    capabilities = frozenset({BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM})

    @classmethod
    def check_params(cls, params: dict, plan: VendorPlan) -> LocalParams:
        """Offline check of ``params`` (nothing is contacted or written)."""
        return parse_params(LocalParams, params, vendor=cls.name)

    def __init__(self, params: dict, context: VendorContext, *, clock: Callable[[], float] = time.time) -> None:
        self.params = parse_params(LocalParams, params, vendor="local")
        self.context = context
        self.name = context.name or self.name
        self.store = context.store
        self.clock = clock
        self._returned: set[str] = set()
        self._returned_keys: set[str] = set()
        self._batches: dict[str, tuple[list[Task], dict[str, Task], dict[str, Task]]] = {}
        self._deadlines: dict[str, tuple[float | None, float]] = {}  # batch -> (deadline, collect window)

    # -- vendor protocol -------------------------------------------------------------
    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        key = f"batches/{batch_id}.json"
        if not self.store.exists(key):
            record: dict[str, Any] = {"batch_id": batch_id, "tasks": [t.model_dump(mode="json") for t in tasks]}
            if self.context.collect_timeout_s is not None:  # the loop's last poll comes after this
                record["deadline"] = self.clock() + self.context.collect_timeout_s
                record["timeout_s"] = self.context.collect_timeout_s
            with contextlib.suppress(RecordExistsError):  # a concurrent retry wrote the same batch
                write_json(self.store, key, record, create_only=True)
        return [{"batch_id": batch_id}]

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        """Answers older than the undo window, not returned before and not yet paid.

        A poll after a batch's deadline closes the batch first (the desk takes no answer after
        that) and then returns all of its answers: none can be undone any more, and the loop's
        poll after the deadline is its last for the batch.
        """
        now = self.clock()
        window = self.params.undo_window_s
        cutoff = now - (window + UNDO_MARGIN_S if window > 0 else 0.0)
        acked = acknowledged(self.store)
        new: list[Annotation] = []
        for batch in sorted({str(r["batch_id"]) for r in refs}):
            closing = self.past_deadline(batch, now)
            if closing:
                self.close_batch(batch, reason="deadline")
            keys = [k for k in self.store.list(f"answers/{batch}/") if k not in self._returned_keys]
            for ann, key in self._read_answers(keys):
                if ann.assignment_id in self._returned or ann.assignment_id in acked:
                    self._returned_keys.add(key)
                    continue
                if ann.submitted_at.timestamp() > cutoff and not closing:
                    continue  # may still be undone
                self._returned.add(ann.assignment_id)
                self._returned_keys.add(key)  # final: it can no longer be undone
                new.append(ann)
        return new

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        if not accept and not reason:
            raise VendorError("vendor 'local': a rejection needs a reason the annotator can read")
        record_decision(self.store, assignments, accept=accept, reason=reason,
                        per_annotator=_sum_by_worker(assignments) if accept else {})
        for batch in sorted({a.batch_id for a in assignments}):  # (again after a crash: closing is idempotent)
            self.close_batch(batch, reason="paid")

    def close_batch(self, batch_id: str, *, reason: str) -> None:
        """From now on the desk takes no answer for ``batch_id`` (idempotent; the first reason stays)."""
        if not self.store.exists(f"closed/{batch_id}.json"):
            with contextlib.suppress(RecordExistsError):
                write_json(self.store, f"closed/{batch_id}.json",
                           {"batch_id": batch_id, "reason": reason, "at": self._now().isoformat()}, create_only=True)

    def deadline(self, batch_id: str) -> float | None:
        """When the loop stops waiting for ``batch_id`` (``collect.timeout_s`` after its submit; None:
        not known, a batch recorded before deadlines were)."""
        return self._deadline_and_window(batch_id)[0]

    def _deadline_and_window(self, batch_id: str) -> tuple[float | None, float]:
        if batch_id not in self._deadlines:  # batch records are create-only: read once
            record = read_json(self.store, f"batches/{batch_id}.json", default=None)
            if record is None:
                return None, 0.0
            self._deadlines[batch_id] = (record.get("deadline"), float(record.get("timeout_s") or 0.0))
        return self._deadlines[batch_id]

    def past_deadline(self, batch_id: str, now: float | None = None) -> bool:
        deadline = self.deadline(batch_id)
        return deadline is not None and (self.clock() if now is None else now) >= deadline

    def offering(self, batch_id: str, now: float | None = None) -> bool:
        """Whether new work of ``batch_id`` is handed out: until ``lease_s`` before its deadline (half
        the collect window when that is shorter than two leases), so that whoever gets an item has
        the whole time it is held for them before the loop's last poll."""
        deadline, window = self._deadline_and_window(batch_id)
        if deadline is None:
            return True
        return (self.clock() if now is None else now) < deadline - min(self.params.lease_s, window / 2)

    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        record = {"assignment_ids": sorted(a.assignment_id for a in assignments), "amount": amount, "reason": reason}
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"bonuses/{hashlib.sha256(token.encode()).hexdigest()[:24]}.json", record,
                       create_only=True)

    def block_workers(self, worker_ids: Sequence[str], *, reason: str) -> None:
        """From now on these annotators get no new item and see ``reason`` (idempotent per annotator).

        Their current lease is released, so the item goes to somebody else; their answers so far
        stay, and are paid with their batch.
        """
        for worker in sorted(set(worker_ids)):
            self._check_worker(worker)
            record_block(self.store, worker, reason=reason, at=self._now().isoformat())
            self.store.delete(f"leases/{worker}.json")

    def block_reason(self, worker: str) -> str | None:
        """Why ``worker`` gets no new items (None: not blocked)."""
        record = block_of(self.store, worker)
        return None if record is None else str(record["reason"])

    def ledger(self) -> dict[str, float | int]:
        tasks = sum(len(read_json(self.store, k)["tasks"]) for k in self.store.list("batches/"))
        paid = sum(read_json(self.store, k)["paid"] for k in self.store.list("acks/"))
        bonuses = sum(read_json(self.store, k)["amount"] * len(read_json(self.store, k)["assignment_ids"])
                      for k in self.store.list("bonuses/"))
        return {"tasks": tasks, "answers": len(self.store.list("answers/")), "paid": round(paid, 2),
                "bonuses": round(bonuses, 2)}

    # -- annotators ------------------------------------------------------------------
    @property
    def _links(self) -> PersonalLinks:
        return PersonalLinks(self.store, "annotators/", "annotator")

    def add_annotator(self, name: str) -> str:
        """Create an annotator and return their token (shown once; only its hash is stored)."""
        return self._links.issue(name, now=self._now())

    def remove_annotator(self, name: str) -> None:
        """Revoke ``name``'s link and release the item on their screen (their answers stay)."""
        self._links.revoke(name)
        self.store.delete(f"leases/{name}.json")  # else the item stays held for them for lease_s

    def annotators(self) -> list[str]:
        return self._links.names()

    @property
    def workforce(self) -> int | None:
        """The annotators registered so far (crowdloop/vendor.py); None before the first, when
        the team is still being added and nothing should be planned around its size."""
        return len(self.annotators()) or None

    def authenticate(self, token: str | None) -> str | None:
        """The annotator holding ``token``, or None (constant-time comparison of hashes)."""
        return self._links.holder(token)

    # -- the annotation desk (used by the web app) -----------------------------------------
    def open_tasks(self) -> list[Task]:
        """Tasks of batches the loop has not paid yet, in dispatch order."""
        out: list[Task] = []
        for key in self.store.list("batches/"):
            batch_id = key[len("batches/"):-len(".json")]
            if self.store.exists(f"closed/{batch_id}.json"):
                continue
            out.extend(self._batch_tasks(batch_id))
        return out

    def task(self, batch_id: str, item_id: str) -> Task | None:
        self._batch_tasks(batch_id)
        return self._batches.get(batch_id, ([], {}, {}))[1].get(item_id)

    def task_by_key(self, batch_id: str, key: str) -> Task | None:
        """The task whose item digest is ``key``; only dispatched items are ever found."""
        self._batch_tasks(batch_id)
        return self._batches.get(batch_id, ([], {}, {}))[2].get(key)

    def next_task(self, worker: str) -> tuple[Task, float] | None:
        """The item to show ``worker`` (their current lease if still valid) and when it was shown."""
        return self.next_task_and_progress(worker)[0]

    def next_task_and_progress(self, worker: str) -> tuple[tuple[Task, float] | None, dict[str, int]]:
        """``next_task`` and ``progress`` from one reading of the store (the page needs both)."""
        tasks = self.open_tasks()
        index = self._index(tasks)
        return self._next(worker, tasks, index), self._progress(worker, tasks, index)

    def _next(self, worker: str, tasks: list[Task], index: dict) -> tuple[Task, float] | None:
        self._check_worker(worker)
        if self.block_reason(worker) is not None:
            self.store.delete(f"leases/{worker}.json")
            return None
        now = self.clock()
        lease = read_json(self.store, f"leases/{worker}.json", default=None)
        leases = self._leases(now)
        if lease and now - lease["shown_at"] < self.params.lease_s:
            for t in tasks:
                if ((t.batch_id, t.item_id) == (lease["batch_id"], lease["item_id"])
                        and self._open_for(t, worker, leases, index)):
                    return t, lease["shown_at"]
        for t in tasks:
            if self._open_for(t, worker, leases, index) and self.offering(t.batch_id, now):
                write_json(self.store, f"leases/{worker}.json",
                           {"batch_id": t.batch_id, "item_id": t.item_id, "shown_at": now})
                return t, now
        self.store.delete(f"leases/{worker}.json")
        return None

    def answer(self, worker: str, batch_id: str, item_id: str, label: str, *,
               client_seconds: float | None = None) -> Annotation:
        """Store ``worker``'s answer at once; a second submit returns the first answer unchanged."""
        self._check_worker(worker)
        task = self.task(batch_id, item_id)
        if task is None:
            raise VendorDataError(f"item {item_id!r} is not part of batch {batch_id!r}")
        if label not in self.context.classes:
            raise VendorDataError(f"label {label!r} is not one of the classes {list(self.context.classes)}")
        key = f"answers/{batch_id}/{item_key(item_id)}.{worker}.json"
        existing = read_json(self.store, key, default=None)
        if existing is not None:
            return Annotation.model_validate(existing)
        if self.store.exists(f"closed/{batch_id}.json"):
            raise VendorDataError(f"batch {batch_id!r} is closed (the loop collected its answers after its deadline, "
                                  "or paid it); this answer was not stored and is not paid")
        blocked = self.block_reason(worker)
        if blocked is not None:
            raise VendorDataError(f"annotator {worker!r} gets no new items: {blocked}")
        if worker in task.exclude_workers:
            raise VendorDataError(f"item {item_id!r} is asked of somebody else: annotator {worker!r} answered it before")
        now = self.clock()
        lease = read_json(self.store, f"leases/{worker}.json", default=None)
        if not lease or (lease["batch_id"], lease["item_id"]) != (batch_id, item_id):
            # Time is what the server saw on this annotator's screen; an item never shown has none.
            raise VendorDataError(f"item {item_id!r} is not on annotator {worker!r}'s screen (never shown to them, "
                                  "or replaced by another item); reload the page")
        on_screen = max(0.0, now - lease["shown_at"])
        if on_screen >= self.params.lease_s:
            self._check_open_slot(worker, task, now)  # the lease ran out: the slot may have gone to someone else
        seconds = min(on_screen, self.params.lease_s)
        if client_seconds is not None and client_seconds >= 0:
            seconds = min(seconds, client_seconds)  # the page's timer, never more than the server saw
        ann = Annotation(item_id=item_id, worker_id=worker, label=label, vendor=self.name,
                         assignment_id=hashlib.sha256(f"{batch_id}|{item_id}|{worker}".encode()).hexdigest()[:20],
                         batch_id=batch_id, round=task.round, submitted_at=self._now(now),
                         duration_s=round(seconds, 3), reward=task.reward, is_gold=task.is_gold)
        try:
            self.store.write_bytes(key, ann.model_dump_json().encode(), create_only=True)
        except RecordExistsError:
            return Annotation.model_validate(read_json(self.store, key))
        if self.store.exists(f"closed/{batch_id}.json"):
            # closed between the check above and the write: the closing poll may have listed the
            # answers before this one, so it is taken back rather than left uncollected and unpaid
            self.store.delete(key)
            raise VendorDataError(f"batch {batch_id!r} closed while this answer was being stored; it was not kept "
                                  "and is not paid")
        self.store.delete(f"leases/{worker}.json")
        return ann

    def _check_open_slot(self, worker: str, task: Task, now: float) -> None:
        """An answer after the worker's lease ran out needs a free replica slot.

        Otherwise a stale tab could add answers nobody asked for, and each would be paid.
        """
        digest = item_key(task.item_id)
        answered = sum(1 for k in self.store.list(f"answers/{task.batch_id}/")
                       if k.rsplit("/", 1)[-1].startswith(digest + "."))
        held = sum(1 for w, it in self._leases(now).items() if w != worker and it == (task.batch_id, task.item_id))
        if answered + held >= task.replicas:
            raise VendorDataError(f"item {task.item_id!r} already has its {task.replicas} answer(s) or they are "
                                  "on other annotators' screens")

    def skip(self, worker: str, batch_id: str, item_id: str) -> None:
        self._check_worker(worker)
        if self.task(batch_id, item_id) is None:
            raise VendorDataError(f"item {item_id!r} is not part of batch {batch_id!r}")
        with contextlib.suppress(RecordExistsError):
            write_json(self.store, f"skips/{batch_id}/{item_key(item_id)}.{worker}.json",
                       {"at": self._now().isoformat()}, create_only=True)
        self.store.delete(f"leases/{worker}.json")

    def undo(self, worker: str) -> Task | None:
        """Take back ``worker``'s last answer if it is still inside the undo window; show it again."""
        now = self.clock()
        mine = [(a, k) for t_batch in sorted({t.batch_id for t in self.open_tasks()})
                for a, k in self._answers_with_keys(t_batch) if a.worker_id == worker]
        if not mine:
            return None
        last, key = max(mine, key=lambda ak: ak[0].submitted_at)
        if now - last.submitted_at.timestamp() >= self.params.undo_window_s:
            return None
        self.store.delete(key)
        write_json(self.store, f"leases/{worker}.json", {"batch_id": last.batch_id, "item_id": last.item_id,
                                                         "shown_at": now - last.duration_s})
        return self.task(last.batch_id, last.item_id)

    def progress(self, worker: str) -> dict[str, int]:
        """Answers by ``worker`` in open batches, and items still waiting for answers."""
        tasks = self.open_tasks()
        return self._progress(worker, tasks, self._index(tasks))

    def _progress(self, worker: str, tasks: list[Task], index: dict) -> dict[str, int]:
        mine = waiting = 0
        now = self.clock()
        for t in tasks:
            answered = index["answers"].get((t.batch_id, item_key(t.item_id)), set())
            mine += worker in answered
            if len(answered) < t.replicas and self.offering(t.batch_id, now):
                waiting += 1
        return {"answered": mine, "waiting": waiting, "items": len(tasks)}

    # -- helpers ----------------------------------------------------------------------
    @staticmethod
    def _check_worker(worker: str) -> None:
        if not PERSON_NAME.match(worker):
            raise VendorDataError(f"annotator {worker!r}: expected 1-40 lowercase letters, digits, '_' or '-'")

    def _now(self, stamp: float | None = None) -> datetime:
        return datetime.fromtimestamp(self.clock() if stamp is None else stamp, UTC)

    def _batch_tasks(self, batch_id: str) -> list[Task]:
        """A batch's tasks, parsed once per process: batch records are create-only, never rewritten.

        (Parsing a 1000-task batch on every page view was most of the app's time under load.)
        """
        cached = self._batches.get(batch_id)
        if cached is not None:
            return cached[0]
        try:
            batch = read_json(self.store, f"batches/{batch_id}.json")
        except (KeyNotFoundError, CrowdloopError):
            return []
        tasks = [Task.model_validate(t) for t in batch["tasks"]]
        self._batches[batch_id] = (tasks, {t.item_id: t for t in tasks}, {item_key(t.item_id): t for t in tasks})
        return tasks

    def _index(self, tasks: Sequence[Task]) -> dict[str, dict[tuple[str, str], set[str]]]:
        """Who answered / skipped each item: one listing per batch, not one per item."""
        out: dict[str, dict[tuple[str, str], set[str]]] = {"answers": {}, "skips": {}}
        for kind in out:
            for batch in sorted({t.batch_id for t in tasks}):
                for key in self.store.list(f"{kind}/{batch}/"):
                    _, b, name = key.split("/")  # one flat folder per batch: fast to list
                    item, worker = name[: -len(".json")].split(".", 1)
                    out[kind].setdefault((b, item), set()).add(worker)
        return out

    def _leases(self, now: float) -> dict[str, tuple[str, str]]:
        out = {}
        for key in self.store.list("leases/"):
            lease = read_json(self.store, key, default=None)
            if lease and now - lease["shown_at"] < self.params.lease_s:
                out[key.split("/")[-1][: -len(".json")]] = (lease["batch_id"], lease["item_id"])
        return out

    def _open_for(self, t: Task, worker: str, leases: dict[str, tuple[str, str]],
                  index: dict[str, dict[tuple[str, str], set[str]]]) -> bool:
        key = (t.batch_id, item_key(t.item_id))
        answered = index["answers"].get(key, set())
        if (len(answered) >= t.replicas or worker in answered or worker in index["skips"].get(key, set())
                or worker in t.exclude_workers):
            return False  # (cheap checks first: most of a long batch is done when a page asks)
        held = sum(1 for w, held_item in leases.items() if w != worker and held_item == (t.batch_id, t.item_id))
        return len(answered) + held < t.replicas

    def _answers_with_keys(self, batch: str) -> list[tuple[Annotation, str]]:
        return self._read_answers(self.store.list(f"answers/{batch}/"))

    def _read_answers(self, keys: Sequence[str]) -> list[tuple[Annotation, str]]:
        out = []
        for key in keys:
            try:
                out.append((Annotation.model_validate_json(self.store.read_bytes(key)), key))
            except KeyNotFoundError:
                continue  # undone between list and read
        return out


def _sum_by_worker(assignments: Sequence[Annotation]) -> dict[str, Any]:
    out: dict[str, float] = {}
    for a in assignments:
        out[a.worker_id] = round(out.get(a.worker_id, 0.0) + a.reward, 2)
    return out
