"""The review desk (``crowdloop review``, ``crowdloop/review_app.py``): reviewers see the labels
most likely wrong and correct them with a click. Only a reviewer's link opens it; posts need the
CSRF value and this site's origin; a bad post is one line and records nothing; a correction is
the same record ``crowdloop correct`` makes and takes its item off the page."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crowdloop import corrections, engine
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.review_app import add_reviewer, create_review_app, remove_reviewer
from crowdloop.web import csrf_for
from tests.conftest import crowdloop_cmd, small_config

ORIGIN = {"origin": "http://testserver"}


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> tuple[Project, str]:
    location = str(tmp_path_factory.mktemp("review") / "p")
    p = Project.prepare(parse_config(small_config(**{"stopping.max_rounds": 4, "gold.share": 0.1, "gold.n_items": 20,
                                                     "gold.min_answers": 50})), location)
    for r in (0, 1):
        assert engine.run_round(p, r) is None
    return p, location


def _desk(p: Project, token: str | None, **kwargs) -> TestClient:
    client = TestClient(create_review_app(p, **kwargs), base_url="http://testserver", follow_redirects=False)
    if token is not None:
        signed = client.get(f"/?token={token}")
        assert signed.status_code == 303 and signed.headers["location"] == "/"
    return client


def _items(html: str) -> list[str]:
    return re.findall(r'data-item="([^"]+)"', html)


def test_a_reviewer_corrects_the_first_label_and_it_leaves_the_page(reviewed) -> None:
    p, _ = reviewed
    token = add_reviewer(p, "rita")
    desk = _desk(p, token, top=5)
    page = desk.get("/")
    assert page.status_code == 200 and "script-src 'nonce-" in page.headers["content-security-policy"]
    listed = _items(page.text)
    expected = [row["item_id"] for row in corrections.disputed(p, top=5)]
    assert listed == expected and len(listed) == 5
    first = next(row for row in corrections.disputed(p, top=1))
    other = next(c for c in p.classes if c != first["label"])
    done = desk.post("/correct", data={"csrf": csrf_for(token), "item_id": first["item_id"], "label": other,
                                       "note": "a 7 with a bar"}, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"] == "/?notice=recorded"
    made = corrections.latest(p)[first["item_id"]]
    assert (made.label, made.by, made.note) == (other, "rita", "a 7 with a bar")
    after = desk.get(done.headers["location"])
    assert first["item_id"] not in _items(after.text) and len(_items(after.text)) == 5  # the next one moves up
    assert f"Recorded: {first['item_id']} is {other}" in after.text
    again = desk.post("/correct", data={"csrf": csrf_for(token), "item_id": first["item_id"], "label": other},
                      headers=ORIGIN)
    assert again.headers["location"] == "/?notice=in-force" and len(p.store.list("corrections/")) == 1
    # a click that went wrong: the item waits under "your last corrections", where a click changes it
    mine = re.findall(r'class="card mine" data-corrected="([^"]+)"', after.text)
    assert mine == [first["item_id"]] and f'value="{other}" class="current"' in after.text.split('id="mine"')[1]
    meant = next(c for c in p.classes if c not in (other, first["label"]))
    desk.post("/correct", data={"csrf": csrf_for(token), "item_id": first["item_id"], "label": meant}, headers=ORIGIN)
    assert corrections.latest(p)[first["item_id"]].label == meant and len(p.store.list("corrections/")) == 2
    other = meant
    # the same record crowdloop correct makes: the next aggregation trains on it
    assert engine.run_round(p, 2) is None
    labels = {label.item_id: label for label in p.human_labels(before_round=3)}
    assert (labels[first["item_id"]].label, labels[first["item_id"]].source) == (other, "reviewed")


def test_only_a_reviewers_link_opens_the_desk_and_forged_posts_record_nothing(reviewed) -> None:
    p, _ = reviewed
    token = add_reviewer(p, "sam")
    before = p.store.list("corrections/")
    stranger = _desk(p, None)
    assert stranger.get("/").status_code == 403
    assert stranger.get("/?token=not-a-token").status_code == 403
    assert stranger.get("/image/0123456789abcdef").status_code == 403
    desk = _desk(p, token, top=3)
    item = _items(desk.get("/").text)[0]
    form = {"csrf": csrf_for(token), "item_id": item, "label": p.classes[0]}
    assert desk.post("/correct", data={**form, "csrf": "x"}, headers=ORIGIN).status_code == 403
    assert desk.post("/correct", data=form, headers={"origin": "https://evil.example"}).status_code == 403
    assert desk.post("/correct", data=form, headers={**ORIGIN, "sec-fetch-site": "cross-site"}).status_code == 403
    assert stranger.post("/correct", data=form, headers=ORIGIN).status_code == 403
    big = desk.post("/correct", content=b"x" * 5000, headers={**ORIGIN, "content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    assert desk.get("/image/0123456789abcdef").status_code == 404  # only items on the page
    assert desk.get("/?notice=<b>you+were+hacked</b>").text.count("hacked") == 0  # a link puts no words on the page
    assert p.store.list("corrections/") == before
    remove_reviewer(p, "sam")
    assert desk.get("/").status_code == 403  # a revoked link stops at once, cookie or not


def test_a_bad_correction_is_one_line_and_records_nothing(reviewed) -> None:
    p, _ = reviewed
    token = add_reviewer(p, "tom")
    desk = _desk(p, token)
    before = p.store.list("corrections/")
    item = _items(desk.get("/").text)[0]
    gold = sorted(p.gold_set)[0]
    held_out = str(p.test.ids[0])
    for form, message in (({"item_id": item, "label": "eleven"}, f"unknown class 'eleven' for item '{item}'"),
                          ({"item_id": "no-such-item", "label": p.classes[0]}, "no-such-item"),
                          ({"item_id": gold, "label": p.classes[0]}, "is a gold item"),
                          ({"item_id": held_out, "label": p.classes[0]}, "held-out test split")):
        bad = desk.post("/correct", data={"csrf": csrf_for(token), **form}, headers=ORIGIN)
        assert bad.status_code == 400 and bad.text.startswith("<p>400: review desk: the form: ")
        assert message.replace("'", "&#39;") in bad.text and bad.text.count("\n") == 0
    assert p.store.list("corrections/") == before


def test_the_ranking_is_computed_once_a_round(reviewed, monkeypatch: pytest.MonkeyPatch) -> None:
    """It refits the model on out-of-fold splits: not on every page load."""
    p, _ = reviewed
    token = add_reviewer(p, "uma")
    calls = []
    real = corrections.disputed
    monkeypatch.setattr(corrections, "disputed", lambda *a, **k: calls.append(1) or real(*a, **k))
    desk = _desk(p, token)
    for _ in range(3):
        assert desk.get("/").status_code == 200
    assert len(calls) == 1
    finished = max(p.rounds())
    assert engine.run_round(p, finished + 1) is None
    assert desk.get("/").status_code == 200 and len(calls) == 2


def test_reviewers_cli_and_a_bad_rank_are_one_line(reviewed) -> None:
    _, location = reviewed
    added = subprocess.run([*crowdloop_cmd(), "reviewers", "add", "vera", "-p", location, "--url", "http://127.0.0.1:9"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert added.returncode == 0 and re.fullmatch(r"http://127\.0\.0\.1:9/\?token=[\w-]{32}\n", added.stdout), added.stderr
    listed = subprocess.run([*crowdloop_cmd(), "reviewers", "list", "-p", location], capture_output=True, text=True,
                            timeout=120, check=False)
    assert "vera" in listed.stdout.split()
    for args, message in ((["reviewers", "add", "vera", "-p", location], "reviewer 'vera' already exists"),
                          (["reviewers", "add", "Vera Smith", "-p", location], "reviewer name 'Vera Smith': expected"),
                          (["review", location, "--rank", "votes"], "--rank: 'votes': expected one of both, crowd, model")):
        out = subprocess.run([*crowdloop_cmd(), *args], capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 2 and message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_item_text_shows_as_text(tmp_path: Path) -> None:
    """Texts come from the team's pool and may hold markup or direction overrides: they show
    escaped, in a direction-isolated box, under a CSP that runs no script without the nonce."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    words = {"billing": "charged refund invoice card", "shipping": "parcel courier late tracking"}
    rows = [{"id": f"t{i:03d}", "label": c,
             "text": f"<script>alert({i})</script>\u202e {' '.join(rng.choice(words[c].split(), 6))}"}
            for i, c in enumerate(rng.choice(list(words), 120))]
    pd.DataFrame(rows).to_csv(tmp_path / "tickets.csv", index=False)
    cfg = small_config(pool={"source": "csv", "path": str(tmp_path / "tickets.csv"), "id_column": "id",
                             "text_column": "text", "label_column": "label", "test_size": 0.2},
                       model={"estimator": "sklearn.linear_model.LogisticRegression", "features": {"kind": "tfidf"}},
                       sampler={"name": "random", "batch_size": 10, "initial_size": 20})
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    for r in (0, 1):
        assert engine.run_round(p, r) is None
    page = _desk(p, add_reviewer(p, "rita")).get("/")
    assert _items(page.text), "nothing listed: the test proves nothing"
    assert "<script>alert(" not in page.text and page.text.count('<div class="text" dir="auto">&lt;script&gt;alert(') \
        == len(_items(page.text))
    nonce = re.search(r"'nonce-([\w-]+)'", page.headers["content-security-policy"]).group(1)
    assert all(f'nonce="{nonce}"' in tag for tag in re.findall(r"<(?:script|style)[^>]*>", page.text))


