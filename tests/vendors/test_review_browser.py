"""The review desk in a real Chromium, started as a user starts it (``crowdloop reviewers add``,
then ``crowdloop review DIR``): the reviewer's link opens the page, the items show as annotators
saw them (a digit's image), a click with a note records the correction under the reviewer's
name, the item leaves the page and the next round trains on the reviewer's label."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from crowdloop import corrections, engine
from crowdloop.config import parse_config
from crowdloop.engine import Project
from tests.conftest import crowdloop_cmd, small_config
from tests.vendors.app_server import free_port, start_annotate, stop_process

pytestmark = pytest.mark.slow  # the browser fixture fails with the install command when Chromium is missing


def test_a_reviewer_corrects_a_label_in_chromium(browser, tmp_path: Path) -> None:
    location = str(tmp_path / "p")
    p = Project.prepare(parse_config(small_config(**{"stopping.max_rounds": 3})), location)
    for r in (0, 1):
        assert engine.run_round(p, r) is None
    port = free_port()
    added = subprocess.run([*crowdloop_cmd(), "reviewers", "add", "rita", "-p", location, "--url",
                            f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120, check=True)
    link = added.stdout.strip()
    base, proc = start_annotate(location, tmp_path / "review.log", port=port, command="review")
    try:
        page = browser.new_page()
        page.goto(link)
        assert page.url == f"{base}/"  # the token left the address bar for a cookie
        cards = page.locator(".card.review")
        assert cards.count() == 20
        first = cards.first
        item, label = first.get_attribute("data-item"), first.locator(".label").inner_text()
        assert item == corrections.disputed(p, top=1)[0]["item_id"]
        image = first.locator("img.item")
        assert image.evaluate("e => e.complete && e.naturalWidth") == 8  # the digit's 8 x 8 pixels
        other = next(c for c in p.classes if c != label)
        first.locator("input[name=note]").fill("the loop is closed: a 6")
        first.locator(f"button[value='{other}']").click()
        page.wait_for_selector("#notice")
        assert page.locator("#notice").inner_text() == f"Recorded: {item} is {other}, from the next round's aggregation on."
        assert item not in [c.get_attribute("data-item") for c in page.locator(".card.review").all()]
        assert "1 correction(s) recorded" in page.locator(".who").inner_text()
    finally:
        stop_process(proc)
    made = corrections.latest(p)[item]
    assert (made.label, made.by, made.note) == (other, "rita", "the loop is closed: a 6")
    assert engine.run_round(p, 2) is None
    trained = {label.item_id: label for label in p.human_labels(before_round=3)}
    assert (trained[item].label, trained[item].source) == (other, "reviewed")
