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
from crowdloop.vendors.local_app import COOKIE, MAX_FORM_BYTES, create_app, csrf_for, png_from_pixels
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
def test_fuzzed_posts_answer_303_400_or_403_and_store_nothing_bad(fuzz_desk, route, fields, encoding, raw, same_origin):
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
    assert r.status_code in (303, 400, 403), r.text[:300]
    assert ("Traceback" not in r.text and len(r.text.splitlines()) <= 1) or r.status_code == 403
    if r.status_code == 303:
        assert same_origin and encoding in ("form", "repeated") and fields.get("csrf") == csrf_for(token)
    assert_store_is_clean(vendor, {"alice"})


def test_oversized_and_undecodable_forms_are_refused(fuzz_desk):
    vendor, client, token = fuzz_desk
    form = {"csrf": csrf_for(token), "batch_id": "b0", "item_id": ITEMS[0], "label": "cat"}
    big = {**form, "pad": "x" * MAX_FORM_BYTES}
    assert client.post("/answer", data=big).status_code == 403
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


def test_answers_beyond_the_replicas_or_after_payment_are_refused(tmp_path):
    from crowdloop.errors import VendorDataError

    vendor = _desk(tmp_path)  # 4 items x 2 replicas
    refs = [{"batch_id": "b0"}]
    assert vendor.next_task("ann")[0].item_id == ITEMS[0]  # item-0 is on ann's screen
    vendor.answer("bob", "b0", ITEMS[0], "cat")  # a post by hand, for a slot still free
    with pytest.raises(VendorDataError, match=r"item 'item-0' already has its 2 answer\(s\) or they are on other"):
        vendor.answer("eve", "b0", ITEMS[0], "dog")  # the second slot is ann's
    vendor.answer("ann", "b0", ITEMS[0], "bird")  # ann keeps her slot
    with pytest.raises(VendorDataError, match="already has its 2 answer"):
        vendor.answer("eve", "b0", ITEMS[0], "dog")
    assert vendor.answer("bob", "b0", ITEMS[0], "dog").label == "cat"  # a repeat returns the first answer
    anns = list(LocalVendor({"undo_window_s": 0}, vendor.context).poll(refs))
    assert sorted(a.worker_id for a in anns) == ["ann", "bob"]
    vendor.acknowledge(anns, accept=True)  # the loop paid: the batch is closed
    with pytest.raises(VendorDataError, match="batch 'b0' is closed"):
        vendor.answer("carl", "b0", ITEMS[1], "cat")
    assert_store_is_clean(vendor, {"ann", "bob"})