def test_the_list_narrows_to_one_pair_of_classes(reviewed) -> None:
    """Links above the list take the reviewer to the items about one confusion, the pairs with
    most items first; a correction made there comes back to the same pair."""
    p, location = reviewed
    token = add_reviewer(p, "vic")
    desk = _desk(p, token, top=4)
    everything = corrections.disputed(p, top=None)
    pairs = corrections.pairs_in(everything)
    (a, b), n = pairs[0]
    assert n == sum(corrections.involves(row, (a, b)) for row in everything) and n >= 2
    assert [count for _, count in pairs] == sorted((count for _, count in pairs), reverse=True)
    page = desk.get("/")
    assert f"{a} ↔ {b} ({n})" in page.text
    narrowed = desk.get(f"/?between={b},{a}")  # either order
    listed = _items(narrowed.text)
    about = [row for row in everything if {a, b} <= {row["label"], *row["votes"], row.get("model_label", row["label"])}]
    assert listed == [row["item_id"] for row in about][:4]
    assert listed == [row["item_id"] for row in corrections.disputed(p, top=4, between=(a, b))]
    assert 'aria-current="page"' in narrowed.text and 'id="all"' in narrowed.text
    first = about[0]
    other = a if first["label"] == b else b
    done = desk.post("/correct", data={"csrf": csrf_for(token), "item_id": first["item_id"], "label": other,
                                       "between": f"{a},{b}"}, headers=ORIGIN)
    assert done.status_code == 303 and done.headers["location"] == f"/?notice=recorded&between={a}%2C{b}"
    assert first["item_id"] not in _items(desk.get(done.headers["location"]).text)
    for bad, message in ((f"{a},{a}", "expected two different classes, as A,B"),
                         (f"{a},eleven", "&#39;eleven&#39; is not a class of the project")):
        refused = desk.get(f"/?between={bad}")
        assert refused.status_code == 400 and message in refused.text and refused.text.count("\n") == 0
    shown = subprocess.run([*crowdloop_cmd(), "disputed", "-p", location, "--between", f"{a},{b}", "--json"],
                           capture_output=True, text=True, timeout=120, check=True)
    rows = __import__("json").loads(shown.stdout)
    assert rows and all(corrections.involves(row, (a, b)) for row in rows)
    bad = subprocess.run([*crowdloop_cmd(), "disputed", "-p", location, "--between", "3"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--between: '3': expected two different classes" in bad.stderr
