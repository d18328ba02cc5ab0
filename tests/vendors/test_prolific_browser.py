"""Three rounds with Prolific participants in real Chromium (Debian's /usr/bin/chromium, Playwright).

The fake Prolific API hands each participant a place and the study's URL with its parameters
filled in, as Prolific does; Chromium opens that link on ``crowdloop annotate`` (started as a
user starts it), answers the one item shown, reads the completion code and goes back to
"Prolific" with it. The loop then collects, approves and pays through the API.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.storage import read_json
from tests.vendors.app_server import free_port, start_annotate, stop_process
from tests.vendors.prolific_fake import FakeProlific, participant_ids
from tests.vendors.test_prolific import api, hourly_pay, loop_config, params  # noqa: F401 - api is a fixture

pytestmark = pytest.mark.slow


@pytest.fixture
def annotate(tmp_path: Path) -> Iterator:
    """``crowdloop annotate DIR --port PORT`` on 127.0.0.1 (the port the study's URL names)."""
    procs: list[subprocess.Popen] = []

    def start(project_dir: str, port: int) -> str:
        base, proc = start_annotate(project_dir, tmp_path / "annotate.log", port=port)
        procs.append(proc)
        return base

    yield start
    for proc in procs:
        stop_process(proc)


def test_three_rounds_with_participants_in_chromium(browser, api: FakeProlific, annotate, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    cfg = loop_config(api, **{"vendor": {"name": "prolific", "params": params(api, app_url=f"http://127.0.0.1:{port}")},
                              "sampler.initial_size": 4, "sampler.batch_size": 3, "consensus.redundancy": 2})
    p = engine.Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    truth = {i: str(y) for i, y in zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True)}
    base = annotate(p.store.url, port)
    crowd = iter(participant_ids(100))
    errors: list[str] = []
    seen_batches: dict[str, set[str]] = {}
    for r in range(3):
        engine.run_round(p, r, until="dispatch")
        study = read_json(p.store, keys.round_key(r, keys.REFS))["refs"][0]["study_id"]
        batch = p.batch_id(r)
        while (session := api.start(study, participant := next(crowd))) is not None:
            context = browser.new_context()
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            entry = api.entry_url(session)
            assert entry.startswith(f"{base}/?PROLIFIC_PID={participant}&STUDY_ID={study}&SESSION_ID={session}")
            assert page.goto(entry).status == 200 and page.url == f"{base}/"  # the parameters left the address bar
            item = page.locator("#item").get_attribute("data-item")
            seen_batches.setdefault(batch, set()).add(item)
            with page.expect_navigation():
                page.keyboard.press(truth[item])  # digit classes answer with their own key
            code = page.locator("#completion-code").inner_text()
            assert page.locator("#complete-link").get_attribute("href").endswith(f"?cc={code}")
            page.reload()  # one place, one item: the code again, never a second item
            assert page.locator("#item").count() == 0 and page.locator("#completion-code").inner_text() == code
            context.close()
            api.complete(session, code)
        assert engine.run_round(p, r) is None
    assert not errors
    dispatched = {r: {t["item_id"] for t in read_json(p.store, keys.round_key(r, keys.DISPATCH))["tasks"]}
                  for r in range(3)}
    assert all(seen_batches[p.batch_id(r)] == dispatched[r] for r in range(3))  # each study showed its own items only

    # a link whose session Prolific does not know (or that belongs to someone else) gets no item
    page = browser.new_page()
    forged = api.entry_url(session_of_someone := next(iter(api.submissions)))
    other = next(crowd)
    response = page.goto(forged.replace(api.submissions[session_of_someone]["participant_id"], other))
    assert response.status == 403 and "session is not active" in page.content()
    page.close()

    books = api.accounting()
    pays = [read_json(p.store, keys.round_key(r, keys.PAY)) for r in range(3)]
    assert books["studies"] == 3 and books["duplicate_studies"] == 0 and books["approved"] == 8 + 6 + 6
    assert round(sum(x["total"] for x in pays), 2) == books["total"]
    assert (round(sum(x["rewards"] for x in pays), 2), round(sum(x["fees"] for x in pays), 2)) == (
        books["rewards"], books["fees"])
    wages = hourly_pay(p)
    assert len(wages) == 20 and min(wages.values()) >= p.config.pay.hourly_wage
    labels = list(p.human_labels(before_round=3))
    assert len(labels) == 4 + 3 + 3 and all(lab.label == truth[lab.item_id] for lab in labels)
