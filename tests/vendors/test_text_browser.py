"""Text items as annotators see them, in a real Chromium: the local app and MTurk's HTMLQuestion.

Texts come from the fortunes sample (tests/data/fortunes) through the real pool loader, plus a
long text, a right-to-left override and markup. The local app shows a text in a box of readable
width that scrolls on its own (the page does not grow), keeps the answer keys working while the
box is focused and scrolled, and isolates direction marks so they cannot reorder the class
buttons. MTurk's form cuts a long text with a note and stays under the 64 KB question limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crowdloop.config import PoolConfig
from crowdloop.models.text_pools import load_fortunes_pool
from crowdloop.records import Annotation, Task
from crowdloop.storage.local import LocalStore
from crowdloop.testing import make_context
from crowdloop.vendor import VendorContext
from crowdloop.vendors import mturk
from crowdloop.vendors.local import LocalVendor
from crowdloop.vendors.local_app import create_app
from tests.vendors.app_server import running

pytestmark = pytest.mark.slow  # the browser fixture fails with the install command when Chromium is missing

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "fortunes"
CLASSES = ("computers", "politics", "startrek")
RTL = "\u202eThe override never ends: buttons must keep their order"
SCRIPT = "<script>window.__pwned = 1</script> looks like code, is text"


def fortune_texts() -> list[str]:
    pool = load_fortunes_pool(PoolConfig(source="fortunes", path=str(SAMPLE), classes=list(CLASSES)))
    return pool.content.tolist()


@pytest.fixture(scope="module")
def text_desk(tmp_path_factory) -> Iterator[tuple[str, str, LocalVendor, dict[str, str]]]:
    texts = fortune_texts()
    long_text = "\n%\n".join(texts)  # every fortune of the sample: tens of thousands of characters
    assert len(long_text) > 20_000
    items = {"a-long": long_text, "b-rtl": RTL, "c-script": SCRIPT, "d-short": texts[0]}
    base_ctx = make_context(LocalStore(tmp_path_factory.mktemp("textdesk")), name="local", classes=CLASSES)
    ctx = VendorContext(**{**base_ctx.__dict__, "item_payload": lambda i: {"kind": "text", "text": items[i]}})
    vendor = LocalVendor({"undo_window_s": 0}, ctx)
    vendor.submit([Task(item_id=i, round=0, batch_id="b0", replicas=1, reward=0.01) for i in items], batch_id="b0")
    token = vendor.add_annotator("ann")
    with running(create_app(vendor, project="fortunes")) as base:
        yield base, token, vendor, items


def _answer_of(vendor: LocalVendor, item: str) -> Annotation | None:
    for key in vendor.store.list("answers/b0/"):
        a = Annotation.model_validate_json(vendor.store.read_bytes(key))
        if a.item_id == item:
            return a
    return None


def test_local_app_shows_text_readably_and_keys_still_answer(browser, text_desk):
    base, token, vendor, items = text_desk
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.goto(f"{base}/?token={token}")
    seen = []
    while page.locator("#item").count():
        item = page.locator("#item").get_attribute("data-item")
        seen.append(item)
        box = page.locator("#item-text")
        assert box.inner_text() == items[item]
        assert box.get_attribute("dir") == "auto"  # direction-isolated
        geometry = box.evaluate("e => ({w: e.getBoundingClientRect().width, sh: e.scrollHeight, ch: e.clientHeight, "
                                "oy: getComputedStyle(e).overflowY, ub: getComputedStyle(e).unicodeBidi, "
                                "doc: document.scrollingElement.scrollHeight, vh: window.innerHeight, "
                                "zero: (() => { const s = document.createElement('span'); s.textContent = '0'; "
                                "e.appendChild(s); const w = s.getBoundingClientRect().width; s.remove(); return w; })()})")
        assert geometry["w"] <= 71 * geometry["zero"] + 40  # about 70 characters a line, on a 1600 px wide screen
        assert geometry["ub"] == "isolate"
        if item == "a-long":
            assert geometry["oy"] == "auto" and geometry["sh"] > 5 * geometry["ch"]  # the box scrolls ...
            assert geometry["doc"] < 2 * geometry["vh"]  # ... the page does not grow with the text
            assert "scroll inside the box" in page.locator("#item-long").inner_text()
            box.click()  # focus the text and scroll it with the keyboard, as a reader would
            page.keyboard.press("PageDown")
            page.keyboard.press("End")
            # Chromium scrolls on the compositor, after the key event returns: wait for it, do not race it
            page.wait_for_function("() => document.getElementById('item-text').scrollTop > 0", timeout=10_000)
        else:
            assert page.locator("#item-long").count() == 0
        if item == "b-rtl":  # the override ends with its box: the buttons keep their left-to-right order
            xs = page.locator("button.label").evaluate_all("bs => bs.map(b => b.getBoundingClientRect().x)")
            assert xs == sorted(xs)
            assert page.locator("button.label").all_inner_texts() == ["1" + CLASSES[0], "2" + CLASSES[1], "3" + CLASSES[2]]
        assert page.evaluate("typeof window.__pwned") == "undefined"
        with page.expect_navigation():
            page.keyboard.press("2")  # keys unchanged: 2 answers the second class
        answer = _answer_of(vendor, item)
        assert answer is not None and answer.label == CLASSES[1]
    assert seen == sorted(items) and page.locator("#done").is_visible()
    page.close()


# -- MTurk ----------------------------------------------------------------------------------------
def _question(payloads: dict[str, str], **params) -> str:
    ctx = VendorContext(project="text", name="mturk", seed=0, classes=CLASSES, store=None,  # type: ignore[arg-type]
                        item_payload=lambda i: {"kind": "text", "text": payloads[i]})
    vendor = mturk.MTurkVendor({"items_per_hit": len(payloads), **params}, ctx)
    return vendor.question_xml([Task(item_id=i, round=0, batch_id="b", replicas=1, reward=0.01) for i in payloads])


def test_mturk_cuts_long_text_with_a_note_and_fits_the_question_limit(browser):
    texts = fortune_texts()
    long_text = "\n%\n".join(texts)
    hostile = "<&>\"'" * 6000  # escaping makes every character several bytes
    payloads = {"long": long_text, "hostile": hostile, "rtl": RTL, "short": texts[1]}
    xml = _question(payloads)
    assert len(xml.encode("utf-8")) <= mturk.MAX_QUESTION_BYTES
    html = xml.split("<![CDATA[", 1)[1].rsplit("]]>", 1)[0]
    page = browser.new_page()
    page.route("https://worker.example/**", lambda route: route.fulfill(status=200, body=html, content_type="text/html"))
    page.goto("https://worker.example/frame?assignmentId=A1&turkSubmitTo=https%3A%2F%2Fworkersandbox.mturk.com")
    shown = page.locator("p.text").all_inner_texts()
    notes = page.locator("p.cut").all_inner_texts()
    assert shown[0] == long_text[:4000] and shown[2] == RTL and shown[3] == texts[1]
    assert long_text.startswith(shown[0]) and hostile.startswith(shown[1]) and len(shown[1]) < 4000
    assert notes == [f"Shortened for this form: showing the first 4,000 of {len(long_text):,} characters.",
                     f"Shortened for this form: showing the first {len(shown[1]):,} of {len(hostile):,} characters."]
    assert page.locator("p.text").evaluate_all("ps => ps.map(p => p.dir)") == ["auto"] * 4
    assert page.evaluate("typeof window.__pwned") == "undefined" and len(page.locator("script").all()) == 1
    page.close()


def test_mturk_question_stays_under_64_kb_or_is_refused_in_one_line():
    """Fifty items of 48,000 characters would be 2.4 MB: the byte budget per item shrinks so the
    question still fits; only a class list beyond reason leaves no room for the text, and that
    is refused."""
    xml = _question({f"i{n}": "x" * 48_000 for n in range(50)}, max_text_chars=48_000)
    assert len(xml.encode("utf-8")) <= mturk.MAX_QUESTION_BYTES
    classes = tuple(f"class-{'z' * 900}-{n}" for n in range(80))
    ctx = VendorContext(project="text", name="mturk", seed=0, classes=classes, store=None,  # type: ignore[arg-type]
                        item_payload=lambda i: {"kind": "text", "text": "short"})
    vendor = mturk.MTurkVendor({"items_per_hit": 1}, ctx)
    with pytest.raises(mturk.VendorError, match=r"the form \(guidelines, classes and their notes\) leaves 0 bytes for "
                                                r"each item's text in MTurk's 65,535-byte question"):
        vendor.question_xml([Task(item_id="i", round=0, batch_id="b", replicas=1, reward=0.01)])
