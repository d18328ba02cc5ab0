"""The annotation app against hostile requests: fuzzed posts, forged origins, bad tokens, traversal.

After every request the store must hold only valid answers: an ``Annotation`` per file, for
an item of the batch it is filed under, a known class, the annotator the cookie belongs to.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdloop.records import Annotation, Task
from crowdloop.storage.local import LocalStore
from crowdloop.testing import make_context
from crowdloop.vendor import VendorContext
from crowdloop.vendors.local import LocalVendor, item_key
from crowdloop.vendors.local_app import COOKIE, FORBIDDEN, create_app
from crowdloop.web import MAX_FORM_BYTES, csrf_for, png_from_pixels
from tests.vendors.app_server import raw_request, running

CLASSES = ("cat", "dog", "bird")
ITEMS = [f"item-{n}" for n in range(4)]


def _desk(root: Path) -> LocalVendor:
    vendor = LocalVendor({"undo_window_s": 30}, make_context(LocalStore(root), name="local", classes=CLASSES))
    vendor.submit([Task(item_id=i, round=0, batch_id="b0", replicas=2, reward=0.02) for i in ITEMS], batch_id="b0")
    return vendor


def assert_store_is_clean(vendor: LocalVendor, annotators: set[str]) -> None:
    """Every answer/skip file is a valid record of a dispatched item by a known annotator."""
    keys = {item_key(i): i for i in ITEMS}
    for key in vendor.store.list("answers/"):
        _, batch, name = key.split("/")
        digest, worker = name[: -len(".json")].split(".", 1)
        a = Annotation.model_validate_json(vendor.store.read_bytes(key))
        assert (a.batch_id, a.item_id, a.worker_id) == (batch, keys[digest], worker)
        assert batch == "b0" and a.label in CLASSES and worker in annotators and a.vendor == "local"
    for key in vendor.store.list("skips/"):
        _, batch, name = key.split("/")
        assert batch == "b0" and name.split(".")[0] in keys and name.split(".")[1] in annotators


@pytest.fixture(scope="module")
def fuzz_desk(tmp_path_factory) -> tuple[LocalVendor, TestClient, str]:
    vendor = _desk(tmp_path_factory.mktemp("fuzzdesk"))
    token = vendor.add_annotator("alice")
    client = TestClient(create_app(vendor), base_url="http://testserver", follow_redirects=False)
    assert client.get(f"/?token={token}").status_code == 303
    return vendor, client, token


_text = st.one_of(st.text(max_size=30), st.sampled_from(["", "\x00", "b0", "../b0", "%2e%2e", "a" * 5000, "nan", "-1",
                                                         "1e999", "inf", "<script>", "cat\x00", " cat"]))
_fields = st.fixed_dictionaries({}, optional={
    "csrf": st.one_of(st.just("VALID"), _text), "batch_id": st.one_of(st.just("b0"), _text),
    "item_id": st.one_of(st.sampled_from(ITEMS), _text), "label": st.one_of(st.sampled_from(CLASSES), _text),
    "client_ms": st.one_of(st.integers(-10**12, 10**12).map(str), _text),
}).flatmap(lambda d: st.dictionaries(st.text(max_size=8), _text, max_size=3).map(lambda extra: {**extra, **d}))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=st.sampled_from(["/answer", "/skip", "/undo"]), fields=_fields,
       encoding=st.sampled_from(["form", "json", "multipart", "raw", "repeated"]),
       raw=st.binary(max_size=300), same_origin=st.booleans())
def test_fuzzed_posts_answer_303_400_403_or_413_and_store_nothing_bad(fuzz_desk, route, fields, encoding, raw, same_origin):
    vendor, client, token = fuzz_desk
    fields = {k: (csrf_for(token) if v == "VALID" else v) for k, v in fields.items()}
    headers = {"Origin": "http://testserver" if same_origin else "http://evil.example"}
    if encoding == "form":
        r = client.post(route, data=fields, headers=headers)
    elif encoding == "json":
        r = client.post(route, json=fields, headers=headers)
    elif encoding == "multipart":
        r = client.post(route, files={k: (None, v.encode("utf-8", "surrogatepass")) for k, v in fields.items()},
                        headers=headers)
    elif encoding == "repeated":  # the same field twice: only the first counts, as in the page's form
        body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in list(fields.items()) * 2)
        r = client.post(route, content=body.encode("utf-8", "surrogatepass"), headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"})
    else:
        r = client.post(route, content=raw, headers={**headers, "Content-Type": "application/octet-stream"})
    assert r.status_code in (303, 400, 403, 413), r.text[:300]
    assert "Traceback" not in r.text and len(r.text.splitlines()) <= 1, r.text[:300]
    if r.status_code == 403:  # the one refusal page, whatever was wrong
        assert r.text == FORBIDDEN
    if r.status_code == 303:
        assert same_origin and encoding in ("form", "repeated") and fields.get("csrf") == csrf_for(token)
    assert_store_is_clean(vendor, {"alice"})


def test_oversized_and_undecodable_forms_are_refused(fuzz_desk):
    vendor, client, token = fuzz_desk
    form = {"csrf": csrf_for(token), "batch_id": "b0", "item_id": ITEMS[0], "label": "cat"}
    big = {**form, "pad": "x" * MAX_FORM_BYTES}
    too_large = client.post("/answer", data=big)
    assert too_large.status_code == 413 and f"larger than the {MAX_FORM_BYTES} bytes" in too_large.text
    assert client.post("/answer", content=b"csrf=\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}
                       ).status_code == 403
    many = "&".join(f"f{n}=1" for n in range(50)) + "&" + "&".join(f"{k}={v}" for k, v in form.items())
    assert client.post("/answer", content=many.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}
                       ).status_code == 403
    assert_store_is_clean(vendor, {"alice"})


# -- tokens and cross-site posts: the matrix ------------------------------------------------------
@pytest.fixture
def desk_client(tmp_path) -> tuple[LocalVendor, TestClient, dict[str, str]]:
    vendor = _desk(tmp_path)
    tokens = {name: vendor.add_annotator(name) for name in ("alice", "bob", "gone")}
    vendor.remove_annotator("gone")
    return vendor, TestClient(create_app(vendor), base_url="http://testserver", follow_redirects=False), tokens


TOKEN_CASES = {
    "no cookie": None, "wrong": "x" * 32, "empty": "", "revoked": "@gone", "too long": "a" * 5000,
    "NUL": "@alice\x00", "alice with a suffix": "@alice!", "alice's token hash": "#alice",
}


@pytest.mark.parametrize("case", TOKEN_CASES)
@pytest.mark.parametrize("method, url", [("GET", "/"), ("POST", "/answer"), ("POST", "/skip"), ("POST", "/undo"),
                                         ("GET", f"/image/b0/{item_key(ITEMS[0])}"), ("GET", "/anything")])
def test_every_route_needs_a_valid_token(desk_client, case, method, url):
    vendor, client, tokens = desk_client
    raw = TOKEN_CASES[case]
    if raw is not None and raw.startswith("@"):
        raw = tokens[raw[1:].rstrip("!\x00")] + raw[len(raw.rstrip("!\x00")):]
    elif raw is not None and raw.startswith("#"):
        raw = json.loads(vendor.store.read_bytes(f"annotators/{raw[1:]}.json"))["token_sha256"]
    headers = {} if raw is None else {"Cookie": f"{COOKIE}={quote(raw) if chr(0) in raw else raw}"}
    form = {"csrf": csrf_for(raw or ""), "batch_id": "b0", "item_id": ITEMS[0], "label": "cat"}
    client.cookies.clear()
    r = client.request(method, url, headers=headers, data=form if method == "POST" else None)
    assert r.status_code == 403 and "403 Forbidden" in r.text
    assert client.get(f"/?token={quote(raw or '')}").status_code == 403 if raw else True
    assert vendor.store.list("answers/") == [] and vendor.store.list("skips/") == []


ORIGIN_CASES = [  # (Origin, Referer, Sec-Fetch-Site, allowed)
    (None, None, None, True),  # e.g. curl, or an old browser without Origin on same-origin posts
    ("http://testserver", None, "same-origin", True),
    (None, "http://testserver/", None, True),
    (None, "http://testserver/?notice=saved", "same-origin", True),
    ("http://evil.example", None, None, False),
    ("http://evil.example", None, "cross-site", False),
    ("null", None, None, False),  # sandboxed iframe, data: URL, file:
    ("http://testserver.evil.example", None, None, False),
    ("http://testserver:8080", None, None, False),
    ("https://testserver", None, None, False),
    (None, "http://evil.example/page", None, False),
    (None, "http://testserver.evil.example/", None, False),
    ("http://testserver", None, "same-site", False),  # a sibling subdomain
    ("http://testserver", None, "cross-site", False),
    (None, None, "cross-site", False),
    ("http://testserver", "http://evil.example/", "same-origin", True),  # Origin decides when present
]


@pytest.mark.parametrize("origin, referer, fetch_site, allowed", ORIGIN_CASES)
@pytest.mark.parametrize("csrf", ["own", "missing", "other annotator's", "wrong"])
def test_posts_need_this_site_and_the_annotators_csrf_token(desk_client, origin, referer, fetch_site, allowed, csrf):
    vendor, client, tokens = desk_client
    assert client.get(f"/?token={tokens['alice']}").status_code == 303
    assert f'data-item="{ITEMS[0]}"' in client.get("/").text  # on alice's screen now
    form = {"batch_id": "b0", "item_id": ITEMS[0], "label": "dog"}
    if csrf != "missing":
        form["csrf"] = {"own": csrf_for(tokens["alice"]), "other annotator's": csrf_for(tokens["bob"]),
                        "wrong": "0" * 32}[csrf]
    headers = {k: v for k, v in (("Origin", origin), ("Referer", referer), ("Sec-Fetch-Site", fetch_site)) if v}
    r = client.post("/answer", data=form, headers=headers)
    ok = allowed and csrf == "own"
    assert r.status_code == (303 if ok else 403)
    assert len(vendor.store.list("answers/")) == (1 if ok else 0)
    assert_store_is_clean(vendor, {"alice"})


# -- image routes: traversal in every spelling, over raw HTTP to a real uvicorn ------------------
@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    (root / "img").mkdir()
    (root / "img" / "a.png").write_bytes(png_from_pixels([[0, 5], [5, 0]]))
    (root / "secret.png").write_bytes(b"\x89PNG SECRET-IMAGE-NOT-IN-THE-POOL")
    (root / "secret.txt").write_text("SECRET-TEXT")
    ctx = make_context(LocalStore(root / "project"), name="local", classes=CLASSES)
    paths = {"pic": str(root / "img" / "a.png")}
    ctx = VendorContext(**{**ctx.__dict__, "item_payload": lambda i: {"kind": "image", "path": paths.get(i, "")}})
    vendor = LocalVendor({}, ctx)
    vendor.submit([Task(item_id="pic", round=0, batch_id="b0", replicas=1, reward=0.01)], batch_id="b0")
    token = vendor.add_annotator("alice")
    with running(create_app(vendor)) as base:
        yield base, {"Cookie": f"{COOKIE}={token}"}, root


_KEY = item_key("pic")
TRAVERSAL = [
    "/image/b0/../../secret.txt", "/image/../../secret.png", "/image/b0/..%2F..%2Fsecret.png",
    "/image/b0/%2e%2e%2f%2e%2e%2fsecret.png", "/image/%2e%2e/" + _KEY, "/image/..%2fbatches%2fb0/" + _KEY,
    "/image/b0/..%5C..%5Csecret.png", "/image/b0\\..\\..\\secret.png", "/image/b0/%00", "/image/b0/" + _KEY + "%00.png",
    "/image/%2Fetc%2Fpasswd/" + _KEY, "/image//etc/passwd", "/image/b0//" + _KEY, "/image/b0/%252e%252e%252fsecret.png",
    "/image/b0/" + quote("{root}/secret.png", safe=""), "/image/" + quote("{root}/project/vendor/local/batches/b0", safe="")
    + "/" + _KEY, "/image/b0/" + _KEY + "/../../secret.png", "/image/b0/" + _KEY.upper(), "/image/b0/" + _KEY + "%2F..",
    "/static/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/image/b0/..\x00/secret.png",
]


@pytest.mark.parametrize("target", TRAVERSAL)
def test_image_routes_refuse_traversal(image_server, target):
    base, cookie, root = image_server
    status, _headers, body = raw_request(base, "GET", target.replace("{root}", str(root)), headers=cookie)
    assert status in (400, 403, 404), (status, body[:100])
    assert b"SECRET" not in body and b"root:" not in body


def test_the_named_image_is_still_served(image_server):
    base, cookie, root = image_server
    status, headers, body = raw_request(base, "GET", f"/image/b0/{_KEY}", headers=cookie)
    assert status == 200 and body == (root / "img" / "a.png").read_bytes()
    assert headers["content-type"] == "image/png" and headers["x-content-type-options"] == "nosniff"
    assert raw_request(base, "GET", f"/image/b0/{_KEY}")[0] == 403  # the same URL without the cookie


def test_answers_for_items_not_on_screen_beyond_the_replicas_or_after_payment_are_refused(tmp_path):
    from crowdloop.errors import VendorDataError

    clock = {"now": 1_800_000_000.0}
    vendor = LocalVendor({"undo_window_s": 30, "lease_s": 60},
                         make_context(LocalStore(tmp_path), name="local", classes=CLASSES), clock=lambda: clock["now"])
    vendor.submit([Task(item_id=i, round=0, batch_id="b0", replicas=2, reward=0.02) for i in ITEMS], batch_id="b0")
    refs = [{"batch_id": "b0"}]
    assert vendor.next_task("ann")[0].item_id == ITEMS[0]  # item-0 is on ann's screen
    with pytest.raises(VendorDataError, match=r"not on annotator 'bob'.s screen"):
        vendor.answer("bob", "b0", ITEMS[0], "cat")  # a post by hand: never shown to bob
    assert vendor.next_task("bob")[0].item_id == ITEMS[0]  # the second slot of item-0
    assert vendor.next_task("eve")[0].item_id == ITEMS[1]  # item-0's slots are on screens
    with pytest.raises(VendorDataError, match=r"not on annotator 'eve'.s screen"):
        vendor.answer("eve", "b0", ITEMS[0], "dog")
    clock["now"] += 5
    vendor.answer("ann", "b0", ITEMS[0], "bird")
    assert vendor.answer("bob", "b0", ITEMS[0], "cat").duration_s == 5.0
    assert vendor.answer("bob", "b0", ITEMS[0], "dog").label == "cat"  # a repeat returns the first answer
    # eve's lease on item-1 runs out while two others take both its slots: her late answer is refused
    clock["now"] += 61
    for other in ("fay", "gus"):
        assert vendor.next_task(other)[0].item_id == ITEMS[1]
        vendor.answer(other, "b0", ITEMS[1], "cat")
    with pytest.raises(VendorDataError, match=r"item 'item-1' already has its 2 answer\(s\)"):
        vendor.answer("eve", "b0", ITEMS[1], "dog")
    clock["now"] += 40
    anns = LocalVendor({"undo_window_s": 0}, vendor.context, clock=lambda: clock["now"]).poll(refs)
    assert sorted(a.worker_id for a in anns) == ["ann", "bob", "fay", "gus"]
    vendor.acknowledge(anns, accept=True)  # the loop paid: the batch is closed
    with pytest.raises(VendorDataError, match="batch 'b0' is closed"):
        vendor.answer("carl", "b0", ITEMS[2], "cat")
    assert_store_is_clean(vendor, {"ann", "bob", "fay", "gus"})


# -- issue 19, points 1 and 10: time is what the server saw; huge posts are refused unread ------------
def test_posts_for_items_never_shown_pay_nothing_and_time_is_what_the_server_saw(tmp_path):
    """Issue 19.1: answers posted without the item on screen (and without the page's timer) used
    to be booked at the full lease (600 s) each, and the top-up bonus paid for it."""
    import time

    import httpx

    vendor = _desk(tmp_path)  # lease_s 600 by default
    token = vendor.add_annotator("mallory")
    with running(create_app(vendor)) as base, httpx.Client(base_url=base, follow_redirects=False) as client:
        assert client.get(f"/?token={token}").status_code == 303
        headers = {"Origin": base}
        for item in ITEMS:  # never shown to mallory, no client_ms
            r = client.post("/answer", data={"csrf": csrf_for(token), "batch_id": "b0", "item_id": item, "label": "cat"},
                            headers=headers)
            assert r.status_code == 400 and "not on annotator" in r.text
        assert vendor.store.list("answers/") == []
        page = client.get("/")  # the honest way: the item is leased to mallory now
        shown = page.text.split('data-item="')[1].split('"')[0]
        time.sleep(0.3)
        r = client.post("/answer", data={"csrf": csrf_for(token), "batch_id": "b0", "item_id": shown, "label": "dog"},
                        headers=headers)
        assert r.status_code == 303
    (key,) = vendor.store.list("answers/")
    seconds = Annotation.model_validate_json(vendor.store.read_bytes(key)).duration_s
    assert 0.3 <= seconds < 5.0  # from the lease to the answer, not the 600 s lease


def _annotate_server(tmp_path: Path):
    """``crowdloop annotate`` as a subprocess over a local-vendor project with one annotator."""
    from crowdloop.config import parse_config
    from crowdloop.engine import Project
    from tests.conftest import small_config
    from tests.vendors.app_server import start_annotate

    project = Project.prepare(parse_config(small_config(vendor={"name": "local", "params": {}})), str(tmp_path / "p"))
    token = project.vendor.add_annotator("mallory")
    base, proc = start_annotate(str(tmp_path / "p"), tmp_path / "annotate.log")
    return base, proc, token


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _http_post(base: str, head: list[str], body_chunks, *, timeout: float = 20.0) -> tuple[int, bytes]:
    """A POST over a raw socket: headers, then ``body_chunks`` as long as the server reads them; the reply."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.sendall(("\r\n".join(["POST /answer HTTP/1.1", f"Host: {host}:{port}", *head]) + "\r\n\r\n").encode())
        try:
            for chunk in body_chunks:
                conn.sendall(chunk)
        except OSError:
            pass  # the server stopped reading and closed: what a refused upload looks like
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except OSError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def test_huge_posts_are_refused_by_content_length_and_by_a_streamed_limit(tmp_path):
    """Issue 19.10: a 200 MB post used to be read whole into memory and then answered 403
    ("a valid annotator link is needed")."""
    base, proc, token = _annotate_server(tmp_path)
    try:
        cookie = f"Cookie: {COOKIE}={token}"
        common = [cookie, f"Origin: {base}", "Content-Type: application/x-www-form-urlencoded", "Connection: close"]
        before = _rss_mb(proc.pid)
        # declared 200 MB: refused from the headers, before a byte of the body is sent
        status, reply = _http_post(base, [*common, f"Content-Length: {200 * 1024 * 1024}"], [])
        assert status == 413 and b"larger than the 4096 bytes" in reply and b"valid annotator link" not in reply
        # no Content-Length (chunked): read up to the limit, then refused; 64 MB offered
        chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
        status, reply = _http_post(base, [*common, "Transfer-Encoding: chunked"], (chunk for _ in range(1024)))
        assert status == 413 and b"larger than the 4096 bytes" in reply
        grown = _rss_mb(proc.pid) - before
        assert grown < 16, f"the server grew by {grown:.0f} MB for posts it refused"
        assert proc.poll() is None  # still serving
    finally:
        proc.terminate()
        proc.wait(timeout=10)
