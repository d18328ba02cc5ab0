"""The manifest drop-box vendor: tasks and answers exchanged as JSON Lines files.

For any outside vendor (Appen, Scale, an in-house tool) that works with files.
``submit`` writes an input manifest in SageMaker Ground Truth's format under
``requests/<batch_id>.manifest.jsonl``; one line per item::

    {"source": "the text", "item-id": "...", "batch-id": "...", "class-list": ["cat", "dog"], "replicas": 3, "reward": 0.03}
    {"source-ref": "/data/images/0001.png", "item-id": "...", ...}

(``source-ref`` for items that are files, ``source`` for inline text; a tabular row is inline
JSON). Two more fields carry the quality controls (capabilities ``blocks_workers`` and
``excludes_workers_per_item``): ``exclude-workers`` lists the workers who answered the item before
(a re-ask must go to somebody else), ``blocked-workers`` lists every worker blocked when the batch
was sent; neither may work on the line. ``requests/<batch_id>.blocked.json`` gives each blocked
worker's reason, for the vendor to pass on; ``requests/<batch_id>.guidelines.json`` the project's
guidelines and class notes, when it has any. The vendor drops result files under ``results/`` (any
name, never rewritten), one line per worker answer::

    {"item-id": "...", "worker-id": "w17", "label": "dog", "started-at": "2026-05-01T10:00:00Z", "submitted-at": "2026-05-01T10:00:09Z"}

(``duration-s`` may replace ``started-at``; ``batch-id`` is optional). ``poll`` takes every
good line and writes the bad ones (unknown item ids, labels outside the class list,
duplicates, answers from a blocked or an excluded worker, malformed lines) to
``rejects/<file>.rejects.jsonl`` with the reason, and never
crashes the loop. Each result file is ingested once: its answers and a ``processed`` marker
are create-only records in the vendor's state, so a crash half-way redoes the same records.

The exchange files live in the vendor's own prefix of the project store, or in the store
named by ``params.url`` (a directory shared with the vendor, later ``s3://bucket/prefix``).

Work after the deadline: every manifest line carries ``deadline`` (ISO 8601, UTC:
``collect.timeout_s`` after the submit). The loop's poll after it ingests what was dropped so far,
then closes the batch (``closed/<batch_id>.json`` in the vendor's state, and
``requests/<batch_id>.closed.json`` in the drop box for the vendor to see); a result line for a
closed batch, in a file dropped later, is refused into ``rejects/`` with the reason (never a
label, never paid by the loop), with a warning in the log. A batch paid before its deadline is
closed when it is acknowledged.
"""  # noqa: E501 - JSON Lines examples are one record per line

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crowdloop.errors import RecordExistsError, StoreError, VendorError
from crowdloop.records import Annotation, Task, dumps, to_jsonl, utcnow
from crowdloop.storage import Store, open_store, read_json, validate_key, write_json
from crowdloop.vendor import (
    BLOCKS_WORKERS,
    EXCLUDES_WORKERS_PER_ITEM,
    Ref,
    VendorContext,
    VendorPlan,
    acknowledged,
    blocked_workers,
    parse_params,
    record_block,
    record_decision,
)

log = logging.getLogger(__name__)

MAX_REJECT_CONTENT = 500


class ManifestParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="store shared with the vendor; default: this vendor's project prefix")
    requests_prefix: str = Field("requests/", description="where input manifests are written")
    results_prefix: str = Field("results/", description="where the vendor drops result files")
    rejects_prefix: str = Field("rejects/", description="where rejected result lines are reported")

    @field_validator("requests_prefix", "results_prefix", "rejects_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value if value.endswith("/") else value + "/"
        validate_key(value, allow_prefix=True)
        return value

    @model_validator(mode="after")
    def _apart(self) -> ManifestParams:
        # Every file under results_prefix is read as answers: a manifest or a rejects file there would be
        # read as a result file, rejected, and its rejects file read again on the next poll, without end.
        named = {"requests_prefix": self.requests_prefix, "results_prefix": self.results_prefix,
                 "rejects_prefix": self.rejects_prefix}
        for (a, pa), (b, pb) in itertools.combinations(sorted(named.items()), 2):
            if pa.startswith(pb) or pb.startswith(pa):
                raise ValueError(f"{a}={pa!r} and {b}={pb!r} overlap; expected three separate folders")
        return self


def _digest(text: str, n: int = 24) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def assignment_id(batch_id: str, item_id: str, worker_id: str) -> str:
    """One assignment per (batch, item, worker): a second answer by a worker is a duplicate."""
    return _digest(f"{batch_id}|{item_id}|{worker_id}", 20)


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected an ISO 8601 timestamp string, got {value!r}")
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an ISO 8601 timestamp") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


class ManifestVendor:
    """Writes Ground Truth input manifests; reads answers from dropped result files."""

    name = "manifest"
    capabilities = frozenset({BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM})

    @classmethod
    def check_params(cls, params: dict, plan: VendorPlan) -> ManifestParams:
        """Offline check of ``params`` (nothing is contacted or written)."""
        return parse_params(ManifestParams, params, vendor=cls.name)

    def __init__(self, params: dict, context: VendorContext) -> None:
        self.params = parse_params(ManifestParams, params, vendor="manifest")
        self.context = context
        self.name = context.name or self.name
        self.state: Store = context.store
        self.exchange: Store = open_store(self.params.url) if self.params.url else context.store
        self._returned: set[str] = set()
        self._done_segments: set[str] = set()
        self._processed: set[str] = set()
        self._blocked_in: dict[str, dict[str, str]] = {}  # batch id -> workers blocked when it was sent
        self._deadline_of: dict[str, float | None] = {}  # batch id -> its deadline (epoch seconds)
        self._closed: set[str] = set()  # closed batches, read when a result file is ingested

    # -- vendor protocol -------------------------------------------------------------
    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        """Record the batch (state), then write its manifest (create-only): a retry writes nothing new."""
        manifest_key = f"{self.params.requests_prefix}{batch_id}.manifest.jsonl"
        batch_key = f"batches/{batch_id}.json"
        if not self.state.exists(batch_key):
            if self.exchange is not self.state and self.exchange.exists(manifest_key):
                # the state is written before the manifest, so this store never wrote that one
                raise VendorError(
                    f"vendor 'manifest': the drop box {self.params.url} already holds {manifest_key}, which this "
                    f"project store did not send (an earlier store of project {self.context.project!r}, or another "
                    "one running); its result files would be taken as this run's answers. Give this run a drop box "
                    "of its own (vendor.params.url) or clear that one")
            timeout = self.context.collect_timeout_s
            with contextlib.suppress(RecordExistsError):  # the block list as of now travels with the batch
                write_json(self.state, batch_key, {"batch_id": batch_id, "manifest": manifest_key,
                                                   "tasks": [t.model_dump(mode="json") for t in tasks],
                                                   "blocked": blocked_workers(self.state),
                                                   "deadline": None if timeout is None else time.time() + timeout},
                           create_only=True)
        record = read_json(self.state, batch_key)
        recorded = [Task.model_validate(t) for t in record["tasks"]]
        blocked = record.get("blocked", {})
        self._deadline_of[batch_id] = record.get("deadline")
        blocked_key = f"{self.params.requests_prefix}{batch_id}.blocked.json"
        if blocked and not self.exchange.exists(blocked_key):
            self._create(self.exchange, blocked_key, dumps({"batch-id": batch_id, "blocked-workers": blocked}))
        guide_key = f"{self.params.requests_prefix}{batch_id}.guidelines.json"
        guide = {"batch-id": batch_id, "guidelines": self.context.guidelines,
                 "class-notes": {c: self.context.class_notes[c] for c in self.context.classes
                                 if self.context.class_notes.get(c)}}
        if (guide["guidelines"] or guide["class-notes"]) and not self.exchange.exists(guide_key):
            # before the manifest: whoever picks the batch up finds what its workers must read
            self._create(self.exchange, guide_key, dumps(guide))
        if not self.exchange.exists(manifest_key):
            lines = b"".join(dumps(self._manifest_line(t, blocked, record.get("deadline"))) + b"\n" for t in recorded)
            self._create(self.exchange, manifest_key, lines)
        return [{"batch_id": batch_id, "manifest": manifest_key}]

    def block_workers(self, worker_ids: Sequence[str], *, reason: str) -> None:
        """Block these workers for every batch sent from now on (idempotent per worker): the list and
        the reasons travel in the next manifests, and their answers to those batches are rejected."""
        for worker in sorted(set(worker_ids)):
            record_block(self.state, worker, reason=reason, at=utcnow().isoformat())

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        """Ingest result files not seen before, then return new answers of the refs' batches.

        A poll after a batch's deadline closes it after ingesting (``close_batch``): later result
        lines for it are refused into ``rejects/``.
        """
        self.ingest()
        for batch in sorted({str(r["batch_id"]) for r in refs}):
            if self.past_deadline(batch):
                self.close_batch(batch, reason="deadline")
        acked = acknowledged(self.exchange)
        new: list[Annotation] = []
        for batch in sorted({str(r["batch_id"]) for r in refs}):
            for key in self.state.list(f"answers/{batch}/"):
                if key in self._done_segments:
                    continue  # every answer in it was returned already (segments are immutable)
                self._done_segments.add(key)
                for line in self.state.read_bytes(key).splitlines():
                    if not line.strip():
                        continue
                    ann = Annotation.model_validate_json(line)
                    if ann.assignment_id in self._returned or ann.assignment_id in acked:
                        continue
                    self._returned.add(ann.assignment_id)
                    new.append(ann)
        return new

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        """Write the payment decision where the vendor reads it: ``acks/<hash>.json``."""
        if not accept and not reason:
            raise VendorError("vendor 'manifest': a rejection needs a reason the worker can read")
        record_decision(self.exchange, assignments, accept=accept, reason=reason, assignments=[
            {"assignment-id": a.assignment_id, "item-id": a.item_id, "worker-id": a.worker_id, "batch-id": a.batch_id}
            for a in sorted(assignments, key=lambda a: a.assignment_id)])
        for batch in sorted({a.batch_id for a in assignments}):  # paid: no later answer is a label
            self.close_batch(batch, reason="paid")

    def past_deadline(self, batch_id: str) -> bool:
        """Whether ``collect.timeout_s`` after ``batch_id``'s submit has passed (False: not known)."""
        if batch_id not in self._deadline_of:
            record = read_json(self.state, f"batches/{batch_id}.json", default=None)
            if record is None:
                return False
            self._deadline_of[batch_id] = record.get("deadline")
        deadline = self._deadline_of[batch_id]
        return deadline is not None and time.time() >= deadline

    def close_batch(self, batch_id: str, *, reason: str) -> None:
        """No result line for ``batch_id`` is taken from now on; the drop box says so too (each once)."""
        if self.state.exists(f"closed/{batch_id}.json"):
            return
        at = utcnow().isoformat()
        self._create(self.exchange, f"{self.params.requests_prefix}{batch_id}.closed.json",
                     dumps({"batch-id": batch_id, "closed-at": at, "reason": reason}))
        self._create(self.state, f"closed/{batch_id}.json", dumps({"batch_id": batch_id, "reason": reason, "at": at}))

    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        record = {"assignment_ids": sorted(a.assignment_id for a in assignments), "amount": amount, "reason": reason,
                  "workers": sorted({a.worker_id for a in assignments})}
        with contextlib.suppress(RecordExistsError):  # the token makes bonuses idempotent
            write_json(self.exchange, f"bonuses/{_digest(token)}.json", record, create_only=True)

    # -- ingesting result files -------------------------------------------------------
    def ingest(self) -> dict[str, int]:
        """Process every result file not processed before; returns counts of good and bad lines."""
        counts = {"files": 0, "good": 0, "rejected": 0}
        tasks: dict[str, Task] | None = None
        for key in self.exchange.list(self.params.results_prefix):
            if key in self._processed:
                continue
            file_id = _digest(key)
            marker = f"processed/{file_id}.json"
            if self.state.exists(marker):
                self._processed.add(key)
                continue
            if tasks is None:
                tasks = self._tasks()
                self._closed = {k[len("closed/"):-len(".json")] for k in self.state.list("closed/")}
            good, bad = self._parse_file(key, file_id, tasks)
            by_batch: dict[str, list[Annotation]] = {}
            for a in good:
                by_batch.setdefault(a.batch_id, []).append(a)
            for batch, anns in by_batch.items():
                self._create(self.state, f"answers/{batch}/{file_id}.jsonl", to_jsonl(anns))
            if bad:
                name = re.sub(r"[^A-Za-z0-9._=+@-]", "_", key[len(self.params.results_prefix):]).lstrip("._=+@-")
                name = name or file_id
                self._create(self.exchange, f"{self.params.rejects_prefix}{name}.rejects.jsonl",
                             b"".join(dumps(b) + b"\n" for b in bad))
                log.warning("manifest: %d line(s) of %s rejected (first: %s); see %s%s.rejects.jsonl", len(bad), key,
                            str(bad[0].get("reason", "?"))[:200], self.params.rejects_prefix, name)
            self._create(self.state, marker, dumps({"key": key, "good": len(good), "rejected": len(bad),
                                                    "processed_at": utcnow().isoformat()}))
            self._processed.add(key)
            counts["files"] += 1
            counts["good"] += len(good)
            counts["rejected"] += len(bad)
        return counts

    @staticmethod
    def _create(store: Store, key: str, data: bytes) -> None:
        with contextlib.suppress(RecordExistsError):  # a replay after a crash: the content is derived from the same file
            store.write_bytes(key, data, create_only=True)

    def _tasks(self) -> dict[str | tuple[str, str], Task]:
        """Tasks by ``(batch, item)``, and by item alone for the latest batch that holds it (an item
        re-asked in a later batch is in two batches; a result line without batch-id means the latest)."""
        out: dict[str | tuple[str, str], Task] = {}
        for key in sorted(self.state.list("batches/")):
            record = read_json(self.state, key)
            self._blocked_in[record["batch_id"]] = record.get("blocked", {})
            for raw in record["tasks"]:
                t = Task.model_validate(raw)
                out[(t.batch_id, t.item_id)] = t
                out[t.item_id] = t
        return out

    def _known_assignments(self, batches: set[str], except_file: str) -> set[str]:
        seen: set[str] = set()
        for batch in batches:
            for key in self.state.list(f"answers/{batch}/"):
                if key.endswith(f"/{except_file}.jsonl"):
                    continue  # this file's own answers, from a run that crashed before its marker
                for line in self.state.read_bytes(key).splitlines():
                    if line.strip():
                        seen.add(json.loads(line)["assignment_id"])
        return seen

    def _parse_file(self, key: str, file_id: str, tasks: dict[str, Task]) -> tuple[list[Annotation], list[dict]]:
        try:
            data = self.exchange.read_bytes(key)
        except StoreError as exc:
            return [], [{"file": key, "line": None, "reason": f"cannot read the file: {exc}"}]
        known = self._known_assignments({t.batch_id for t in tasks.values()}, file_id)
        good: list[Annotation] = []
        bad: list[dict] = []
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                ann = self._parse_line(raw, tasks)
                if ann.assignment_id in known:
                    raise ValueError(f"duplicate: worker {ann.worker_id!r} already answered item {ann.item_id!r} "
                                     f"in batch {ann.batch_id!r}")
            except ValueError as exc:
                bad.append({"file": key, "line": number, "reason": str(exc),
                            "content": raw[:MAX_REJECT_CONTENT].decode("utf-8", errors="replace")})
                continue
            known.add(ann.assignment_id)
            good.append(ann)
        return good, bad

    def _parse_line(self, raw: bytes, tasks: dict[str, Task]) -> Annotation:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        for name in ("item-id", "worker-id", "label", "submitted-at"):
            if name not in obj:
                raise ValueError(f"missing field {name!r}")
        item, worker, label = obj["item-id"], obj["worker-id"], obj["label"]
        if not isinstance(item, str) or item not in tasks:
            raise ValueError(f"unknown item-id {item!r}: it was not submitted to this vendor")
        task = tasks[item]
        if "batch-id" in obj:
            batch = obj["batch-id"]
            if not isinstance(batch, str) or (batch, item) not in tasks:
                raise ValueError(f"batch-id {batch!r} does not match item {item!r}'s batch {task.batch_id!r}")
            task = tasks[(batch, item)]
        if not isinstance(worker, str) or not worker.strip() or len(worker) > 128:
            raise ValueError(f"worker-id {worker!r}: expected a non-empty string of at most 128 characters")
        blocked = self._blocked_in.get(task.batch_id, {})
        if worker in blocked:
            raise ValueError(f"worker {worker!r} was blocked before batch {task.batch_id!r} was sent "
                             f"(blocked-workers): {blocked[worker]}")
        if worker in task.exclude_workers:
            raise ValueError(f"worker {worker!r} answered item {item!r} before; this task was for somebody else "
                             "(exclude-workers)")
        if task.batch_id in self._closed:
            raise ValueError(f"batch {task.batch_id!r} is closed (its deadline passed and the loop collected it, or "
                             f"it was paid; see {self.params.requests_prefix}{task.batch_id}.closed.json): this answer "
                             "came later; it is no label and the loop does not pay it")
        if not isinstance(label, str) or label not in self.context.classes:
            raise ValueError(f"label {label!r} is not one of the classes {list(self.context.classes)}")
        submitted = _parse_time(obj["submitted-at"], "submitted-at")
        if "started-at" in obj:
            seconds = (submitted - _parse_time(obj["started-at"], "started-at")) / timedelta(seconds=1)
        elif "duration-s" in obj and isinstance(obj["duration-s"], (int, float)) and not isinstance(obj["duration-s"], bool):
            seconds = float(obj["duration-s"])
        else:
            raise ValueError("needs started-at or a numeric duration-s (task time is what workers are paid for)")
        if not 0 <= seconds < 7 * 24 * 3600:
            raise ValueError(f"task time {seconds:.1f}s: expected 0 <= seconds < one week (started-at after submitted-at?)")
        return Annotation(item_id=item, worker_id=worker, label=label, vendor=self.name,
                          assignment_id=assignment_id(task.batch_id, item, worker), batch_id=task.batch_id,
                          round=task.round, submitted_at=submitted, duration_s=round(seconds, 3),
                          reward=task.reward, is_gold=task.is_gold)

    # -- helpers ----------------------------------------------------------------------
    def _manifest_line(self, task: Task, blocked: dict[str, str], deadline: float | None = None) -> dict[str, Any]:
        payload = self.context.item_payload(task.item_id)
        line: dict[str, Any] = {}
        if payload.get("kind") == "image" and payload.get("path"):
            line["source-ref"] = payload["path"]
        elif payload.get("kind") == "text":
            line["source"] = payload.get("text", "")
        elif payload.get("kind") == "image" and "pixels" in payload:
            line["source"] = json.dumps({"pixels": payload["pixels"]})
        else:
            line["source"] = json.dumps(dict(zip(payload.get("columns", []), payload.get("values", []), strict=True)))
        line.update({"item-id": task.item_id, "batch-id": task.batch_id, "class-list": list(self.context.classes),
                     "replicas": task.replicas, "reward": task.reward})
        if deadline is not None:  # answers in files dropped after it are refused
            line["deadline"] = datetime.fromtimestamp(deadline, UTC).isoformat().replace("+00:00", "Z")
        if task.exclude_workers:
            line["exclude-workers"] = sorted(task.exclude_workers)
        if blocked:
            line["blocked-workers"] = sorted(blocked)  # the reasons: requests/<batch>.blocked.json
        return line

    def ledger(self) -> dict[str, float | int]:
        """Tasks sent, manifests written, answers ingested, money approved and bonused."""
        tasks = sum(len(read_json(self.state, k)["tasks"]) for k in self.state.list("batches/"))
        manifests = sum(1 for k in self.exchange.list(self.params.requests_prefix) if k.endswith(".manifest.jsonl"))
        answers = sum(len([line for line in self.state.read_bytes(k).splitlines() if line.strip()])
                      for k in self.state.list("answers/"))
        paid = sum(read_json(self.exchange, k)["paid"] for k in self.exchange.list("acks/"))
        bonuses = sum(read_json(self.exchange, k)["amount"] * len(read_json(self.exchange, k)["assignment_ids"])
                      for k in self.exchange.list("bonuses/"))
        return {"tasks": tasks, "manifests": manifests, "answers": answers, "paid": round(paid, 2),
                "bonuses": round(bonuses, 2)}
