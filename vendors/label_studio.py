"""Label Studio as an annotation vendor (label-studio-sdk is imported only here).

Install with ``pip install 'crowdloop[labelstudio]'``. The Label Studio *server* runs in its
own virtual environment beside the pipeline (its pins conflict with Prefect); crowdloop only
talks to it over HTTP. Connection settings come from the environment, never from YAML:
``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (a legacy token or a personal access token);
the key may instead live in the Prefect Secret block the config names
(``credentials.label_studio_api_key``).

* The project is created on first use (or reused: ``project_id`` / a stored id) with a
  labeling config generated from the class list and the data type (text, image, tabular).
* Tasks are imported with the model's prediction and score as pre-annotation when the task
  payload carries one (``payload["prediction"] = {"label": ..., "score": ...}``).
* Redundancy is each task's overlap. The project's ``maximum_annotations`` is chosen once, by
  the first batch imported into an empty project (its most common replicas); a task asked for
  another number (an audit item: 5 judgments beside the batch's 3) gets its own overlap right
  after the import. crowdloop never changes ``maximum_annotations`` of a project that holds
  tasks: Label Studio then sets the overlap of every task with overlap > 1 to the new value,
  which would reopen closed tasks and undo re-asks (so do not change it by hand mid-run either).
* ``poll`` reads submitted annotations only (cancelled/skipped ones are not labels),
  annotator id → worker id, lead time → duration; each annotation is returned once.
* Import has no idempotency key, so every task carries ``crowdloop_batch``/``crowdloop_item``
  in its data: the intent is written before the import and a rerun that finds an intent
  without a result imports only the items the project does not hold yet.

Quality controls:

* "ask somebody else" (``excludes_workers_per_item``): a re-ask raises the overlap of the item's
  own earlier Label Studio task by one (an absolute value, so a rerun sets the same); Label
  Studio's labeling stream never gives a task to an annotator who annotated it, so the new
  judgment is somebody else's. Annotations present when the re-ask was made belong to earlier
  batches;
* blocking (``blocks_workers``) exists only with ``block_removes_membership: true``: Label Studio
  Community has no per-project membership, so a blocked annotator's organization membership is
  soft-deleted (they lose every project of the organization; invite them again to undo). Their
  earlier annotations stay and are approved with their batch;
* images (``images_by_url``): an image file becomes an S3 presigned URL valid for
  ``image_url_expiry_s`` (``context.image_url``); Label Studio's browser loads it directly.

Work after the deadline (``collect.timeout_s`` after the submit): Label Studio has no deadline
of its own, so the loop's poll after it closes the batch: it reads the batch's annotations, then
**deletes the batch's tasks nobody annotated** (no work is lost and nobody can start on them any
more), **finishes the ones with fewer annotations than asked** (their overlap lowered to what
they have: Label Studio hands them to nobody else; a later re-ask raises it again) and records
the close (``closed/<batch>.json``). An annotation made after the close (an editor left open) is never a
label of the loop: every later poll reports it once, in the log and under ``late/<id>.json``
(``ledger()["late"]``), for the team to pay or discard by hand. A batch the loop paid before its
deadline is closed the same way when it is acknowledged.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crowdloop import keys
from crowdloop.errors import RecordExistsError, VendorError
from crowdloop.records import Annotation, Task, content_hash, utcnow
from crowdloop.storage import read_json, write_json
from crowdloop.vendor import (
    BLOCKS_WORKERS,
    EXCLUDES_WORKERS_PER_ITEM,
    IMAGES_BY_URL,
    Ref,
    VendorContext,
    VendorPlan,
    acknowledged,
    block_of,
    image_payload,
    parse_params,
    record_block,
    record_decision,
)

log = logging.getLogger(__name__)

URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"
DATA_FIELD = {"text": "text", "image": "image", "tabular": "row"}
TAG = {"text": "Text", "image": "Image", "tabular": "Table"}
KIND_TO_TYPE = {"text": "text", "image_url": "image", "tabular": "tabular"}
MAX_LEAD_TIME_S = 7 * 24 * 3600.0  # longer than a week on one item is not a measurement


def _payload_type(payload: dict[str, Any]) -> str | None:
    """Label Studio data type of an item payload; pixel grids (e.g. digits) show as images."""
    kind = payload.get("kind")
    if kind == "image":
        if payload.get("pixels") is None:
            raise VendorError(f"vendor 'label_studio': image item {str(payload.get('path', ''))[:80]!r} is a local "
                              "file; serve the images over http(s) (e.g. S3 presigned URLs) as payload kind 'image_url'")
        return "image"
    return KIND_TO_TYPE.get(kind)


def _pixels_data_url(pixels: list[list[float]]) -> str:
    """A small grayscale grid as an inline PNG (data URL), scaled up so annotators can see it."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    grid = np.asarray(pixels, dtype=np.float64)
    top = grid.max() or 1.0
    image = Image.fromarray((255 * (1 - grid / top)).astype(np.uint8), mode="L").resize(
        (grid.shape[1] * 24, grid.shape[0] * 24), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class LabelStudioParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project_id: int | None = Field(None, ge=1, description="reuse this Label Studio project (its config must fit)")
    title: str | None = Field(None, max_length=50, description="project title; default 'crowdloop <project>'")
    data_type: Literal["auto", "text", "image", "tabular"] = Field("auto", description="auto: from the first item")
    instructions: str = Field("", max_length=10000, description="HTML shown to annotators before labeling; default: "
                                                                "the project's guidelines and class notes")
    page_size: int = Field(100, ge=1, le=1000, description="tasks per page when reading annotations")
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout per request")
    block_removes_membership: bool = Field(
        False, description="let crowdloop block annotators by soft-deleting their organization membership "
                           "(Label Studio Community's only way; they lose every project of the organization)")
    image_url_expiry_s: int = Field(7 * 86400, ge=60, le=7 * 86400, description="presigned image URLs stay valid this long")


def labeling_config(classes: Sequence[str], data_type: str, notes: Mapping[str, str] | None = None) -> str:
    """A single-choice classification interface for ``data_type`` (text, image or tabular);
    a class's note (``guidelines.classes``) is its choice's hover hint."""
    if data_type not in TAG:
        raise VendorError(f"vendor 'label_studio': data_type={data_type!r}: expected one of text, image, tabular")
    notes = notes or {}
    choices = "".join(f"<Choice value={quoteattr(c)}" + (f" hint={quoteattr(notes[c])}" if notes.get(c) else "") + "/>"
                      for c in classes)
    return (f'<View><{TAG[data_type]} name="item" value="${DATA_FIELD[data_type]}"/>'
            f'<Choices name="label" toName="item" choice="single" showInline="true" required="true">{choices}'
            "</Choices></View>")


def instructions_html(guidelines: str, notes: Mapping[str, str], classes: Sequence[str]) -> str:
    """Label Studio's instructions (HTML) from the project's guidelines and class notes, escaped."""
    parts = [f"<p>{html.escape(guidelines).replace(chr(10), '<br>')}</p>"] if guidelines else []
    listed = [c for c in classes if notes.get(c)]
    if listed:
        parts.append("<ul>" + "".join(f"<li><b>{html.escape(c)}</b>: {html.escape(notes[c])}</li>" for c in listed) + "</ul>")
    return "".join(parts)


def task_data(payload: dict[str, Any], data_type: str) -> Any:
    """The value Label Studio shows for one item, from crowdloop's item payload."""
    kind = payload.get("kind")
    if _payload_type(payload) != data_type:
        raise VendorError(f"vendor 'label_studio': item payload kind {kind!r} does not fit data_type {data_type!r}")
    if data_type == "text":
        return str(payload.get("text", ""))
    if data_type == "image":
        return _pixels_data_url(payload["pixels"]) if kind == "image" else str(payload["url"])
    return {str(c): v for c, v in zip(payload.get("columns", []), payload.get("values", []), strict=True)}


class LabelStudioVendor:
    """Label Studio projects as the workforce: your own annotators, overlap for redundancy."""

    name = "label_studio"
    capabilities = frozenset({BLOCKS_WORKERS, EXCLUDES_WORKERS_PER_ITEM, IMAGES_BY_URL})
    capability_hints: ClassVar[dict[str, str]] = {  # the hint in the one-line error
        BLOCKS_WORKERS: "Label Studio Community blocks only by removing an annotator from the organization: "
                        "set vendor.params.block_removes_membership: true to allow it"}

    @classmethod
    def capabilities_for(cls, params: dict[str, Any]) -> frozenset[str]:
        """Blocking only where the user allowed its only form (removal from the organization)."""
        if params.get("block_removes_membership") is True:
            return cls.capabilities
        return cls.capabilities - {BLOCKS_WORKERS}

    @classmethod
    def check_params(cls, params: dict, plan: VendorPlan) -> LabelStudioParams:
        """Offline check of ``params`` (nothing is contacted or written).

        A batch imports new items with their own redundancy (each task's overlap); re-asks and
        gold asked again raise the overlap of the item's own earlier task instead of importing it
        (``_reask``), so adaptive redundancy with any ``consensus.min_judgments`` fits, and an
        audit's redundancy beside it.
        """
        return parse_params(LabelStudioParams, params, vendor=cls.name)

    def __init__(self, params: dict, context: VendorContext) -> None:
        self.params = parse_params(LabelStudioParams, params, vendor=self.name)
        self.context = context
        self.store = context.store
        self._returned: set[str] = set()
        self._client: LabelStudio | None = None
        self._key: str | None = None

    @property
    def client(self) -> LabelStudio:
        if self._client is None:
            url = os.environ.get(URL_ENV)
            key = self.context.credentials.label_studio_key() or os.environ.get(KEY_ENV)
            if not url or not key:
                missing = " and ".join(n for n, v in ((URL_ENV, url), (KEY_ENV, key)) if not v)
                raise VendorError(f"vendor 'label_studio': set {missing} in the environment (never in the config file)")
            self._key = key
            self._client = LabelStudio(base_url=url.rstrip("/"), api_key=key, timeout=self.params.timeout_s)
        return self._client

    def ensure_webhook(self, url: str, *, headers: dict[str, str]) -> int:
        """Label Studio calls ``url`` (with ``headers``) when an annotation is created in this
        project's Label Studio project; an existing webhook to ``url`` is updated. Its id."""
        pid = self.project_id()
        for hook in self._api("webhooks.list", self.client.webhooks.list, project=str(pid)):
            if getattr(hook, "url", None) == url:
                self._api("webhooks.update", self.client.webhooks.update, hook.id, url=url, headers=headers,
                          send_payload=True, send_for_all_actions=False, actions=["ANNOTATION_CREATED"], is_active=True)
                return int(hook.id)
        hook = self._api("webhooks.create", self.client.webhooks.create, project=pid, url=url, headers=headers,
                         send_payload=True, send_for_all_actions=False, actions=["ANNOTATION_CREATED"], is_active=True)
        return int(hook.id)

    def _api(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            # The body is the server's; a broken proxy may echo the request, API key included. Only
            # the redacted message travels on (``from None``: the raw error would print the body).
            body = _redact(str(exc.body)[:300], self._key)
            raise VendorError(f"vendor 'label_studio': {what} failed: HTTP {exc.status_code}: {body}") from None
        except (OSError, httpx.HTTPError) as exc:  # connection refused, DNS, timeouts
            raise VendorError(f"vendor 'label_studio': {what} failed: {_redact(str(exc), self._key)}") from exc

    # -- project --------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.params.title or f"crowdloop {self.context.project}"[:50]

    def project_id(self, data_type: str | None = None) -> int:
        """The Label Studio project id: stored, configured, found by title, or newly created."""
        record = read_json(self.store, "project.json", default=None)
        if record is not None:
            return int(record["id"])
        if self.params.project_id is not None:
            pid = self.params.project_id
        else:
            if data_type is None:
                raise VendorError("vendor 'label_studio': no project yet (nothing was submitted)")
            config = labeling_config(self.context.classes, data_type, self.context.class_notes)
            instructions = self.instructions()
            _write_once(self.store, "project.intent.json", {"title": self.title, "data_type": data_type})
            pid = self._find_project_by_title()
            if pid is None:
                project = self._api("projects.create", self.client.projects.create, title=self.title,
                                    label_config=config, expert_instruction=instructions,
                                    show_instruction=bool(instructions), show_skip_button=True,
                                    maximum_annotations=1, overlap_cohort_percentage=100)
                pid = int(project.id)
        self._check_reused(pid)
        self._check_not_anothers(pid)
        _write_once(self.store, "project.json", {"id": pid, "title": self.title, "data_type": data_type})
        return int(read_json(self.store, "project.json")["id"])

    def instructions(self) -> str:
        """What annotators read first: ``params.instructions``, else the project's guidelines."""
        return self.params.instructions or instructions_html(self.context.guidelines, self.context.class_notes,
                                                             self.context.classes)

    def _sync_instructions(self, pid: int) -> None:
        """Guidelines may change on resume (a team learns its task): the Label Studio project's
        instructions follow them, set once per new text (``instructions.json`` holds the digest of
        the last text set). Never emptied: a reused project keeps its own when the config has none."""
        wanted = self.instructions()
        if not wanted:
            return
        digest = content_hash(wanted.encode())
        done = read_json(self.store, "instructions.json", default=None)
        if done is not None and done.get("sha256") == digest:
            return
        shown = self._api("projects.get", self.client.projects.get, pid)
        if (getattr(shown, "expert_instruction", None) or "") != wanted or not getattr(shown, "show_instruction", False):
            self._api("projects.update", self.client.projects.update, pid, expert_instruction=wanted,
                      show_instruction=True)
        write_json(self.store, "instructions.json", {"sha256": digest})

    def _check_not_anothers(self, pid: int) -> None:
        """Refuse a project that already holds batches of a crowdloop project of this name which this
        store did not send: batch ids are ``<project>-rNNNN``, so its answers would be taken as this
        run's and booked twice (a store deleted to start over, or a second store of the same name).
        A store imports only after recording the project, so its own tasks never meet this check."""
        for task in self._tasks(pid):
            batch = (task.get("data") or {}).get("crowdloop_batch")
            if isinstance(batch, str) and keys.is_batch_of(self.context.project, batch):
                raise VendorError(
                    f"vendor 'label_studio': project {pid} ({self.title!r}) already holds tasks of batch {batch!r}, "
                    f"which this project store did not send (an earlier store of a project named "
                    f"{self.context.project!r}, or another one running); their answers would be taken as this run's "
                    "and booked twice. Give this run a Label Studio project of its own (vendor.params.title or "
                    "project_id), or delete those tasks in Label Studio")

    def _check_reused(self, pid: int) -> None:
        """A reused project must offer every class as a choice named ``label``, or answers would not parse."""
        config = self._api("projects.get", self.client.projects.get, pid).label_config or ""
        try:
            root = ET.fromstring(config)
        except ET.ParseError as exc:
            raise VendorError(f"vendor 'label_studio': project {pid} has an unreadable labeling config: {exc}") from None
        offered = {c.get("value") for ch in root.iter("Choices") if ch.get("name") == "label" for c in ch.iter("Choice")}
        missing = [c for c in self.context.classes if c not in offered]
        if missing:
            raise VendorError(f"vendor 'label_studio': project {pid} has no <Choices name=\"label\"> offering "
                              f"{missing[:5]}; use a new project or fix its labeling config")

    def _find_project_by_title(self) -> int | None:
        for project in self._api("projects.list", self.client.projects.list, title=self.title, page_size=100):
            if getattr(project, "title", None) == self.title:
                return int(project.id)
        return None

    def _project_overlap(self, pid: int, fresh: Sequence[Task]) -> int:
        """The overlap Label Studio gives imported tasks (``maximum_annotations``), chosen here only
        while the project holds no task: changing it later resets every task's overlap above 1."""
        project = self._api("projects.get", self.client.projects.get, pid)
        current = int(project.maximum_annotations or 1)
        if fresh and not project.task_number:
            common = Counter(t.replicas for t in fresh).most_common(1)[0][0]
            if common != current:
                self._api("projects.update", self.client.projects.update, pid, maximum_annotations=common,
                          overlap_cohort_percentage=100)
            return common
        return current

    # -- vendor protocol ------------------------------------------------------------------
    def submit(self, tasks: Sequence[Task], *, batch_id: str) -> list[Ref]:
        """Import the batch's tasks once (idempotent per batch id)."""
        done = read_json(self.store, f"batches/{batch_id}.json", default=None)
        if done is not None:
            return [{"batch_id": batch_id, "project_id": done["project_id"]}]
        if not tasks:
            return []
        earlier = self._earlier_tasks(batch_id)
        reasks = [t for t in tasks if t.exclude_workers and t.item_id in earlier]
        fresh = [t for t in tasks if not (t.exclude_workers and t.item_id in earlier)]
        expiry = self.params.image_url_expiry_s
        payloads = {t.item_id: image_payload(self.context, t.item_id, expiry) for t in fresh}
        data_type = self.params.data_type
        if data_type == "auto" and payloads:
            first = next(iter(payloads.values()))
            data_type = _payload_type(first)
            if data_type is None:
                raise VendorError(f"vendor 'label_studio': item payload kind {first.get('kind')!r}: "
                                  "expected text, image, image_url or tabular")
        pid = self.project_id(data_type if payloads else None)
        self._sync_instructions(pid)
        overlap = self._project_overlap(pid, fresh)
        _write_once(self.store, f"batches/{batch_id}.intent.json",
                    {"batch_id": batch_id, "project_id": pid, "item_ids": [t.item_id for t in tasks]})
        reasked = {t.item_id: self._reask(pid, t, earlier[t.item_id], batch_id) for t in reasks}
        present = self._batch_tasks(pid, batch_id) if fresh else {}  # after a crash mid-import: what arrived already
        missing = [t for t in fresh if t.item_id not in present]
        if missing:
            field = DATA_FIELD[data_type]
            body = [self._import_row(t, payloads[t.item_id], field, batch_id) for t in missing]
            self._api("projects.import_tasks", self.client.projects.import_tasks, pid, request=body,
                      return_task_ids=True)
            present = self._batch_tasks(pid, batch_id)
        lost = [t.item_id for t in fresh if t.item_id not in present]
        if lost:
            raise VendorError(f"vendor 'label_studio': project {pid} did not keep {len(lost)} imported task(s), e.g. {lost[0]!r}")
        for t in fresh:  # absolute values, before the batch is recorded: a rerun after a crash sets the same
            if t.replicas != overlap:
                self._api("tasks.update", self.client.tasks.update, str(present[t.item_id]), overlap=t.replicas)
        record = {"batch_id": batch_id, "project_id": pid, "round": tasks[0].round,
                  "deadline": (time.time() + self.context.collect_timeout_s
                               if self.context.collect_timeout_s is not None else None),
                  "tasks": {t.item_id: present[t.item_id] for t in fresh},
                  "reasks": reasked,  # item -> {task_id, known: annotation ids of earlier batches}
                  "rewards": {t.item_id: t.reward for t in tasks}, "is_gold": {t.item_id: t.is_gold for t in tasks}}
        _write_once(self.store, f"batches/{batch_id}.json", record)
        return [{"batch_id": batch_id, "project_id": pid}]

    def poll(self, refs: Sequence[Ref]) -> list[Annotation]:
        """Submitted annotations of the batches' tasks not returned or acknowledged before.

        A poll after a batch's deadline then closes it (``_close``); every poll reports
        annotations made on closed batches' tasks after they closed (``late/``).
        """
        acked = acknowledged(self.store)
        out: list[Annotation] = []
        closed_tasks = self._closed_tasks(exclude={str(ref["batch_id"]) for ref in refs})
        for ref in refs:
            record = read_json(self.store, f"batches/{ref['batch_id']}.json")
            item_of = {int(tid): item for item, tid in record["tasks"].items()}
            known: dict[int, set[int]] = {}  # re-asked task -> annotations that belong to earlier batches
            for item, reask in record.get("reasks", {}).items():
                item_of[int(reask["task_id"])] = item
                known[int(reask["task_id"])] = set(reask["known"])
            closing = record.get("deadline") is not None and time.time() >= record["deadline"]
            ours: list[dict[str, Any]] = []  # the batch's tasks as just listed, for the close
            for task in self._tasks(record["project_id"], with_annotations=True):
                task_id = _int_id(task.get("id"))
                annotations = _annotation_dicts(task)
                if task_id in known:  # re-asked now: what it counted as earlier batches' work may be late work
                    late = [a for a in annotations if _int_id(a.get("id")) in known[task_id]]
                    self._report_late(record["project_id"], task_id, closed_tasks.get(task_id), late, acked)
                elif task_id in closed_tasks:
                    self._report_late(record["project_id"], task_id, closed_tasks[task_id], annotations, acked)
                item = item_of.get(task_id)
                if item is None:
                    continue  # not one of ours (or no usable id): never guess
                if closing:
                    ours.append(task)
                for ann in annotations:
                    ann_id = _int_id(ann.get("id"))
                    if ann_id is None or ann_id in known.get(task_id, ()):
                        continue  # cannot be de-duplicated (so never counted), or an earlier batch's
                    aid = f"ls{record['project_id']}-{ann_id}"
                    if aid in self._returned or aid in acked:
                        continue
                    converted = self._to_annotation(ann, aid, item, record)
                    if converted is not None:
                        self._returned.add(aid)
                        out.append(converted)
            if closing:
                self._close(record, reason="deadline", listing=ours)
        return out

    def _close(self, record: dict[str, Any], *, reason: str, listing: Iterable[dict[str, Any]] | None = None) -> None:
        """Delete the batch's tasks nobody annotated and finish the ones with fewer answers than
        their overlap (overlap lowered to what they have, so Label Studio hands them to nobody
        else; a later re-ask raises it again); ``listing``: the tasks just listed (None: list them
        now). The close is recorded once; an intent lists what it does, so a rerun after a crash
        repeats exactly that (a delete done before finds a 404)."""
        batch = record["batch_id"]
        if self.store.exists(f"closed/{batch}.json"):
            return
        if listing is None:
            listing = self._tasks(record["project_id"], with_annotations=True)
        unanswered, partial = _closing_plan(record, listing)
        _write_once(self.store, f"closed/{batch}.intent.json", {"batch_id": batch, "delete": sorted(unanswered),
                                                                "finish": {str(t): n for t, n in sorted(partial.items())}})
        for task_id, n in read_json(self.store, f"closed/{batch}.intent.json").get("finish", {}).items():
            self._api("tasks.update", self.client.tasks.update, task_id, overlap=n, is_labeled=True)
        for task_id in read_json(self.store, f"closed/{batch}.intent.json")["delete"]:
            try:
                self.client.tasks.delete(str(task_id))
            except ApiError as exc:
                if exc.status_code != 404:  # 404: deleted before (a rerun after a crash)
                    raise VendorError(f"vendor 'label_studio': deleting task {task_id} failed: HTTP "
                                      f"{exc.status_code}: {_redact(str(exc.body)[:200], self._key)}") from None
            except (OSError, httpx.HTTPError) as exc:
                raise VendorError(f"vendor 'label_studio': deleting task {task_id} failed: {_redact(str(exc))}") from exc
        _write_once(self.store, f"closed/{batch}.json", {"batch_id": batch, "reason": reason, "deleted": sorted(unanswered),
                                                         "at": utcnow().isoformat()})

    def _closed_tasks(self, *, exclude: set[str]) -> dict[int, str]:
        """Task id -> batch, for the tasks of closed batches not in ``exclude`` (deleted ones left out)."""
        out: dict[int, str] = {}
        for key in self.store.list("closed/"):
            if key.endswith(".intent.json"):
                continue
            closed = read_json(self.store, key)
            if closed["batch_id"] in exclude:
                continue
            batch = read_json(self.store, f"batches/{closed['batch_id']}.json", default=None) or {}
            deleted = set(closed.get("deleted", []))
            for task_id in list(batch.get("tasks", {}).values()) + [r["task_id"] for r in batch.get("reasks", {}).values()]:
                if int(task_id) not in deleted:
                    out[int(task_id)] = closed["batch_id"]
        return out

    def _report_late(self, pid: int, task_id: int, batch: str | None, annotations: list[dict[str, Any]],
                     acked: set[str]) -> None:
        """Record (once, with a warning) each submitted annotation of a closed batch's task that the
        loop never decided: made after the close, it is no label of the loop and nobody paid it."""
        for ann in annotations:
            ann_id = _int_id(ann.get("id"))
            if ann_id is None or ann.get("was_cancelled"):
                continue
            aid = f"ls{pid}-{ann_id}"
            if aid in acked or self.store.exists(f"late/{aid}.json"):
                continue
            worker = ann.get("completed_by")
            worker = worker.get("id") if isinstance(worker, dict) else worker
            log.warning("label_studio: annotation %s on task %s of batch %s came after the batch closed; it is no "
                        "label of the loop and was not paid (see late/)", aid, task_id, batch)
            _write_once(self.store, f"late/{aid}.json", {"annotation": aid, "task_id": task_id, "batch_id": batch,
                                                         "worker_id": f"ls-user-{_int_id(worker)}",
                                                         "created_at": str(ann.get("created_at")),
                                                         "found_at": utcnow().isoformat()})

    def late_annotations(self) -> list[dict[str, Any]]:
        """Annotations made on closed batches' tasks (never labels of the loop, never paid by it)."""
        return [read_json(self.store, k) for k in sorted(self.store.list("late/"))]

    def acknowledge(self, assignments: Sequence[Annotation], *, accept: bool, reason: str | None = None) -> None:
        """Record the decision (Label Studio has no payments; pay your annotators from this record)."""
        if not accept and not (reason and reason.strip()):
            raise VendorError("vendor 'label_studio': a rejection needs a reason the annotator can read")
        record_decision(self.store, assignments, accept=accept, reason=reason, at=utcnow().isoformat())
        for batch in sorted({a.batch_id for a in assignments}):  # paid: the batch is closed (if not before)
            record = read_json(self.store, f"batches/{batch}.json", default=None)
            if record is not None:
                self._close(record, reason="paid")

    def bonus(self, assignments: Sequence[Annotation], *, amount: float, reason: str, token: str) -> None:
        """Record a top-up once per token, for the team's own payroll."""
        _write_once(self.store, f"bonuses/{content_hash(token.encode(), 24)}.json",
                    {"assignment_ids": sorted(a.assignment_id for a in assignments), "amount": amount,
                     "reason": reason, "workers": sorted({a.worker_id for a in assignments})})

    def block_workers(self, worker_ids: Sequence[str], *, reason: str) -> None:
        """Soft-delete the annotators' organization membership (only with ``block_removes_membership``);
        recorded after Label Studio accepted it, so a crash before repeats it (a repeat finds no member)."""
        if not self.params.block_removes_membership:
            raise VendorError("vendor 'label_studio': blocking needs vendor.params.block_removes_membership: true")
        for worker in sorted(set(worker_ids)):
            if block_of(self.store, worker) is not None:
                continue
            user = _int_id(worker.removeprefix("ls-user-"))
            if user is None or not worker.startswith("ls-user-"):
                raise VendorError(f"vendor 'label_studio': worker {worker[:60]!r} is not a Label Studio user of this vendor")
            organization = self._organization()
            try:
                self.client.organizations.members.delete(id=organization, user_pk=user)
            except ApiError as exc:
                if exc.status_code != 404:  # 404: no (longer a) member, e.g. the rerun after a crash
                    raise VendorError(f"vendor 'label_studio': cannot remove user {user} from organization "
                                      f"{organization}: HTTP {exc.status_code}: {_redact(str(exc.body)[:200])}") from None
            except (OSError, httpx.HTTPError) as exc:
                raise VendorError(f"vendor 'label_studio': removing user {user} failed: {_redact(str(exc))}") from exc
            record_block(self.store, worker, reason=reason, user_id=user, organization=organization,
                         at=utcnow().isoformat())

    def _organization(self) -> int:
        record = read_json(self.store, "project.json", default=None)
        if record is not None:
            organization = self._api("projects.get", self.client.projects.get, int(record["id"])).organization
            if organization is not None:
                return int(organization)
        return int(self._api("users.whoami", self.client.users.whoami).active_organization)

    def _earlier_tasks(self, batch_id: str) -> dict[str, int]:
        """Item -> its Label Studio task, for items imported by earlier batches (first import wins)."""
        out: dict[str, int] = {}
        deleted: set[int] = set()
        for key in self.store.list("closed/"):
            if not key.endswith(".intent.json"):
                deleted.update(read_json(self.store, key).get("deleted", []))
        for key in sorted(self.store.list("batches/")):
            if key.endswith(".intent.json") or key == f"batches/{batch_id}.json":
                continue
            for item, task_id in read_json(self.store, key)["tasks"].items():
                if int(task_id) not in deleted:  # deleted when its batch closed unanswered: import it again
                    out.setdefault(item, int(task_id))
        return out

    def _reask(self, pid: int, task: Task, task_id: int, batch_id: str) -> dict[str, Any]:
        """``task.replicas`` more annotations on the item's own task, from annotators who have not annotated it."""
        key = f"reasks/{batch_id}/{content_hash(task.item_id.encode(), 24)}.json"
        intent = read_json(self.store, key, default=None)
        if intent is None:
            current = self._api("tasks.get", self.client.tasks.get, str(task_id)).model_dump()
            annotations = [a for a in current.get("annotations") or [] if isinstance(a, dict)]
            known = sorted({i for a in annotations if (i := _int_id(a.get("id"))) is not None})
            done = sum(1 for a in annotations if not a.get("was_cancelled"))
            # exactly ``replicas`` more than are there: an absolute value, so a rerun sets the same
            _write_once(self.store, key, {"task_id": task_id, "known": known, "overlap": done + task.replicas})
            intent = read_json(self.store, key)
        self._api("tasks.update", self.client.tasks.update, str(task_id), overlap=intent["overlap"], is_labeled=False)
        return {"task_id": task_id, "known": intent["known"]}

    def ledger(self) -> dict[str, float | int]:
        """What was decided for the team's payroll: tasks imported, answers approved, money approved and bonused."""
        acks = [read_json(self.store, k) for k in self.store.list("acks/")]
        bonuses = [read_json(self.store, k) for k in self.store.list("bonuses/")]
        tasks = sum(len(read_json(self.store, k)["tasks"]) for k in self.store.list("batches/") if not k.endswith(".intent.json"))
        return {"tasks": tasks, "approved": sum(len(a["assignment_ids"]) for a in acks if a["accept"]),
                "paid": round(sum(a.get("paid", 0.0) for a in acks), 2),
                "bonuses": round(sum(b["amount"] * len(b["assignment_ids"]) for b in bonuses), 2),
                "late": len(self.store.list("late/"))}

    # -- helpers -----------------------------------------------------------------------------
    def _import_row(self, task: Task, payload: dict[str, Any], field: str, batch_id: str) -> dict[str, Any]:
        data_type = next(k for k, v in DATA_FIELD.items() if v == field)
        row: dict[str, Any] = {"data": {field: task_data(payload, data_type), "crowdloop_item": task.item_id,
                                        "crowdloop_batch": batch_id, "crowdloop_round": task.round}}
        prediction = task.payload.get("prediction") if task.payload else None
        if prediction and prediction.get("label") in self.context.classes:
            row["predictions"] = [{
                "model_version": f"crowdloop-r{task.round}", "score": float(prediction.get("score", 0.0)),
                "result": [{"from_name": "label", "to_name": "item", "type": "choices",
                            "value": {"choices": [prediction["label"]]}}],
            }]
        return row

    def _tasks(self, pid: int, *, with_annotations: bool = False) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"project": pid, "page_size": self.params.page_size}
        if with_annotations:
            kwargs["fields"] = "all"
        pager = self._api("tasks.list", self.client.tasks.list, **kwargs)
        try:
            for task in pager:
                yield task.model_dump() if hasattr(task, "model_dump") else dict(task)
        except ApiError as exc:
            raise VendorError(f"vendor 'label_studio': tasks.list failed: HTTP {exc.status_code}") from exc
        except (OSError, httpx.HTTPError) as exc:
            raise VendorError(f"vendor 'label_studio': tasks.list failed: {exc}") from exc

    def _batch_tasks(self, pid: int, batch_id: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for task in self._tasks(pid):
            data = task.get("data") or {}
            if data.get("crowdloop_batch") == batch_id:
                found.setdefault(str(data.get("crowdloop_item")), int(task["id"]))
        return found

    def _to_annotation(self, ann: dict[str, Any], aid: str, item: str, record: dict[str, Any]) -> Annotation | None:
        """A submitted annotation as a crowdloop record; None for skips, empty or unusable ones.

        Whatever the server (or anyone with write access to the project) put there, only a
        well-formed answer naming one of the classes becomes a record; the rest is logged once.
        """
        if ann.get("was_cancelled"):
            return None  # skipped by the annotator: not a label
        results = ann.get("result")
        labels = []
        for r in results if isinstance(results, list) else []:
            if not isinstance(r, dict) or r.get("from_name") != "label" or r.get("type") != "choices":
                continue
            value = r.get("value")
            choices = value.get("choices") if isinstance(value, dict) else None
            if isinstance(choices, list) and choices:
                labels.append(choices[0])
        if not labels:
            return None  # an empty submission is no answer
        problem = None
        label = labels[0]
        worker = ann.get("completed_by")
        if isinstance(worker, dict):
            worker = worker.get("id")
        submitted = ann.get("updated_at") or ann.get("created_at") or utcnow()
        lead = ann.get("lead_time") or 0.0
        if not isinstance(label, str) or label not in self.context.classes:
            problem = f"{str(label)[:80]!r} is not one of {list(self.context.classes)}"
        elif _int_id(worker) is None:
            problem = f"completed_by {str(worker)[:40]!r} is not a user id"
        elif not isinstance(lead, (int, float)) or isinstance(lead, bool) or not 0 <= lead < MAX_LEAD_TIME_S:
            problem = f"lead_time {str(lead)[:40]!r}: expected seconds in [0, {MAX_LEAD_TIME_S:.0f})"
        else:
            try:
                out = Annotation(item_id=item, worker_id=f"ls-user-{_int_id(worker)}", label=label, vendor=self.name,
                                 assignment_id=aid, batch_id=record["batch_id"], round=record["round"],
                                 submitted_at=submitted, duration_s=round(float(lead), 3),
                                 reward=record["rewards"][item], is_gold=bool(record["is_gold"][item]))
                if out.submitted_at.tzinfo is None:  # Label Studio speaks UTC; never mix naive and aware times
                    out = out.model_copy(update={"submitted_at": out.submitted_at.replace(tzinfo=UTC)})
                return out
            except ValidationError as exc:
                problem = f"unusable fields: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}"
        log.warning("label_studio: skipping annotation %s: %s", aid, problem)
        self._returned.add(aid)
        return None


def _redact(text: str, key: str | None = None) -> str:
    """``text`` without the API key in use or in the environment (nor the URL's password)."""
    for secret in (key, os.environ.get(KEY_ENV), urlsplit(os.environ.get(URL_ENV) or "").password):
        if secret:
            text = text.replace(secret, "***")
    return text


def _annotation_dicts(task: dict[str, Any]) -> list[dict[str, Any]]:
    """A listed task's annotations (anything that is not an annotation object left out)."""
    annotations = task.get("annotations") or []
    return [a for a in annotations if isinstance(a, dict)] if isinstance(annotations, list) else []


def _closing_plan(record: dict[str, Any], listing: Iterable[dict[str, Any]]) -> tuple[list[int], dict[int, int]]:
    """What closing batch ``record`` does to its tasks in ``listing``: the tasks it imported that
    nobody annotated (deleted), and each of its tasks, re-asked ones included, with fewer
    annotations than its overlap, with how many it has (finished at that count)."""
    fresh = {int(t) for t in record["tasks"].values()}
    reasked = {int(r["task_id"]) for r in record.get("reasks", {}).values()}
    unanswered: list[int] = []
    partial: dict[int, int] = {}
    for task in listing:
        task_id = _int_id(task.get("id"))
        if task_id not in fresh and task_id not in reasked:
            continue
        n = len(_annotation_dicts(task))
        if n == 0 and task_id in fresh:
            unanswered.append(task_id)
        elif 0 < n < (_int_id(task.get("overlap")) or 0):
            partial[task_id] = n
    return unanswered, partial


def _int_id(value: Any) -> int | None:
    """A Label Studio object id (a positive int, or its decimal string); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value) or None
    return None


def _write_once(store, key: str, obj: Any) -> None:
    with contextlib.suppress(RecordExistsError):
        write_json(store, key, obj, create_only=True)
