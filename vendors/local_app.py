"""The annotation web app of the ``local`` vendor (FastAPI, server-rendered, a little JS).

Security model, in short:

* every route needs an annotator token: the personal link ``/?token=...`` sets an HttpOnly,
  SameSite=Lax cookie and redirects to ``/`` (so the token leaves the address bar); without a
  valid token every route answers 403;
* posts must come from this site: a CSRF token derived from the annotator's token, and a
  foreign ``Origin`` (or, without one, a foreign ``Referer``) or ``Sec-Fetch-Site`` other than
  same-origin is refused;
* item content is escaped by Jinja2's autoescaping, scripts run only with a per-response CSP
  nonce, so an item whose text is ``<script>...`` shows as text; item text sits in a
  direction-isolated box (``dir="auto"``), so right-to-left overrides in it cannot reorder
  anything outside it, and a long text scrolls inside that box of readable width;
* ``/image/<batch>/<item digest>`` serves only items of dispatched batches, from the path the
  pool names (png, jpeg, gif, webp) or from the item's pixels; never a path from the request;
* a post larger than ``MAX_FORM_BYTES`` is refused by its ``Content-Length`` before the body is
  read, and a body without one is read only up to the limit (413 either way), so a huge post
  costs the server no memory.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from starlette.concurrency import run_in_threadpool

from crowdloop.errors import CrowdloopError
from crowdloop.records import Annotation, Task
from crowdloop.vendors.local import LocalVendor
from crowdloop.web import (
    MAX_FORM_BYTES,
    checked_form,
    csrf_for,
    escape,
    image_response,
    item_key,
    security_headers,
)

log = logging.getLogger(__name__)

COOKIE = "crowdloop_annotator"

Suggest = Callable[[Task], tuple[str, float] | None]

_env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

PAGE = _env.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>crowdloop · {{ project }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{{ nonce }}">
body{font-family:system-ui,sans-serif;max-width:52rem;margin:1.5rem auto;padding:0 1rem;color:#1d2330;background:#f7f8fa}
header{display:flex;justify-content:space-between;align-items:baseline;border-bottom:1px solid #d8dce3;margin-bottom:1rem}
h1{font-size:1.2rem;margin:.4rem 0}.who{color:#5a6270;font-size:.9rem}
.card{background:#fff;border:1px solid #d8dce3;border-radius:.6rem;padding:1.2rem;margin-bottom:1rem}
.text{white-space:pre-wrap;font-size:1.15rem;line-height:1.5;overflow-wrap:anywhere;max-width:70ch;max-height:60vh;overflow-y:auto;unicode-bidi:isolate}
.text:focus{outline:2px solid #9ab8ee}.long{color:#5a6270;font-size:.85rem;margin:.3rem 0 0}
img.item{display:block;margin:0 auto;max-width:100%;max-height:24rem;image-rendering:pixelated;min-width:12rem}
table{border-collapse:collapse;font-size:.9rem}td,th{border:1px solid #e3e6eb;padding:.2rem .5rem;text-align:right}
th{background:#f0f2f5;text-align:left}.classes{display:flex;flex-wrap:wrap;gap:.5rem}
button{font:inherit;padding:.55rem .9rem;border-radius:.45rem;border:1px solid #9aa3b2;background:#fff;cursor:pointer}
button.label{border-color:#2f6fde;color:#123c8c;font-weight:600}button.label:hover{background:#eaf1fe}
kbd{font-size:.75rem;background:#eef0f3;border:1px solid #c9ced6;border-radius:.25rem;padding:0 .3rem;margin-right:.35rem;color:#333}
.row{display:flex;gap:.5rem;margin-top:.8rem}.muted{color:#5a6270;font-size:.9rem}
.suggestion{background:#fff8e1;border:1px solid #f3d27a;border-radius:.4rem;padding:.4rem .7rem;margin-bottom:.8rem}
.notice{background:#e8f5e9;border:1px solid #a5d6a7;border-radius:.4rem;padding:.4rem .7rem;margin-bottom:.8rem}
summary{cursor:pointer;font-weight:600}.guide{white-space:pre-wrap;overflow-wrap:anywhere;max-height:40vh;overflow-y:auto;margin:.6rem 0 0;unicode-bidi:isolate}
dl.notes{margin:.8rem 0 0;font-size:.9rem;display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem}dl.notes dt{font-weight:600}dl.notes dd{margin:0;color:#3d4452;overflow-wrap:anywhere}
</style></head><body>
<header><h1>crowdloop · {{ project }}</h1>
<span class="who">{{ annotator }} · <span id="progress">{{ progress["answered"] }} answered · {{ progress["waiting"] }} of {{ progress["items"] }} items waiting</span></span></header>
{% if notice %}<div class="notice" id="notice">{{ notice }}</div>{% endif %}
{% if task and guidelines %}<details class="card" id="guidelines"{% if progress["answered"] == 0 %} open{% endif %}><summary>Guidelines</summary><div class="guide" dir="auto">{{ guidelines }}</div></details>{% endif %}
{% if task %}
<div class="card" id="item" data-item="{{ task.item_id }}" data-kind="{{ payload.kind }}">
{% if suggestion %}<div class="suggestion" id="suggestion">Model suggests <b>{{ suggestion[0] }}</b> ({{ "%.0f"|format(suggestion[1] * 100) }}%)</div>{% endif %}
{% if payload.kind == "text" %}<div class="text" id="item-text" dir="auto" tabindex="0">{{ payload.text }}</div>
{% if payload.text|length > 1500 %}<p class="long" id="item-long">Long text ({{ "{:,}".format(payload.text|length) }} characters): scroll inside the box; the keys below still answer.</p>{% endif %}
{% elif payload.kind == "image" %}<img class="item" id="item-image" alt="item {{ task.item_id }}" src="{{ image_url }}">
{% endif %}
{% if payload.kind == "tabular" %}
<table id="item-table"><tr>{% for c in payload.columns[:40] %}<th>{{ c }}</th>{% endfor %}</tr>
<tr>{% for v in payload["values"][:40] %}<td>{{ "%.4g"|format(v) if v is number else v }}</td>{% endfor %}</tr></table>
{% endif %}
</div>
<form method="post" action="/answer" id="answer-form" class="card">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="batch_id" value="{{ task.batch_id }}">
<input type="hidden" name="item_id" value="{{ task.item_id }}"><input type="hidden" name="client_ms" id="client_ms" value="">
<div class="classes">{% for c, key in buttons %}<button type="submit" class="label" name="label" value="{{ c }}"{% if key %} data-key="{{ key }}"{% endif %}{% if notes.get(c) %} title="{{ notes[c] }}"{% endif %}>{% if key %}<kbd>{{ key }}</kbd>{% endif %}{{ c }}</button>{% endfor %}</div>
{% if notes %}<dl class="notes" id="class-notes">{% for c, key in buttons if notes.get(c) %}<dt>{{ c }}</dt><dd dir="auto">{{ notes[c] }}</dd>{% endfor %}</dl>{% endif %}
</form>
<div class="row">
<form method="post" action="/skip" id="skip-form"><input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="batch_id" value="{{ task.batch_id }}"><input type="hidden" name="item_id" value="{{ task.item_id }}">
<button type="submit" id="skip"><kbd>S</kbd>skip</button></form>
<form method="post" action="/undo" id="undo-form"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" id="undo"><kbd>U</kbd>undo last answer</button></form>
</div>
{% elif completion %}
<div class="card" id="complete"><p><b>Thank you, that was your item.</b> Your completion code is <code id="completion-code">{{ completion[0] }}</code>.</p>
<p><a id="complete-link" href="{{ completion[1] }}" rel="noreferrer">Return to Prolific</a> to submit it.</p></div>
{% elif blocked %}
<div class="card" id="blocked"><p><b>You will not receive new items from this project.</b></p><p id="blocked-reason">{{ blocked }}</p></div>
{% else %}
<div class="card" id="done"><p><b>Nothing to label right now.</b> New items appear when the loop dispatches its next batch; this page checks every 15 seconds.</p></div>
<form method="post" action="/undo" id="undo-form"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit" id="undo"><kbd>U</kbd>undo last answer</button></form>
{% endif %}
<p class="muted">Keys: {{ "0–9" if buttons and buttons[0][1] == buttons[0][0] else "1–9" }} pick a class · S skip · U undo your last answer. Your time on each item is measured for pay.</p>
<script nonce="{{ nonce }}">
(function () {
  var t0 = performance.now(), sent = false;
  function once(e) { if (sent) { e.preventDefault(); return; } sent = true;
    var f = document.getElementById("client_ms"); if (f) { f.value = Math.round(performance.now() - t0); } }
  document.querySelectorAll("form").forEach(function (f) { f.addEventListener("submit", once); });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) { return; }
    var target = null;
    if (e.key >= "0" && e.key <= "9") { target = document.querySelector('button[data-key="' + e.key + '"]'); }
    else if (e.key === "s" || e.key === "S") { target = document.getElementById("skip"); }
    else if (e.key === "u" || e.key === "U") { target = document.getElementById("undo"); }
    if (target) { e.preventDefault(); target.click(); }
  });
  {% if not task and not blocked and not completion %}setTimeout(function () { location.reload(); }, 15000);{% endif %}
})();
</script>
</body></html>
""")  # noqa: E501 - an HTML template: its lines are the page, not code

