"""Item content is inert in real Chromium: the annotation app's page and the MTurk HTMLQuestion.

Every payload tries to set ``window.__pwned`` or change ``document.title`` (script tags,
attribute breaking, ``javascript:`` / ``data:`` URLs, ``</textarea>`` / ``</script>`` / CDATA
breakouts, SVG, mXSS). It is put everywhere data reaches the page: item text, table columns and
values, item ids, class names, the model's suggestion, the project title. The test asserts that
no payload ran and that the text is shown as text. The app's page is checked twice: as served
(with its Content-Security-Policy) and as bare HTML without any CSP, so escaping alone holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from crowdloop.records import Task
from crowdloop.storage.local import LocalStore
from crowdloop.testing import make_context
from crowdloop.vendor import VendorContext
from crowdloop.vendors import mturk
from crowdloop.vendors.local import LocalVendor
from crowdloop.vendors.local_app import create_app
from tests.vendors.app_server import running

pytestmark = pytest.mark.slow

PAYLOADS = [
    "<script>window.__pwned = 1; document.title = 'pwned'</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '" onmouseover="window.__pwned = 3" autofocus onfocus="window.__pwned = 3" x="',
    "' onfocus='window.__pwned = 4' autofocus tabindex=1 x='",
    "</textarea><script>window.__pwned = 5</script><textarea>",
    "</script><script>window.__pwned = 6</script>",
    '<svg onload="window.__pwned = 7"><script>window.__pwned = 7</script></svg>',
    "javascript:window.__pwned = 8",
    '<a id="x" href="javascript:window.__pwned = 9">click</a>',
    '<iframe src="data:text/html,<script>parent.__pwned = 10</script>"></iframe>',
    '<object data="data:text/html;base64,PHNjcmlwdD5wYXJlbnQuX19wd25lZD0xMTwvc2NyaXB0Pg=="></object>',
    '<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned = 12">',
    "]]><script>window.__pwned = 13</script><![CDATA[",
    '<meta http-equiv="refresh" content="0;url=javascript:window.__pwned = 14">',
    '<base href="javascript:window.__pwned = 15//"><title>pwned</title>',
    "<style>@import 'javascript:window.__pwned = 16';</style><details open ontoggle=\"window.__pwned = 16\">",
    "{{ 7 * 7 }} ${7 * 7} {% raw %}&lt;&amp;&#x3c;script&#x3e;",
]
TITLE = "crowdloop · xss<script>window.__pwned = 'title'</script>"


def _watch(page) -> list[str]:
    events: list[str] = []
    page.on("dialog", lambda d: (events.append(f"dialog {d.message}"), d.dismiss()))
    page.on("pageerror", lambda exc: events.append(f"pageerror {exc}"))
    return events


def _assert_inert(page, events: list[str], title: str | None = None) -> None:
    page.wait_for_timeout(50)  # let onload/onerror/autofocus handlers have their chance
    assert page.evaluate("typeof window.__pwned") == "undefined"
    if title is not None:
        assert page.title() == title
    assert not [e for e in events if e.startswith("dialog")]
    assert page.locator("iframe, object, embed, svg, math, base, meta[http-equiv]").count() == 0


# -- the annotation app ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_desk(tmp_path_factory) -> Iterator[tuple[str, str, dict[str, dict]]]:
    classes = ("cat", PAYLOADS[2], PAYLOADS[4])
    items: dict[str, dict] = {}
    for n, text in enumerate(PAYLOADS):
        items[f"t{n:02d}{PAYLOADS[n % 4]}"] = {"kind": "text", "text": text}
    items["table"] = {"kind": "tabular", "columns": PAYLOADS[:6], "values": PAYLOADS[6:12]}
    base_ctx = make_context(LocalStore(tmp_path_factory.mktemp("xssdesk")), name="local", classes=classes)
    ctx = VendorContext(**{**base_ctx.__dict__, "item_payload": lambda i: items[i]})
    vendor = LocalVendor({"suggestions": True, "undo_window_s": 0}, ctx)
    vendor.submit([Task(item_id=i, round=0, batch_id="b0", replicas=1, reward=0.01) for i in items], batch_id="b0")
    token = vendor.add_annotator("mallory-victim")
    app = create_app(vendor, suggest=lambda task: (PAYLOADS[0], 0.5), project=TITLE)
    with running(app) as base:
        yield base, token, items


def test_app_pages_show_every_payload_as_text(browser, hostile_desk):
    base, token, items = hostile_desk
    page = browser.new_page()
    events = _watch(page)
    response = page.goto(f"{base}/?token={token}")
    assert response.status == 200
    served = response.text()  # the HTML as sent, before any parsing
    seen: set[str] = set()
    bare = browser.new_page()  # the same HTML without the CSP header: escaping alone must hold
    bare_events = _watch(bare)
    while page.locator("#item").count():
        _assert_inert(page, events, title=f"crowdloop · {TITLE}")
        item = page.locator("#item").get_attribute("data-item")
        assert item in items and item not in seen
        seen.add(item)
        payload = items[item]
        if payload["kind"] == "text":
            assert page.locator("#item-text").inner_text() == payload["text"]
        else:
            assert page.locator("#item-table th").all_inner_texts() == payload["columns"]
            assert page.locator("#item-table td").all_inner_texts() == payload["values"]
        assert page.locator("#suggestion b").inner_text() == PAYLOADS[0]
        assert page.locator("button.label").evaluate_all("bs => bs.map(b => b.value)") == ["cat", PAYLOADS[2], PAYLOADS[4]]
        assert page.locator("input[name=item_id]").first.input_value() == item
        assert len(page.locator("script").all()) == 1  # only the app's own, nonce'd script
        bare.set_content(served)
        _assert_inert(bare, bare_events, title=f"crowdloop · {TITLE}")
        assert bare.locator("#item").get_attribute("data-item") == item
        with page.expect_navigation() as nav:
            page.locator("#skip").click()
        served = nav.value.text()
    assert seen == set(items) and page.locator("#done").is_visible()
    assert not [e for e in events + bare_events if "pwned" in e]
    bare.close()
    page.close()


# -- the MTurk HTMLQuestion -----------------------------------------------------------------------
def _question_page(payloads: dict[str, dict], classes: tuple[str, ...], **params) -> str:
    ctx = VendorContext(project="xss", name="mturk", seed=0, classes=classes, store=None,  # type: ignore[arg-type]
                        item_payload=lambda i: payloads[i])
    vendor = mturk.MTurkVendor({"items_per_hit": len(payloads), **params}, ctx)
    xml = vendor.question_xml([Task(item_id=i, round=0, batch_id="b", replicas=1, reward=0.01) for i in payloads])
    found = re.fullmatch(r"<HTMLQuestion xmlns=\"[^\"]+\"><HTMLContent><!\[CDATA\[(.*)\]\]></HTMLContent>"
                         r"<FrameHeight>\d+</FrameHeight></HTMLQuestion>", xml, flags=re.S)
    assert found, "the question must be exactly one CDATA section"
    return found.group(1)


@pytest.mark.parametrize("submit_to, action", [
    ("https://workersandbox.mturk.com", "https://workersandbox.mturk.com/mturk/externalSubmit"),
    ("javascript:window.__pwned=20//", "https://www.mturk.com/mturk/externalSubmit"),
    ("https://evil.example", "https://www.mturk.com/mturk/externalSubmit"),
    ("https://www.mturk.com.evil.example", "https://www.mturk.com/mturk/externalSubmit"),
])
def test_mturk_question_shows_every_payload_as_text(browser, submit_to, action):
    from urllib.parse import quote

    payloads = {f"i{n}{p}": {"kind": "text", "text": p} for n, p in enumerate(PAYLOADS)}
    payloads["table"] = {"kind": "tabular", "columns": PAYLOADS[:6], "values": PAYLOADS[6:12]}
    payloads["img"] = {"kind": "image_url", "url": 'https://example.com/a.png?x="><script>window.__pwned=30</script>'}
    classes = ("cat", PAYLOADS[2], PAYLOADS[12])
    html = _question_page(payloads, classes, title=PAYLOADS[0][:128], description=PAYLOADS[3])
    page = browser.new_page()
    events = _watch(page)
    frame_url = f"https://worker.example/frame?assignmentId=A1&turkSubmitTo={quote(submit_to, safe='')}"
    page.route("https://worker.example/**", lambda route: route.fulfill(status=200, body=html, content_type="text/html"))
    page.route("https://example.com/**", lambda route: route.fulfill(status=404, body=""))
    page.goto(frame_url)
    _assert_inert(page, events, title=PAYLOADS[0][:128])
    assert page.locator("#f").get_attribute("action") == action
    assert page.locator("#assignmentId").input_value() == "A1"
    assert page.locator("p.text").all_inner_texts() == PAYLOADS
    assert page.locator("p").first.inner_text() == PAYLOADS[3]  # the description
    assert page.locator("table.row th").all_inner_texts() == PAYLOADS[:6]
    assert page.locator("table.row td").all_inner_texts() == PAYLOADS[6:12]
    hidden = page.locator("input[type=hidden][name^=item-]").evaluate_all("xs => xs.map(x => x.value)")
    assert hidden == list(payloads)
    radios = page.locator("input[type=radio][name=label-0]").evaluate_all("xs => xs.map(x => x.value)")
    assert radios == list(classes)
    assert page.locator("img.item").get_attribute("src") == payloads["img"]["url"]
    assert len(page.locator("script").all()) == 1  # only the form's own script
    page.close()
