"""The local vendor and its annotation app, without a browser (see test_local_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from crowdloop import engine
from crowdloop.cli import app as cli_app
from crowdloop.config import parse_config
from crowdloop.errors import ConfigError, CrowdloopError, VendorDataError
from crowdloop.records import Task
from crowdloop.storage.local import LocalStore
from crowdloop.testing import check_vendor, make_context
from crowdloop.vendor import acknowledged
from crowdloop.vendors.local import UNDO_MARGIN_S, LocalVendor, item_key
from crowdloop.vendors.local_app import create_app, csrf_for
from tests.conftest import small_config

XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def desk(tmp_path: Path, clock: Clock | None = None, **params) -> LocalVendor:
    ctx = make_context(LocalStore(tmp_path / "p"), name="local")
    return LocalVendor(params, ctx, clock=clock or Clock())


def tasks(n: int, replicas: int = 1, batch: str = "b0") -> list[Task]:
    return [Task(item_id=f"item-{i}", round=0, batch_id=batch, replicas=replicas, reward=0.03) for i in range(n)]


def test_local_vendor_honours_the_contract(tmp_path):
    workers = [f"ann-{r}" for r in range(4)]

    def respond(v, tasks_, batch_id):
        for r, worker in enumerate(workers):  # each annotator works through what the desk shows them
            while (shown := v.next_task(worker)) is not None:
                v.answer(worker, batch_id, shown[0].item_id, v.context.classes[r % 2], client_seconds=4.0)

    report = check_vendor(LocalVendor, params={"undo_window_s": 0}, respond=respond, workers=workers,
                          context=make_context(LocalStore(tmp_path), name="local"), n_items=3, replicas=2)
    assert report.n_annotations == 6 + 3 + 6 and not report.skipped
    assert sum(c.startswith(("blocks_workers", "excludes_workers_per_item")) for c in report.checks) == 2


def test_answers_wait_out_the_undo_window_and_undo_restores_the_item(tmp_path):
    clock = Clock()
    v = desk(tmp_path, clock, undo_window_s=10)
    refs = v.submit(tasks(2), batch_id="b0")
    task, shown = v.next_task("ann")
    assert task.item_id == "item-0" and shown == clock.now
    clock.now += 7
    first = v.answer("ann", "b0", "item-0", "dog", client_seconds=99.0)
    assert first.duration_s == 7.0  # never more than the server saw the item on screen
    assert v.poll(refs) == []  # may still be undone
    clock.now += 3
    assert v.undo("ann").item_id == "item-0"
    assert v.next_task("ann")[0].item_id == "item-0"  # the undone item comes back first
    again = v.answer("ann", "b0", "item-0", "cat", client_seconds=2.5)
    assert again.label == "cat" and again.duration_s == 2.5
    clock.now += 10 + UNDO_MARGIN_S - 0.5
    assert v.undo("ann") is None  # outside the window ...
    assert v.poll(refs) == []  # ... but poll keeps a margin
    clock.now += 1
    assert [(a.item_id, a.label) for a in v.poll(refs)] == [("item-0", "cat")]
    assert v.poll(refs) == []


def test_double_submit_is_idempotent_and_labels_are_checked(tmp_path):
    v = desk(tmp_path, undo_window_s=0)
    refs = v.submit(tasks(1), batch_id="b0")
    v.next_task("ann")
    a = v.answer("ann", "b0", "item-0", "bird")
    b = v.answer("ann", "b0", "item-0", "cat")  # a second click arrives late: first answer wins
    assert a == b and len(v.store.list("answers/")) == 1
    with pytest.raises(VendorDataError, match=r"label 'horse' is not one of the classes"):
        v.answer("other", "b0", "item-0", "horse")
    with pytest.raises(VendorDataError, match=r"item 'nope' is not part of batch 'b0'"):
        v.answer("other", "b0", "nope", "cat")
    assert [x.label for x in v.poll(refs)] == ["bird"]


def test_leases_spread_items_and_skips_are_remembered(tmp_path):
    v = desk(tmp_path)
    v.submit(tasks(3, replicas=1), batch_id="b0")
    assert v.next_task("ann")[0].item_id == "item-0"
    assert v.next_task("bob")[0].item_id == "item-1"  # item-0 is on ann's screen
    assert v.next_task("ann")[0].item_id == "item-0"  # a reload shows the same item
    v.skip("ann", "b0", "item-0")
    assert v.next_task("ann")[0].item_id == "item-2"
    v.answer("ann", "b0", "item-2", "cat")
    assert v.next_task("ann") is None  # item-0 skipped, item-1 held by bob
    assert v.progress("ann") == {"answered": 1, "waiting": 2, "items": 3}


def test_tokens_are_stored_only_as_hashes(tmp_path):
    v = desk(tmp_path)
    token = v.add_annotator("alice")
    assert v.authenticate(token) == "alice" and v.authenticate(token + "x") is None and v.authenticate("") is None
    stored = b"".join(v.store.read_bytes(k) for k in v.store.list(""))
    assert token.encode() not in stored
    with pytest.raises(CrowdloopError, match="annotator 'alice' already exists"):
        v.add_annotator("alice")
    with pytest.raises(CrowdloopError, match=r"annotator name 'Alice Smith': expected"):
        v.add_annotator("Alice Smith")
    v.remove_annotator("alice")
    assert v.authenticate(token) is None


@pytest.fixture
def text_project(tmp_path) -> engine.Project:
    rows = ["id,text,f1,f2,label"]
    for i in range(12):
        text = XSS if i == 0 else f"review number {i}, {'great' if i % 2 else 'awful'}"
        rows.append(f'r{i},"{text.replace(chr(34), chr(34) * 2)}",{i},{i % 2},{"pos" if i % 2 else "neg"}')
    (tmp_path / "pool.csv").write_text("\n".join(rows) + "\n")
    cfg = parse_config(small_config(**{
        "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id", "label_column": "label",
                 "text_column": "text", "test_size": 0.25},
        "vendor": {"name": "local", "params": {"undo_window_s": 0, "suggestions": True}},
        "sampler.initial_size": 4, "sampler.batch_size": 2, "consensus.redundancy": 1,
        # A 60 s window: the desk stops offering a batch half its window before the deadline, and a
        # 1 s window left these tests 0.5 s between dispatch and the page (a loaded CI machine missed it).
        "consensus.method": "majority_vote", "collect.timeout_s": 60, "collect.poll_interval_s": 0.01}))
    p = engine.Project.prepare(cfg, str(tmp_path / "project"))
    assert p.pool.content_kind == "text"
    return p


def _client(v: LocalVendor) -> TestClient:
    return TestClient(create_app(v), base_url="http://testserver", follow_redirects=False)


def test_the_app_serves_nothing_without_a_valid_token(text_project):
    v = text_project.vendor
    engine.run_round(text_project, 0, until="dispatch")
    token = v.add_annotator("alice")
    client = _client(v)
    for url in ("/", "/?token=wrong", "/image/x/y", "/static/../../etc/passwd", "/docs", "/openapi.json"):
        r = client.get(url)
        assert r.status_code == 403, url
        assert "token=" not in r.text
    assert client.post("/answer", data={"label": "pos"}).status_code == 403
    r = client.get(f"/?token={token}")
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert client.get("/").status_code == 200


def test_the_app_escapes_content_and_refuses_cross_site_posts(text_project, tmp_path):
    v = text_project.vendor
    refs = v.submit([Task(item_id="r0", round=0, batch_id="xss", replicas=1, reward=0.01)], batch_id="xss")
    token = v.add_annotator("alice")
    client = _client(v)
    client.get(f"/?token={token}")
    page = client.get("/")
    assert page.status_code == 200
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page.text and "<script>window.pwned" not in page.text
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"]).group(1)
    assert re.findall(r"<script[^>]*>", page.text) == [f'<script nonce="{nonce}">']
    form = {"csrf": csrf_for(token), "batch_id": "xss", "item_id": "r0", "label": "neg", "client_ms": "1500"}
    assert client.post("/answer", data={**form, "csrf": "0" * 32}).status_code == 403
    assert client.post("/answer", data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/answer", data=form, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert not v.store.list("answers/")
    r = client.post("/answer", data=form, headers={"Origin": "http://testserver"})
    assert r.status_code == 303
    assert client.post("/answer", data=form).status_code == 303  # double submit: same answer
    saved = v.poll(refs)
    assert [(a.item_id, a.label, a.worker_id) for a in saved] == [("r0", "neg", "alice")] and saved[0].duration_s <= 1.5


def test_suggestions_are_shown_when_enabled_but_never_for_gold_or_a_reask(text_project):
    v = text_project.vendor
    first, gold, disputed = text_project.pool.ids[:3].tolist()
    v.submit([Task(item_id=first, round=0, batch_id="a", replicas=1, reward=0.01),
              Task(item_id=gold, round=0, batch_id="a", replicas=1, reward=0.01, is_gold=True),
              Task(item_id=disputed, round=0, batch_id="a", replicas=1, reward=0.01, exclude_workers=["bob", "carl"])],
             batch_id="a")
    token = v.add_annotator("alice")
    client = TestClient(create_app(v, suggest=lambda task: ("pos", 0.83)), follow_redirects=False)
    client.get(f"/?token={token}")
    assert "Model suggests <b>pos</b> (83%)" in client.get("/").text  # first is on alice's screen
    v.answer("alice", "a", first, "pos")
    page = client.get("/").text
    assert f'data-item="{gold}"' in page and "Model suggests" not in page
    v.answer("alice", "a", gold, "pos")
    page = client.get("/").text  # bob and carl split on it: the model's guess must not break the tie
    assert f'data-item="{disputed}"' in page and "Model suggests" not in page
    off = LocalVendor({"suggestions": False}, v.context)
    client = TestClient(create_app(off, suggest=lambda task: ("pos", 0.83)), follow_redirects=False)
    client.get(f"/?token={token}")
    assert "Model suggests" not in client.get("/").text


def test_image_routes_serve_only_pool_items(tmp_path):
    cfg = parse_config(small_config(**{"vendor": {"name": "local", "params": {}}, "sampler.initial_size": 3}))
    p = engine.Project.prepare(cfg, str(tmp_path / "digits"))
    engine.run_round(p, 0, until="dispatch")
    v = p.vendor
    token = v.add_annotator("ann")
    client = _client(v)
    client.get(f"/?token={token}")
    page = client.get("/")
    src = re.search(r'<img class="item" id="item-image" alt="[^"]*" src="([^"]+)"', page.text).group(1)
    img = client.get(src)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    batch = src.split("/")[2]
    assert client.get(f"/image/{batch}/{item_key('digits-999999')}").status_code == 404  # not dispatched
    assert client.get(f"/image/{batch}/..%2F..%2Fproject.json").status_code in (403, 404)
    assert client.get("/image/../../project.json").status_code in (403, 404)


def test_cli_adds_annotators_and_prints_a_link(text_project, tmp_path):
    runner = CliRunner()
    where = text_project.store.url
    r = runner.invoke(cli_app, ["annotators", "add", "alice", "--project-dir", where, "--url", "http://h:9/"])
    assert r.exit_code == 0, r.output
    link = re.search(r"http://h:9/\?token=(\S+)", r.stdout)
    assert text_project.vendor.authenticate(link.group(1)) == "alice"
    again = runner.invoke(cli_app, ["annotators", "add", "alice", "--project-dir", where])
    assert again.exit_code == 2 and "error: annotator 'alice' already exists" in again.output
    assert runner.invoke(cli_app, ["annotators", "list", "--project-dir", where]).stdout == "alice\n"

    # a link nobody can open is refused before the one-time token is issued
    for bad in ("not a url", "javascript:alert(1)", "http://h:9/?x=1", "ftp://h/"):
        r = runner.invoke(cli_app, ["annotators", "add", "bob", "--project-dir", where, "--url", bad])
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert r.output.startswith(f"error: --url {bad!r}: expected an http(s) base URL")
    assert runner.invoke(cli_app, ["annotators", "list", "--project-dir", where]).stdout == "alice\n"


def test_adding_annotators_before_the_project_exists_says_how_it_comes_to_exist(tmp_path):
    """The team lead's first instinct is to add the team, then start the loop."""
    r = CliRunner().invoke(cli_app, ["annotators", "add", "alice", "--project-dir", str(tmp_path / "p")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: project {tmp_path / 'p'}: not found (no project.json); `crowdloop run CONFIG -p ")
    assert "start it first: it dispatches round 0 and waits for the annotators you add" in r.output
    assert not (tmp_path / "p").exists()


def test_cli_refuses_projects_of_other_vendors(tmp_path):
    p = engine.Project.prepare(parse_config(small_config()), str(tmp_path / "sim"))
    r = CliRunner().invoke(cli_app, ["annotators", "add", "alice", "--project-dir", p.store.url])
    assert r.exit_code == 2
    assert "vendor.name is 'simulated'; the annotation app serves projects whose vendor is 'local'" in r.output


def test_a_round_collects_what_annotators_answered(text_project):
    p = text_project
    v = p.vendor
    engine.run_round(p, 0, until="dispatch")
    refs = engine.dispatch(p, 0)["refs"]
    truth = dict(zip(p.pool.ids.tolist(), p.pool.y.tolist(), strict=True))
    while (found := v.next_task("ann")) is not None:
        v.answer("ann", found[0].batch_id, found[0].item_id, truth[found[0].item_id], client_seconds=3)
    collected = engine.collect(p, 0)
    assert collected["complete"] and collected["n_annotations"] == 4
    engine.aggregate(p, 0)
    assert engine.pay(p, 0)["n_approved"] == 4
    assert v.open_tasks() == []  # paid batches leave the desk
    assert refs == [{"batch_id": "tiny-r0000"}]


def test_image_files_named_by_the_pool_are_served_and_nothing_else(tmp_path):
    from crowdloop.web import png_from_pixels

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_from_pixels([[0, 5], [5, 0]]))
    (tmp_path / "secret.txt").write_text("not an image")
    kinds = ["img/a.png", "secret.txt", "img/missing.png"]
    rows = ["id,image,f1"] + [f"i{n},{kinds[n % 3]},{n}" for n in range(12)]
    (tmp_path / "pool.csv").write_text("\n".join(rows) + "\n")
    cfg = parse_config(small_config(**{  # no labels, no test split: every file stays in the pool
        "pool": {"source": "csv", "path": str(tmp_path / "pool.csv"), "id_column": "id", "image_column": "image",
                 "classes": ["x", "y"]},
        "vendor": {"name": "local", "params": {}}, "sampler.batch_size": 2, "sampler.initial_size": 2}))
    p = engine.Project.prepare(cfg, str(tmp_path / "project"))
    v = p.vendor
    by_kind = {Path(path).name: item for item, path in zip(p.pool.ids.tolist(), p.pool.content.tolist(), strict=True)}
    assert sorted(by_kind) == ["a.png", "missing.png", "secret.txt"]
    v.submit([Task(item_id=i, round=0, batch_id="b", replicas=1, reward=0.01) for i in by_kind.values()], batch_id="b")
    token = v.add_annotator("ann")
    client = _client(v)
    client.get(f"/?token={token}")
    got = {kind: client.get(f"/image/b/{item_key(item)}") for kind, item in by_kind.items()}
    assert got["a.png"].status_code == 200 and got["a.png"].content == (tmp_path / "img" / "a.png").read_bytes()
    assert got["secret.txt"].status_code == 404  # not an image type
    assert got["missing.png"].status_code == 404  # no such file
    assert all(r.headers["x-content-type-options"] == "nosniff" for r in got.values())


def test_content_columns_are_validated():
    with pytest.raises(ConfigError, match="text_column and image_column: expected at most one content column"):
        parse_config(small_config(pool={"source": "csv", "path": "x.csv", "text_column": "t", "image_column": "i"}))
    with pytest.raises(ConfigError, match="text_column/image_column: expected a csv or parquet pool"):
        parse_config(small_config(**{"pool.text_column": "t"}))


def test_the_example_config_opens_a_local_project(tmp_path):
    from crowdloop.config import load_config
    from tests.conftest import CONFIGS

    cfg = load_config(CONFIGS / "digits-local.yaml")
    p = engine.Project.prepare(cfg, str(tmp_path / "dl"))
    assert isinstance(p.vendor, LocalVendor) and p.vendor.params.suggestions
    r = CliRunner().invoke(cli_app, ["annotators", "add", "me", "--project-dir", p.store.url])
    assert r.exit_code == 0 and "/?token=" in r.stdout


def test_a_restarted_app_or_loop_picks_up_from_the_store(tmp_path):
    clock = Clock()
    v = desk(tmp_path, clock, undo_window_s=5)
    refs = v.submit(tasks(3, replicas=1), batch_id="b0")
    v.answer("ann", "b0", v.next_task("ann")[0].item_id, "cat")
    shown = v.next_task("ann")
    restarted = LocalVendor({"undo_window_s": 5}, v.context, clock=clock)  # e.g. after kill -9
    assert restarted.next_task("ann") == shown  # same item, same start time: the timer keeps running
    assert restarted.progress("ann") == {"answered": 1, "waiting": 2, "items": 3}
    clock.now += 5 + UNDO_MARGIN_S + 1
    assert [a.label for a in restarted.poll(refs)] == ["cat"]
    assert v.submit(tasks(3, replicas=1), batch_id="b0") == refs and len(v.store.list("batches/")) == 1


def test_removing_an_annotator_releases_the_item_on_their_screen(tmp_path):
    """Issue 19.11: a removed annotator's lease kept their item from everybody else for lease_s."""
    clock = Clock()
    v = desk(tmp_path, clock, lease_s=600)
    v.submit(tasks(2, replicas=1), batch_id="b0")
    for name in ("ann", "bob"):
        v.add_annotator(name)
    assert v.next_task("ann")[0].item_id == "item-0"
    assert v.next_task("bob")[0].item_id == "item-1"  # item-0 is on ann's screen
    v.remove_annotator("ann")  # what `crowdloop annotators remove ann` runs
    clock.now += 1  # long before ann's lease would have run out
    v.skip("bob", "b0", "item-1")
    assert v.next_task("bob")[0].item_id == "item-0"  # released with ann's link
    assert v.next_task("cat")[0].item_id == "item-1"


# -- work after the deadline (issue 15 follow-up: nobody works for nothing) ------------------------------
def deadline_desk(tmp_path: Path, clock: Clock, timeout_s: float = 60.0, **params) -> LocalVendor:
    import dataclasses

    ctx = dataclasses.replace(make_context(LocalStore(tmp_path / "p"), name="local"), collect_timeout_s=timeout_s)
    return LocalVendor({"undo_window_s": 30, **params}, ctx, clock=clock)


def test_near_the_deadline_no_item_is_offered_and_every_answer_the_desk_kept_is_collected(tmp_path):
    """On main the desk kept offering a batch's items after collect.timeout_s, the loop's last poll
    skipped answers younger than the undo window, and the batch closed only when paid: answers
    stored then were never collected, never paid (bob's and carol's below)."""
    clock = Clock()
    v = deadline_desk(tmp_path, clock)
    refs = v.submit(tasks(3), batch_id="b0")
    for who in ("alice", "bob", "carol"):
        v.add_annotator(who)
    clock.now += 10
    shown, _ = v.next_task("alice")
    v.answer("alice", "b0", shown.item_id, "cat")
    clock.now += 10  # 20 s after dispatch: carol's item is on her screen
    on_screen, _ = v.next_task("carol")
    clock.now += 20  # 40 s: less than half the 60 s window (< lease_s) is left: nothing new is offered
    assert v.next_task("bob") is None and v.progress("bob")["waiting"] == 0
    clock.now += 21  # 61 s: past the deadline
    assert v.next_task("bob") is None
    again, shown_at = v.next_task("carol")  # carol keeps her item (a reload shows it again) ...
    assert again.item_id == on_screen.item_id and shown_at == 1_800_000_020.0
    v.answer("carol", "b0", on_screen.item_id, "dog")  # ... and may answer it until the loop's last poll
    clock.now += 1
    closing = v.poll(refs)  # the loop's poll after the deadline: closes the batch, then reads everything
    assert sorted(a.worker_id for a in closing) == ["alice", "carol"]  # carol's answer is 1 s old: no undo window now
    assert v.undo("carol") is None  # nothing can be taken back from a closed batch
    with pytest.raises(VendorDataError, match=r"closed .*not stored and is not paid"):
        v.answer("bob", "b0", "item-2", "cat")
    assert len(v.store.list("answers/b0/")) == 2  # every answer the desk kept is one the loop collected
    v.acknowledge(closing, accept=True)
    assert acknowledged(v.store) == {a.assignment_id for a in closing}  # both are paid with the batch


def test_a_batch_nobody_answered_leaves_the_desk_at_its_deadline(tmp_path):
    """On main a batch was closed only by acknowledge, which names no batch when nothing came: its
    items stayed on offer for good, and whatever was answered then was never collected nor paid."""
    clock = Clock()
    v = deadline_desk(tmp_path, clock, timeout_s=5)
    refs = v.submit(tasks(2), batch_id="b0")
    v.add_annotator("alice")
    clock.now += 6
    assert v.poll(refs) == []
    v.acknowledge([], accept=True)  # the pay step of an empty round
    clock.now += 3600
    assert v.open_tasks() == [] and v.next_task("alice") is None
    assert v.store.exists("closed/b0.json")


def test_the_app_shows_nothing_new_once_the_batch_deadline_passed(tmp_path):
    clock = Clock()
    v = deadline_desk(tmp_path, clock, timeout_s=30)
    v.submit(tasks(2), batch_id="b0")
    clients = {}
    for who in ("alice", "bob"):
        clients[who] = TestClient(create_app(v), base_url="http://testserver", follow_redirects=False)
        clients[who].get(f"/?token={v.add_annotator(who)}")
    assert 'name="label"' in clients["alice"].get("/").text  # alice's item is on her screen before the deadline
    clock.now += 31
    page = clients["bob"].get("/").text
    assert "0 answered · 0 of 2 items waiting" in page and 'name="label"' not in page  # nothing new for bob
    assert 'name="label"' in clients["alice"].get("/").text  # alice may still answer the item she holds


def test_the_workforce_is_the_annotators_once_there_are_any(tmp_path):
    """Gold planning counts on it (crowdloop.engine.quality.gold_plan): an item is asked only while
    enough annotators have not answered it."""
    v = desk(tmp_path)
    assert v.workforce is None  # nobody added yet: the team's size is not known
    v.add_annotator("ana")
    v.add_annotator("ben")
    assert v.workforce == 2
