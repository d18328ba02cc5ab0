"""The annotation app in a real Chromium (Debian's /usr/bin/chromium driven by Playwright).

Run against ``crowdloop annotate`` started as a subprocess, like a user would. Needs
``apt-get install -y chromium`` (``bash scripts/test.sh`` does it); without it the tests fail
with that command.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from crowdloop import engine
from crowdloop.config import parse_config
from crowdloop.records import Annotation
from tests.conftest import small_config
from tests.vendors.app_server import start_annotate, stop_process

pytestmark = pytest.mark.slow
# The page's screenshot goes to the test's tmp dir; docs/images/annotate.png (tracked) is
# regenerated on purpose with CROWDLOOP_DOCS_SCREENSHOT=docs/images/annotate.png
# .venv/bin/python -m pytest tests/vendors/test_local_browser.py -k keyboard
DOCS_SCREENSHOT_ENV = "CROWDLOOP_DOCS_SCREENSHOT"
XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """Start ``crowdloop annotate PROJECT`` on a free port; yields a function returning the base URL."""
    procs: list[subprocess.Popen] = []

    def start(project_dir: str) -> str:
        base, proc = start_annotate(project_dir, tmp_path / f"annotate-{len(procs)}.log")
        procs.append(proc)
        return base

    yield start
    for proc in procs:
        stop_process(proc)


def _answers(p: engine.Project, batch: str) -> dict[str, Annotation]:
    out = {}
    for key in p.vendor.store.list(f"answers/{batch}/"):
        a = Annotation.model_validate_json(p.vendor.store.read_bytes(key))
        out[a.item_id] = a
    return out


def _press(page, key: str) -> None:
    with page.expect_navigation():
        page.keyboard.press(key)


def test_label_with_the_keyboard_undo_and_collect(browser, serve, tmp_path):
    cfg = parse_config(small_config(**{
        "vendor": {"name": "local", "params": {"suggestions": True, "undo_window_s": 60}},
        "sampler.initial_size": 80, "sampler.batch_size": 4,
        "model.params": {"C": 1.0, "max_iter": 1000}, "consensus.redundancy": 1,
        "consensus.method": "majority_vote", "collect.timeout_s": 2, "collect.poll_interval_s": 0.05}))
    p = engine.Project.prepare(cfg, str(tmp_path / "digits"))
    truth = dict(zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True))
    desk = p.vendor
    # round 0 answered directly, so round 1 has a model and its suggestions
    engine.run_round(p, 0, until="dispatch")
    while (found := desk.next_task("warmup")) is not None:
        desk.answer("warmup", found[0].batch_id, found[0].item_id, truth[found[0].item_id], client_seconds=4)
    real_clock = desk.clock
    desk.clock = lambda: real_clock() + 3600  # past the undo window
    for step in (engine.collect, engine.aggregate, engine.pay):
        step(p, 0)
    engine.run_round(p, 1, until="dispatch")
    batch = engine.dispatch(p, 1)["batch_id"]
    token = desk.add_annotator("alice")
    base = serve(p.store.url)

    page = browser.new_page(viewport={"width": 980, "height": 720})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(f"{base}/?token={token}")
    assert response.status == 200 and page.url == f"{base}/"  # the token left the address bar
    assert page.locator("#progress").inner_text() == "0 answered · 4 of 4 items waiting"
    assert page.locator("#item-image").evaluate("img => img.complete && img.naturalWidth") == 8
    assert page.locator("#suggestion").inner_text().startswith("Model suggests")
    shot = Path(os.environ.get(DOCS_SCREENSHOT_ENV) or tmp_path / "annotate.png")
    page.screenshot(path=str(shot))
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (980, 720)

    given: dict[str, str] = {}
    for key in ("3", "5"):
        item = page.locator("#item").get_attribute("data-item")
        _press(page, key)
        given[item] = key
    assert set(_answers(p, batch)) == set(given)
    _press(page, "u")  # take back the last answer ...
    assert "taken back" in page.locator("#notice").inner_text()
    undone = page.locator("#item").get_attribute("data-item")
    assert undone == list(given)[-1]  # ... and it is shown again
    del given[undone]
    assert set(_answers(p, batch)) == set(given)
    while page.locator("#item").count():
        item = page.locator("#item").get_attribute("data-item")
        key = "7" if item == undone else "1"
        _press(page, key)
        given[item] = key
    assert page.locator("#done").is_visible()
    assert page.locator("#progress").inner_text() == "4 answered · 0 of 4 items waiting"
    assert not errors

    saved = _answers(p, batch)
    assert {i: a.label for i, a in saved.items()} == given  # digit classes keep their own keys
    assert all(a.worker_id == "alice" and 0 < a.duration_s < 60 for a in saved.values())
    collected = engine.collect(p, 1)  # the loop's clock is past the undo window
    assert collected["complete"] and collected["n_annotations"] == 4


@pytest.fixture
def xss_project(tmp_path) -> engine.Project:
    rows = ["id,text,f1,label"]
    for i in range(8):
        text = XSS if i < 6 else f"plain text {i}"
        rows.append(f'r{i},"{text.replace(chr(34), chr(34) * 2)}",{i},{"a" if i % 2 else "b"}')
    (tmp_path / "pool.csv").write_text("\n".join(rows) + "\n")
    cfg = parse_config(small_config(**{
        "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id", "label_column": "label",
                 "text_column": "text", "test_size": 0.25},
        "vendor": {"name": "local", "params": {}}, "sampler.initial_size": 2, "sampler.batch_size": 2,
        "consensus.redundancy": 1}))
    p = engine.Project.prepare(cfg, str(tmp_path / "xss"))
    engine.run_round(p, 0, until="dispatch")
    return p


def test_script_in_an_item_is_shown_as_text(browser, serve, xss_project):
    p = xss_project
    token = p.vendor.add_annotator("bob")
    base = serve(p.store.url)
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/?token={token}")
    page.wait_for_load_state("load")
    text = page.locator("#item-text").inner_text()
    item = page.locator("#item").get_attribute("data-item")
    expected = XSS if int(item[1:]) < 6 else f"plain text {item[1:]}"
    assert text == expected
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("#item-text script, #item-text img").count() == 0
    assert not dialogs


def test_a_wrong_token_gets_403(browser, serve, xss_project):
    p = xss_project
    token = p.vendor.add_annotator("carol")
    base = serve(p.store.url)
    context = browser.new_context()
    page = context.new_page()
    assert page.goto(f"{base}/?token={token[:-2]}xy").status == 403
    assert "403 Forbidden" in page.content()
    assert page.goto(f"{base}/").status == 403  # no cookie was set
    assert not context.cookies()
    p.vendor.remove_annotator("carol")
    assert page.goto(f"{base}/?token={token}").status == 403  # revoked links stop working
    context.close()


def test_near_the_deadline_the_app_hands_out_no_work_the_loop_would_not_collect(browser, serve, tmp_path):
    """On main a new annotator still got items after collect.timeout_s, the loop's last poll left out
    answers younger than the undo window, and answers after it were stored but never collected or
    paid. Here: items are handed out until lease_s (here half the 20 s window) before the deadline,
    the last poll takes every stored answer, and a later answer is refused on the page."""
    import time

    from crowdloop import keys
    from crowdloop.storage import read_json

    cfg = parse_config(small_config(**{
        "vendor": {"name": "local", "params": {"undo_window_s": 30}}, "sampler.initial_size": 6,
        "consensus.redundancy": 1, "consensus.method": "majority_vote",
        "collect.timeout_s": 20, "collect.poll_interval_s": 0.2}))
    p = engine.Project.prepare(cfg, str(tmp_path / "late"))
    tokens = {who: p.vendor.add_annotator(who) for who in ("alice", "carol", "bob")}
    base = serve(p.store.url)
    pages = {who: browser.new_page() for who in tokens}
    engine.run_round(p, 0, until="dispatch")
    batch = read_json(p.store, keys.round_key(0, keys.REFS))
    for who in ("alice", "carol"):  # in time: an item each
        pages[who].goto(f"{base}/?token={tokens[who]}")
        assert pages[who].locator("#item").count() == 1
    _press(pages["alice"], "1")
    time.sleep(max(0.0, batch["dispatched_at"] + 10.5 - time.time()))
    pages["bob"].goto(f"{base}/?token={tokens['bob']}")
    assert pages["bob"].locator("#item").count() == 0  # too late to start: nothing is handed out
    assert pages["bob"].locator("#progress").inner_text() == "0 answered · 0 of 6 items waiting"
    time.sleep(max(0.0, batch["dispatched_at"] + 20.3 - time.time()))
    collected = engine.collect(p, 0)  # the poll after the deadline closes the batch and takes alice's answer
    assert collected["n_annotations"] == 1  # (it is younger than the 30 s undo window)
    _press(pages["carol"], "1")  # carol answers the item she held, after the loop's last poll
    assert "is closed" in pages["carol"].content() and "not stored and is not paid" in pages["carol"].content()
    assert [a.worker_id for a in _answers(p, batch["batch_id"]).values()] == ["alice"]
