"""The review desk: a web page where a project's reviewers see the labels most likely wrong and
correct them with a click (``crowdloop review``; reviewers: ``crowdloop reviewers add``).

Why a page: a reviewer decides from what annotators saw — the text, the image, the row — and
``crowdloop disputed`` in a terminal shows ids and votes, not items. The desk lists what
``corrections.disputed`` ranks first (the crowd's votes, its confidence, the guess of a model
that never saw the label), shows each item as the annotation app does, and records a click as
``crowdloop correct`` would (``corrections.record``: create-only, by the reviewer's name, the
same checks, all in one line on a bad post). It works for every vendor: the labels may come
from MTurk, Label Studio or the local app.

Reviewers are not annotators: their links are kept with the project (``reviewers/``, a hash of
each token), their clicks are never votes, and an annotator's link does not open the desk. The
page security is the annotation app's (``crowdloop/web.py``): personal link to an HttpOnly
cookie, CSRF value and same-site checks on posts, a nonce-only CSP, escaped item text in a
direction-isolated box.

The ranking refits the project's model on out-of-fold splits, so it is computed once per
finished round and kept; a correction takes its item off the list at once, into the reviewer's
last corrections below it, where a click changes it again (a click that went wrong). Links above
the list narrow it to the items about one pair of classes (``corrections.involves``: a 1 someone
voted 7, a 7 the model reads as 1), the pairs with most such items first, so a reviewer can
settle one confusion at a time — the pairs ``crowdloop status`` says annotators split between.
"""

from __future__ import annotations

import secrets
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment
from starlette.concurrency import run_in_threadpool

from crowdloop import corrections
from crowdloop.errors import ConfigError, CrowdloopError
from crowdloop.records import utcnow
from crowdloop.web import (
    PersonalLinks,
    checked_form,
    csrf_for,
    escape,
    image_response,
    item_key,
    security_headers,
)

if TYPE_CHECKING:
    from crowdloop.engine.project import Project

COOKIE = "crowdloop_reviewer"
PREFIX = "reviewers/"
RECENT = 10  # a reviewer's last corrections shown under the list, to change one clicked wrongly
PAIR_LINKS = 8  # links to the items about one pair of classes, the pairs with most first

# -- the reviewers of a project ---------------------------------------------------------------


def reviewer_links(p: Project) -> PersonalLinks:
    """The project's reviewers (``reviewers/``): add, revoke, list, and who holds a token."""
    return PersonalLinks(p.store, PREFIX, "reviewer")


def add_reviewer(p: Project, name: str) -> str:
    """Create reviewer ``name`` and return their token (shown once; only its hash is stored)."""
    return reviewer_links(p).issue(name, now=utcnow())


def remove_reviewer(p: Project, name: str) -> None:
    """Revoke ``name``'s link (the corrections they recorded stay)."""
    reviewer_links(p).revoke(name)


def reviewers(p: Project) -> list[str]:
    return reviewer_links(p).names()


def authenticate(p: Project, token: str | None) -> str | None:
    """The reviewer holding ``token``, or None."""
    return reviewer_links(p).holder(token)


# -- the page -----------------------------------------------------------------------------------

_env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

