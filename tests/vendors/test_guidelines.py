"""The project's guidelines (``guidelines.text``, ``guidelines.classes``) as annotators see them:
in the local app and on an MTurk HIT in a real Chromium, in Label Studio's project, and what a
config may say (a note for a class that does not exist is refused before anything runs)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from crowdloop.config import MAX_CLASS_NOTE_CHARS, parse_config
from crowdloop.errors import ConfigError, VendorError
from crowdloop.records import Task
from crowdloop.storage.local import LocalStore
from crowdloop.testing import make_context
from crowdloop.vendor import VendorContext
from crowdloop.vendors import label_studio, mturk
from crowdloop.vendors.local import LocalVendor
from crowdloop.vendors.local_app import create_app
from tests.conftest import small_config
from tests.vendors.app_server import running

CLASSES = ("billing", "bug", "other")
GUIDE = ("Read the whole ticket before you answer.\nA refund request is billing, even when it names a bug.\n"
         "<script>window.__pwned = 1</script> is text here.")
NOTES = {"billing": "invoices, refunds, payment methods", "bug": "the product does something wrong <b>not bold</b>"}


def _context(store, **extra) -> VendorContext:
    base = make_context(store, name="local", classes=CLASSES)
    return VendorContext(**{**base.__dict__, "guidelines": GUIDE, "class_notes": NOTES, **extra})


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[str, str, LocalVendor]]:
    vendor = LocalVendor({"undo_window_s": 0}, _context(LocalStore(tmp_path / "store")))
    vendor.submit([Task(item_id=f"t{k}", round=0, batch_id="b0", replicas=1, reward=0.01) for k in range(2)],
                  batch_id="b0")
    token = vendor.add_annotator("ann")
    with running(create_app(vendor, project="tickets")) as base:
        yield base, token, vendor


@pytest.mark.slow
def test_the_local_app_shows_the_guidelines_open_first_then_folded_and_the_notes_by_the_buttons(browser, desk):
    base, token, _ = desk
    page = browser.new_page()
    page.goto(f"{base}/?token={token}")
    guide = page.locator("#guidelines")
    assert guide.get_attribute("open") is not None  # the first item: read them
    assert page.locator("#guidelines .guide").inner_text() == GUIDE  # line breaks kept, markup shown as text
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("#class-notes dt").all_inner_texts() == ["billing", "bug"]
    assert page.locator("#class-notes dd").all_inner_texts() == [NOTES["billing"], NOTES["bug"]]
    assert page.locator("button.label").nth(1).get_attribute("title") == NOTES["bug"]
    assert page.locator("button.label").nth(2).get_attribute("title") is None  # no note for 'other'
    with page.expect_navigation():
        page.keyboard.press("1")
    assert page.locator("#item").count() == 1
    assert page.locator("#guidelines").get_attribute("open") is None  # folded after the first answer ...
    page.locator("#guidelines summary").click()
    assert page.locator("#guidelines .guide").is_visible()  # ... one click away
    page.close()


def test_the_local_app_without_guidelines_shows_neither(tmp_path: Path) -> None:
    import httpx

    vendor = LocalVendor({"undo_window_s": 0}, _context(LocalStore(tmp_path / "s"), guidelines="", class_notes={}))
    vendor.submit([Task(item_id="t0", round=0, batch_id="b0", replicas=1, reward=0.01)], batch_id="b0")
    token = vendor.add_annotator("ann")
    with running(create_app(vendor, project="tickets")) as base:
        page = httpx.get(f"{base}/?token={token}", timeout=30, follow_redirects=True).text
    assert 'id="item"' in page and 'id="guidelines"' not in page and 'id="class-notes"' not in page


@pytest.mark.slow
def test_an_mturk_hit_shows_the_guidelines_and_each_choices_note(browser) -> None:
    ctx = VendorContext(project="tickets", name="mturk", seed=0, classes=CLASSES, store=None,  # type: ignore[arg-type]
                        item_payload=lambda i: {"kind": "text", "text": f"ticket {i}"}, guidelines=GUIDE, class_notes=NOTES)
    xml = mturk.MTurkVendor({}, ctx).question_xml([Task(item_id="t0", round=0, batch_id="b", replicas=1, reward=0.01)])
    html = xml.split("<![CDATA[", 1)[1].rsplit("]]>", 1)[0]
    page = browser.new_page()
    page.route("https://worker.example/**", lambda route: route.fulfill(status=200, body=html, content_type="text/html"))
    page.goto("https://worker.example/frame?assignmentId=A1&turkSubmitTo=https%3A%2F%2Fworkersandbox.mturk.com")
    assert page.locator("details p.text").inner_text() == GUIDE
    assert page.locator("span.note").all_inner_texts() == [NOTES["billing"], NOTES["bug"]]
    assert page.evaluate("typeof window.__pwned") == "undefined" and len(page.locator("script").all()) == 1
    page.close()


def test_guidelines_that_leave_no_room_for_the_text_are_refused_in_one_line() -> None:
    ctx = VendorContext(project="tickets", name="mturk", seed=0, classes=CLASSES, store=None,  # type: ignore[arg-type]
                        item_payload=lambda i: {"kind": "text", "text": "a ticket " * 500},
                        guidelines="<&>" * 6000, class_notes=NOTES)  # escaped: 78,000 bytes
    with pytest.raises(VendorError, match=r"^vendor 'mturk': the form \(guidelines, classes and their notes\) leaves 0 "
                                          r"bytes for each item's text in MTurk's 65,535-byte question; shorten "
                                          r"guidelines\.text"):
        mturk.MTurkVendor({}, ctx).question_xml([Task(item_id="t0", round=0, batch_id="b", replicas=1, reward=0.01)])


def test_label_studio_gets_the_guidelines_as_instructions_and_notes_as_hints() -> None:
    config = ET.fromstring(label_studio.labeling_config(CLASSES, "text", NOTES))
    assert {c.get("value"): c.get("hint") for c in config.iter("Choice")} == {**NOTES, "other": None}
    shown = label_studio.instructions_html(GUIDE, NOTES, CLASSES)
    assert "<script>" not in shown and "&lt;script&gt;" in shown and shown.count("<br>") == 2
    assert "<li><b>bug</b>: the product does something wrong &lt;b&gt;not bold&lt;/b&gt;</li>" in shown


def test_a_note_for_a_class_that_does_not_exist_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from crowdloop.checks import check_config

    cfg = parse_config(small_config(guidelines={"text": "x", "classes": {"3": "three", "eleven": "no such class"}}))
    with pytest.raises(ConfigError, match=r"^guidelines\.classes: 'eleven' is not a class; expected notes for classes "
                                          r"of \['0', '1', "):
        check_config(cfg, location=str(tmp_path / "p"))
    with pytest.raises(ConfigError, match=rf"guidelines: classes\['3'\]: a note of 1,001 characters; "
                                          rf"expected at most {MAX_CLASS_NOTE_CHARS:,}"):
        parse_config(small_config(guidelines={"classes": {"3": "x" * 1001}}))