FORBIDDEN = ("<!doctype html><title>403</title><h1>403 Forbidden</h1>"
             "<p>A valid annotator link is needed. Ask the project owner for yours "
             "(<code>crowdloop annotators add NAME</code>).</p>")
NOT_ADMITTED = ("<!doctype html><title>403</title><h1>403 Forbidden</h1>"
                "<p>This study link is not valid for an open study, or your Prolific session is not active. "
                "Return to Prolific and open the study again. If the study has closed (its answers were due), "
                "please return your submission on Prolific: nothing was asked of you here.</p>")
TOO_LARGE = ("<!doctype html><title>413</title><h1>413 Payload Too Large</h1>"
             f"<p>This form is larger than the {MAX_FORM_BYTES} bytes an answer needs; nothing was saved.</p>")


def key_bindings(classes: tuple[str, ...] | list[str]) -> list[tuple[str, str | None]]:
    """(class, key) pairs: digit-named classes (``0``-``9``) keep their own digit, else 1-9 by position."""
    if all(len(c) == 1 and c.isdigit() for c in classes) and len(set(classes)) == len(classes):
        return [(c, c) for c in classes]
    return [(c, str(i) if i <= 9 else None) for i, c in enumerate(classes, start=1)]


def create_app(vendor: LocalVendor, *, suggest: Suggest | None = None, project: str | None = None,
               on_answer: Callable[[Annotation], None] | None = None) -> FastAPI:
    """The annotation app over ``vendor``'s store. ``suggest(task)`` gives (class, probability);
    ``on_answer(annotation)`` hears of every stored answer (``crowdloop annotate`` emits a Prefect
    event there); its failure is logged and never refuses the answer."""
    app = FastAPI(title="crowdloop annotate", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one desk per process: leases and answers are decided one at a time
    title = project or vendor.context.project

    def forbidden() -> Response:
        return security_headers(HTMLResponse(FORBIDDEN, status_code=403))

    def annotator(request: Request) -> tuple[str, str] | None:
        token = request.cookies.get(COOKIE)
        name = vendor.authenticate(token)
        return (name, token) if name and token else None

    async def checked_post(request: Request) -> tuple[str, dict[str, str]] | Response:
        who = annotator(request)
        form = await checked_form(request, who and who[1], forbidden=forbidden(), too_large=TOO_LARGE)
        return form if isinstance(form, Response) else (who[0], form)

    def back(notice: str | None = None) -> Response:
        url = "/" if not notice else f"/?notice={notice}"
        return security_headers(RedirectResponse(url, status_code=303))

    admit = getattr(vendor, "admit", None)  # a desk for platform participants (Prolific) admits by URL parameters
    completion_of = getattr(vendor, "completion", None)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, token: str | None = None, notice: str | None = None) -> Response:
        participant = request.query_params.get("PROLIFIC_PID")
        if participant is not None and admit is not None:  # the study's entry link: the desk checks it
            token = admit(participant, request.query_params.get("STUDY_ID", ""), request.query_params.get("SESSION_ID", ""))
            if token is None:
                return security_headers(HTMLResponse(NOT_ADMITTED, status_code=403))
        if token is not None:  # the personal link: remember the token in a cookie, clean the URL
            if vendor.authenticate(token) is None:
                return forbidden()
            response = security_headers(RedirectResponse("/", status_code=303))
            response.set_cookie(COOKIE, token, httponly=True, samesite="lax", path="/",
                                secure=request.url.scheme == "https", max_age=30 * 24 * 3600)
            return response
        who = annotator(request)
        if who is None:
            return forbidden()
        name, raw = who
        with lock:
            found, progress = vendor.next_task_and_progress(name)
        task = found[0] if found else None
        payload: dict[str, Any] = vendor.context.item_payload(task.item_id) if task else {}
        suggestion = None
        # never on a gold item (it measures the person, not the model) nor on a re-ask (its votes
        # split: the model's guess would decide it)
        if task and suggest and vendor.params.suggestions and not task.is_gold and not task.exclude_workers:
            suggestion = suggest(task)
        nonce = secrets.token_urlsafe(16)
        messages = {"undone": "Your last answer was taken back; answer again.",
                    "too-late": "Nothing to undo: answers can be taken back only shortly after you give them.",
                    "skipped": "Skipped.", "saved": None}
        blocked = None if task else vendor.block_reason(name)
        completion = completion_of(name) if completion_of is not None and not task and not blocked else None
        html = PAGE.render(project=title, annotator=name, task=task, payload=payload,
                           buttons=key_bindings(vendor.context.classes), progress=progress, csrf=csrf_for(raw),
                           nonce=nonce, suggestion=suggestion, blocked=blocked, completion=completion,
                           image_url=f"/image/{task.batch_id}/{item_key(task.item_id)}" if task else "",
                           notice=messages.get(notice or ""), guidelines=vendor.context.guidelines,
                           notes=dict(vendor.context.class_notes))
        return security_headers(HTMLResponse(html), nonce)

    async def locked(action: Callable[[], Any]) -> Any:
        """Run a vendor call under the app's lock in a worker thread: the lock and the store's
        I/O must not stall the event loop."""
        def call() -> Any:
            with lock:
                return action()

        return await run_in_threadpool(call)

    def bad_request(exc: CrowdloopError) -> Response:
        return security_headers(HTMLResponse(f"<p>400: {escape(str(exc))}</p>", status_code=400))

    @app.post("/answer")
    async def answer(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        name, form = checked
        try:
            client_ms = float(form.get("client_ms") or "nan")
        except ValueError:
            client_ms = float("nan")
        try:
            stored = await locked(lambda: vendor.answer(name, form.get("batch_id", ""), form.get("item_id", ""),
                                                        form.get("label", ""),
                                                        client_seconds=None if client_ms != client_ms else client_ms / 1000.0))
        except CrowdloopError as exc:
            return bad_request(exc)
        if on_answer is not None:
            try:
                await run_in_threadpool(on_answer, stored)
            except Exception:  # a lost notification costs a poll; the answer is stored
                log.exception("on_answer hook failed")
        return back()

    @app.post("/skip")
    async def skip(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        name, form = checked
        try:
            await locked(lambda: vendor.skip(name, form.get("batch_id", ""), form.get("item_id", "")))
        except CrowdloopError as exc:
            return bad_request(exc)
        return back("skipped")

    @app.post("/undo")
    async def undo(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        name, _ = checked
        undone = await locked(lambda: vendor.undo(name))
        return back("undone" if undone else "too-late")

    @app.get("/image/{batch_id}/{key}")
    def image(request: Request, batch_id: str, key: str) -> Response:
        if annotator(request) is None:
            return forbidden()
        task = vendor.task_by_key(batch_id, key) if len(key) == 16 else None
        if task is None:
            return security_headers(Response(status_code=404))
        return image_response(vendor.context.item_payload(task.item_id))

    @app.get("/{anything:path}")
    def everything_else(anything: str) -> Response:
        return forbidden()

    return app


def project_suggester(project: Any) -> Suggest:
    """Suggestions from the model the loop trained for the task's round (None before one exists,
    and never for an accuracy-audit item: a suggestion would pull its label towards the model it measures)."""
    audit = set(project.audit_reserve)

    def suggest(task: Task) -> tuple[str, float] | None:
        model = project.load_model(task.round)
        index = project.index_of.get(task.item_id)
        if model is None or index is None or task.item_id in audit:
            return None
        proba = model.predict_proba(project.pool.X[index: index + 1])[0]
        best = int(proba.argmax())
        return str(model.classes_[best]), float(proba[best])

    return suggest