PAGE = _env.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>review · {{ project }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{{ nonce }}">
body{font-family:system-ui,sans-serif;max-width:56rem;margin:1.5rem auto;padding:0 1rem;color:#1d2330;background:#f7f8fa}
header{display:flex;justify-content:space-between;align-items:baseline;border-bottom:1px solid #d8dce3;margin-bottom:1rem}
h1{font-size:1.2rem;margin:.4rem 0}.who,.muted{color:#5a6270;font-size:.9rem}
.card{background:#fff;border:1px solid #d8dce3;border-radius:.6rem;padding:1rem 1.2rem;margin-bottom:1rem}
.text{white-space:pre-wrap;font-size:1.05rem;line-height:1.5;overflow-wrap:anywhere;max-width:70ch;max-height:40vh;overflow-y:auto;unicode-bidi:isolate}
img.item{display:block;max-width:100%;max-height:16rem;image-rendering:pixelated;min-width:8rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #e3e6eb;padding:.2rem .5rem;text-align:right}th{background:#f0f2f5;text-align:left}
.facts{margin:.6rem 0;font-size:.95rem}.facts b{font-weight:600}.classes{display:flex;flex-wrap:wrap;gap:.4rem;margin-top:.5rem}
button{font:inherit;padding:.4rem .8rem;border-radius:.45rem;border:1px solid #2f6fde;background:#fff;color:#123c8c;cursor:pointer}
button.current{border-color:#9aa3b2;color:#5a6270}input[type=text]{font:inherit;width:100%;box-sizing:border-box;padding:.3rem;margin-top:.5rem}
.notice{background:#e8f5e9;border:1px solid #a5d6a7;border-radius:.4rem;padding:.4rem .7rem;margin-bottom:.8rem}
code{font-size:.85rem}.pairs{display:flex;flex-wrap:wrap;gap:.5rem;align-items:baseline;margin:.4rem 0}.pairs a.current{font-weight:600}
</style></head><body>
<header><h1>review · {{ project }}</h1><span class="who">{{ reviewer }} · {{ n_corrections }} correction(s) recorded</span></header>
{% if notice %}<div class="notice" id="notice">{{ notice }}</div>{% endif %}
{% if round is none %}
<div class="card" id="nothing"><p><b>No finished round yet.</b> Labels to review appear once a round has paid.</p></div>
{% elif not rows and between %}
<div class="card" id="nothing"><p><b>Nothing left between {{ between[0] }} and {{ between[1] }}</b> as of round {{ round }}.</p></div>
{% elif not rows %}
<div class="card" id="nothing"><p><b>Nothing to review</b> as of round {{ round }}: no label is in doubt.</p></div>
{% else %}
<p class="muted">As of round {{ round }}, the labels most likely wrong first ({{ ranking }}). A click sets the item's label; it applies from the next round's aggregation on.</p>
{% endif %}
{% if pairs %}<nav class="pairs" id="pairs"><span class="muted">Between two classes:</span>
{% for pair, n in pairs %}<a href="/?between={{ (pair[0] ~ ',' ~ pair[1])|urlencode }}"{% if pair == between %} class="current" aria-current="page"{% endif %}>{{ pair[0] }} ↔ {{ pair[1] }} ({{ n }})</a>{% endfor %}
{% if between %}<a href="/" id="all">all</a>{% endif %}</nav>{% endif %}
{% if round is not none and rows %}
{% for row in rows %}
<div class="card review" id="item-{{ loop.index }}" data-item="{{ row.item_id }}">
<div class="muted"><code>{{ row.item_id }}</code></div>
{% set payload = row.payload %}
{% if payload.kind == "text" %}<div class="text" dir="auto">{{ payload.text }}</div>
{% elif payload.kind == "image" %}<img class="item" alt="item {{ row.item_id }}" src="/image/{{ row.key }}">
{% endif %}
{% if payload.kind == "tabular" %}
<table><tr>{% for c in payload.columns[:40] %}<th>{{ c }}</th>{% endfor %}</tr>
<tr>{% for v in payload["values"][:40] %}<td>{{ "%.4g"|format(v) if v is number else v }}</td>{% endfor %}</tr></table>
{% endif %}
<p class="facts">label <b class="label">{{ row.label }}</b> · crowd's confidence {{ "%.2f"|format(row.confidence) }} · votes
{% for c, n in row.votes.items() %}<span class="vote">{{ c }} ({{ n }})</span>{{ ", " if not loop.last }}{% endfor %}
{% if row.model_label is defined %} · model's guess <b class="guess">{{ row.model_label }}</b>, p(label) {{ "%.2f"|format(row.model_proba_of_label) }}{% endif %}</p>
<form method="post" action="/correct"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="item_id" value="{{ row.item_id }}">
{% if between %}<input type="hidden" name="between" value="{{ between[0] }},{{ between[1] }}">{% endif %}
<div class="classes">{% for c in classes %}<button type="submit" name="label" value="{{ c }}"{% if c == row.label %} class="current" title="keep the crowd's label (recorded as reviewed)"{% endif %}>{{ c }}</button>{% endfor %}</div>
<input type="text" name="note" maxlength="{{ max_note }}" placeholder="note (optional): why" aria-label="note">
</form></div>
{% endfor %}
{% endif %}
{% if mine %}
<h2 class="muted" id="mine">Your last corrections: change one if a click went wrong</h2>
{% for c in mine %}
<div class="card mine" data-corrected="{{ c.item_id }}"><div class="muted"><code>{{ c.item_id }}</code> · {{ c.at.strftime("%Y-%m-%d %H:%M UTC") }}{% if c.note %} · <span dir="auto">{{ c.note }}</span>{% endif %}</div>
<form method="post" action="/correct"><input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="item_id" value="{{ c.item_id }}">
<div class="classes">{% for k in classes %}<button type="submit" name="label" value="{{ k }}"{% if k == c.label %} class="current" title="the label you set"{% endif %}>{{ k }}</button>{% endfor %}</div>
</form></div>
{% endfor %}
{% endif %}
</body></html>
""")  # noqa: E501 - an HTML template: its lines are the page, not code

FORBIDDEN = ("<!doctype html><title>403</title><h1>403 Forbidden</h1>"
             "<p>A valid reviewer link is needed. Ask the project owner for yours "
             "(<code>crowdloop reviewers add NAME</code>).</p>")
TOO_LARGE = "<!doctype html><title>413</title><h1>413 Payload Too Large</h1><p>Nothing was recorded.</p>"
RANKINGS = {"both": "the crowd's confidence times the model's probability of the label",
            "crowd": "the crowd's confidence, items whose votes split",
            "model": "the model's probability of the label"}


class _Ranking:
    """``corrections.disputed`` once per finished round (it refits the model), for the whole desk."""

    def __init__(self, p: Project, *, top: int, rank: str) -> None:
        self.p, self.top, self.rank = p, top, rank
        self.lock = threading.Lock()
        self.round: int | None = None
        self.rows: list[dict[str, Any]] = []

    def open_rows(self) -> tuple[int | None, list[dict[str, Any]], dict[str, corrections.Correction]]:
        """The last finished round, every ranked row not corrected since, and the corrections in
        force they were filtered by."""
        from crowdloop.export import last_finished_round

        with self.lock:
            finished = last_finished_round(self.p)
            if finished is not None and finished != self.round:
                # every row, not a page: corrections and the pair links narrow it until the next round ranks again
                self.rows = corrections.disputed(self.p, top=None, rank=self.rank)
                self.round = finished
            in_force = corrections.latest(self.p)
            return self.round, [row for row in self.rows if row["item_id"] not in in_force], in_force

    def current(self, between: tuple[str, str] | None = None
                ) -> tuple[int | None, list[dict[str, Any]], dict[str, corrections.Correction], list]:
        """``open_rows`` as a page: the first ``top`` (about ``between`` only, when given), and the
        pairs of classes the open rows are about, most rows first."""
        finished, rows, in_force = self.open_rows()
        page = [row for row in rows if between is None or corrections.involves(row, between)][: self.top]
        return finished, page, in_force, corrections.pairs_in(rows)[:PAIR_LINKS]


def create_review_app(p: Project, *, top: int = 20, rank: str = "both") -> FastAPI:
    """The review desk over project ``p``: ``top`` items a page, ranked by ``rank``."""
    if rank not in RANKINGS:
        raise ConfigError(f"--rank: {rank!r}: expected one of {', '.join(RANKINGS)}")
    from crowdloop.models.datasets import item_payload

    app = FastAPI(title="crowdloop review", docs_url=None, redoc_url=None, openapi_url=None)
    ranking = _Ranking(p, top=top, rank=rank)
    record_lock = threading.Lock()  # one correction at a time: "already in force" is decided on what is recorded

    def forbidden() -> Response:
        return security_headers(HTMLResponse(FORBIDDEN, status_code=403))

    def reviewer(request: Request) -> tuple[str, str] | None:
        token = request.cookies.get(COOKIE)
        name = authenticate(p, token)
        return (name, token) if name and token else None

    def back(notice: str, between: tuple[str, str] | None = None) -> Response:
        where = f"/?notice={notice}" + (f"&between={quote(','.join(between))}" if between else "")
        return security_headers(RedirectResponse(where, status_code=303))

    def pair_of(value: str | None) -> tuple[str, str] | None:
        pair = corrections.check_pair(p, value, field="between")
        return None if pair is None else (min(pair), max(pair))  # as the pair links name it

    def notice_for(code: str | None, name: str, in_force: dict[str, Any]) -> str | None:
        """What a redirect's code says, from the records (a link cannot put words on the page)."""
        if code == "in-force":
            return "That label was already the item's correction: nothing recorded."
        mine = [c for c in in_force.values() if c.by == name]
        if code != "recorded" or not mine:
            return None
        last = max(mine, key=lambda c: c.at)
        return f"Recorded: {last.item_id} is {last.label}, from the next round's aggregation on."

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request, token: str | None = None, notice: str | None = None,
                   between: str | None = None) -> Response:
        if token is not None:  # the personal link: remember the token in a cookie, clean the URL
            if await run_in_threadpool(authenticate, p, token) is None:
                return forbidden()
            response = security_headers(RedirectResponse("/", status_code=303))
            response.set_cookie(COOKIE, token, httponly=True, samesite="lax", path="/",
                                secure=request.url.scheme == "https", max_age=30 * 24 * 3600)
            return response
        who = await run_in_threadpool(reviewer, request)
        if who is None:
            return forbidden()
        try:
            pair = pair_of(between)
        except ConfigError as exc:
            return security_headers(HTMLResponse(f"<p>400: {escape(str(exc))}</p>", status_code=400))
        finished, rows, in_force, pairs = await run_in_threadpool(ranking.current, pair)
        shown = [{**row, "key": item_key(row["item_id"]), "payload": item_payload(p.pool, p.index_of[row["item_id"]])}
                 for row in rows if row["item_id"] in p.index_of]
        nonce = secrets.token_urlsafe(16)
        mine = sorted((c for c in in_force.values() if c.by == who[0]), key=lambda c: c.at, reverse=True)[:RECENT]
        html = PAGE.render(project=p.config.project, reviewer=who[0], rows=shown, round=finished, classes=p.classes,
                           csrf=csrf_for(who[1]), nonce=nonce, ranking=RANKINGS[rank],
                           notice=notice_for(notice, who[0], in_force), n_corrections=len(in_force),
                           max_note=corrections.MAX_NOTE_CHARS, mine=mine, pairs=pairs, between=pair)
        return security_headers(HTMLResponse(html), nonce)

    @app.post("/correct")
    async def correct(request: Request) -> Response:
        who = reviewer(request)
        form = await checked_form(request, who and who[1], forbidden=forbidden(), too_large=TOO_LARGE)
        if isinstance(form, Response) or who is None:
            return form
        item, label, note = form.get("item_id", ""), form.get("label", ""), form.get("note", "").strip()
        try:
            pair = pair_of(form.get("between") or None)
        except ConfigError:
            pair = None  # the list it came from: a bad one only loses the filter, never the correction

        def record() -> str | None:
            from crowdloop.label_files import LabelRow

            with record_lock:
                pairs = corrections.check_rows(p, [LabelRow("the form", item, label)], source="review desk")
                return corrections.record(p, pairs, by=who[0], note=note)

        try:
            key = await run_in_threadpool(record)
        except CrowdloopError as exc:
            return security_headers(HTMLResponse(f"<p>400: {escape(str(exc))}</p>", status_code=400))
        return back("recorded" if key is not None else "in-force", pair)

    @app.get("/image/{key}")
    async def image(request: Request, key: str) -> Response:
        if await run_in_threadpool(reviewer, request) is None:
            return forbidden()
        _, rows, _ = await run_in_threadpool(ranking.open_rows)
        item = next((row["item_id"] for row in rows if item_key(row["item_id"]) == key), None)
        if item is None or item not in p.index_of:  # only items on the list, never a path from the request
            return security_headers(Response(status_code=404))
        return image_response(item_payload(p.pool, p.index_of[item]))

    @app.get("/{anything:path}")
    def everything_else(anything: str) -> Response:
        return forbidden()

    return app
