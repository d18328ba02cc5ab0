"""Answers as Prefect events, and the trigger that runs collection when a batch may be complete.

Vendors that can tell when people answer emit events on the project's resource
(``crowdloop.project.<name>``):

* ``crowdloop.answer.submitted`` on every answer (the event feed shows the work arriving);
* ``crowdloop.batch.answered`` when, as far as the vendor can tell, no task of the batch waits
  for answers any more. The collect deployment's trigger (``batch_answered_trigger``) runs
  ``collect_answers`` on it at once, instead of at the next tick of its interval schedule.

Emitters: ``answer_emitter`` is the hook the local annotation app calls after each answer
(``crowdloop annotate`` installs it when a Prefect API is configured), and
``label_studio_receiver`` is a small web app that takes Label Studio's ``ANNOTATION_CREATED``
webhook and emits the same events. An event is a hint, never a fact: the collect flow reads
the vendor and the store, so a lost or duplicated event costs a poll, not an answer.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from prefect.events import DeploymentEventTrigger, emit_event

log = logging.getLogger("crowdloop.flows.events")

ANSWER_SUBMITTED = "crowdloop.answer.submitted"
BATCH_ANSWERED = "crowdloop.batch.answered"
# How long a triggered collect run keeps polling while the last answers become final (the
# local app returns an answer after its undo window, 30 s by default, plus a margin).
TRIGGERED_WAIT_S = 120.0


def project_resource_id(project: str) -> str:
    return f"crowdloop.project.{project}"


def _resource(project: str, batch_id: str, round_: int | None) -> dict[str, str]:
    resource = {"prefect.resource.id": project_resource_id(project), "prefect.resource.name": project,
                "crowdloop.batch": batch_id}
    if round_ is not None:
        resource["crowdloop.round"] = str(round_)
    return resource


def emit_answer(project: str, batch_id: str, round_: int | None, *, waiting: int | None, source: str) -> None:
    """Emit ``answer.submitted`` and, when nothing of the batch waits (``waiting == 0``), ``batch.answered``."""
    resource = _resource(project, batch_id, round_)
    emit_event(event=ANSWER_SUBMITTED, resource=resource, payload={"source": source, "waiting": waiting})
    if waiting == 0:
        emit_event(event=BATCH_ANSWERED, resource=resource, payload={"source": source})


def batch_answered_trigger(project: str, parameters: dict[str, Any]) -> DeploymentEventTrigger:
    """The collect deployment's trigger: one run per ``batch.answered`` event of ``project``."""
    return DeploymentEventTrigger(
        name=f"crowdloop {project}: collect when a batch may be complete",
        expect={BATCH_ANSWERED},
        match={"prefect.resource.id": project_resource_id(project)},
        posture="Reactive",
        threshold=1,
        within=0,
        parameters={**parameters, "wait_s": TRIGGERED_WAIT_S},
    )


def answer_emitter(project: str, vendor: Any) -> Callable[[Any], None]:
    """The local app's answer hook: events for one answer (``vendor``: the app's ``LocalVendor``)."""

    def on_answer(annotation: Any) -> None:
        # items of the open batches still short of answers (usually one open batch: the round's)
        waiting = vendor.progress(annotation.worker_id)["waiting"]
        emit_answer(project, annotation.batch_id, annotation.round, waiting=waiting, source="local")

    return on_answer


# -- Label Studio's webhook ------------------------------------------------------------------------
def label_studio_receiver(project: str, *, secret: str) -> FastAPI:
    """A web app taking Label Studio's ``ANNOTATION_CREATED`` webhooks for ``project``.

    Register ``http://<host>:<port>/label-studio`` as the webhook of the Label Studio project
    with the header ``Authorization: Bearer <secret>`` (``crowdloop webhook`` prints the
    settings). A batch may be complete when Label Studio counts every task of the project as
    finished (each has its overlap of annotations).
    """
    app = FastAPI(title="crowdloop webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {secret}".encode()

    @app.post("/label-studio")
    async def label_studio(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return Response(status_code=403)
        try:
            body = await request.json()
        except ValueError:
            return Response(status_code=400)
        if not isinstance(body, dict) or body.get("action") not in ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED"):
            return Response(status_code=204)  # other actions: nothing to do
        task = body.get("task") if isinstance(body.get("task"), dict) else {}
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        batch = data.get("crowdloop_batch")
        if not isinstance(batch, str):
            return Response(status_code=204)  # not a crowdloop task
        round_ = data.get("crowdloop_round")
        ls_project = body.get("project") if isinstance(body.get("project"), dict) else {}
        total, finished = ls_project.get("task_number"), ls_project.get("finished_task_number")
        waiting = total - finished if isinstance(total, int) and isinstance(finished, int) else None
        emit_answer(project, batch, round_ if isinstance(round_, int) else None, waiting=waiting, source="label_studio")
        return Response(status_code=204)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
