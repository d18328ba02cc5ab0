"""Image pools reach vendors whose workers open images by URL (issue 17, images by URL).

S3 image pools become presigned URLs of their own objects; local image folders are uploaded
once, content-addressed, to the project's S3 store, or refused with one line when the store is
local. MTurk's HTML carries the URL, checked by botocore's model (the fake answers after
botocore validated and serialized the request); fetching it gives the image back.
"""

from __future__ import annotations

import html
import re
import urllib.request
from urllib.parse import parse_qs, urlparse

import boto3
import pytest

from crowdloop import engine, keys
from crowdloop.config import parse_config
from crowdloop.engine import Project
from crowdloop.errors import ConfigError
from crowdloop.storage import read_json
from tests.conftest import small_config
from tests.models.test_images import _folder, _png
from tests.vendors.mturk_fake import FakeMTurk


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDLOOP_CACHE_DIR", str(tmp_path / "cache"))


def image_config(pool_path: str, **overrides) -> dict:
    return small_config(**{
        "project": "pics", "pool": {"source": "images", "path": pool_path, "image_mode": "gray", "test_size": 0.25},
        "sampler.initial_size": 4, "sampler.batch_size": 2, "consensus.redundancy": 1,
        "vendor": {"name": "mturk", "params": {"max_requests_per_second": 100, "image_url_expiry_s": 5 * 86400,
                                               "lifetime_s": 86400}},
        **overrides})


def urls_in_hits(fake: FakeMTurk) -> list[str]:
    questions = [body["Question"] for op, body in fake.requests if op == "CreateHIT"]
    return [html.unescape(u) for q in questions for u in re.findall(r'<img class="item" src="([^"]+)"', q)]


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read(), resp.headers.get("Content-Type", "")


def test_an_s3_image_pool_reaches_mturk_as_presigned_urls(tmp_path, fake, s3_endpoint, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    originals = {}
    for c, cls in enumerate(("cat", "dog")):
        for i in range(6):
            originals[f"{cls}/{i}.png"] = _png(40 * c + i)
            s3.put_object(Bucket=s3_bucket, Key=f"imgs/{cls}/{i}.png", Body=originals[f"{cls}/{i}.png"])
    p = Project.prepare(parse_config(image_config(f"s3://{s3_bucket}/imgs?endpoint_url={s3_endpoint}")),
                        str(tmp_path / "p"))
    engine.run_round(p, 0, until="dispatch")
    engine.dispatch(p, 0)
    urls = urls_in_hits(fake)
    items = [t["item_id"] for t in read_json(p.store, keys.round_key(0, keys.DISPATCH))["tasks"]]
    assert len(urls) == len(items) == 4
    for item, url in zip(items, urls, strict=True):
        parsed = urlparse(url)
        assert parsed.path == f"/{s3_bucket}/imgs/{item}" and parse_qs(parsed.query)["X-Amz-Expires"] == [str(5 * 86400)]
        body, content_type = fetch(url)
        assert body == originals[item] and content_type == "image/png"
    assert not p.store.list(keys.MEDIA)  # the pool's own objects: nothing uploaded


def test_a_local_image_folder_is_uploaded_once_content_addressed_to_an_s3_store(tmp_path, fake, s3_endpoint, s3_bucket):
    root = _folder(tmp_path / "imgs", n=6)
    (root / "dog" / "copy.png").write_bytes((root / "cat" / "0.png").read_bytes())  # the same content twice
    location = f"s3://{s3_bucket}/projects/pics?endpoint_url={s3_endpoint}"
    p = Project.prepare(parse_config(image_config(str(root), **{"sampler.initial_size": 9})), location)
    engine.run_round(p, 0, until="dispatch")
    engine.dispatch(p, 0)
    items = [t["item_id"] for t in read_json(p.store, keys.round_key(0, keys.DISPATCH))["tasks"]]
    urls = urls_in_hits(fake)
    assert len(urls) == len(items) == 9
    uploaded = p.store.list(keys.MEDIA)
    files = {item: (root / item).read_bytes() for item in items}
    assert len(uploaded) == len(set(files.values())) <= 9  # one object per distinct content
    import hashlib

    for item, url in zip(items, urls, strict=True):
        digest = hashlib.sha256(files[item]).hexdigest()
        assert urlparse(url).path == f"/{s3_bucket}/projects/pics/{keys.MEDIA}{digest}.png"
        assert fetch(url)[0] == files[item]
    before = sorted(uploaded)
    again = p.vendor.context.image_url(items[0], 3600)  # asked again: presigned again, never uploaded again
    assert sorted(p.store.list(keys.MEDIA)) == before and fetch(again)[0] == files[items[0]]


def test_a_local_image_folder_with_a_local_store_is_refused_before_round_0(tmp_path):
    root = _folder(tmp_path / "imgs", n=3)
    with pytest.raises(ConfigError) as caught:
        Project.prepare(parse_config(image_config(str(root))), str(tmp_path / "p"))
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and message.startswith("pool.path: vendor 'mturk' shows images by URL")
    assert "is not on S3" in message and not (tmp_path / "p").exists()
    # the local annotation app serves the files itself: no URL needed
    Project.prepare(parse_config(image_config(str(root), vendor={"name": "local", "params": {}})), str(tmp_path / "l"))


def test_image_url_expiry_must_outlive_the_hit():
    with pytest.raises(ConfigError, match="image_url_expiry_s=3600: expected more than lifetime_s"):
        from crowdloop.vendor import parse_params
        from crowdloop.vendors.mturk import MTurkParams

        parse_params(MTurkParams, {"image_url_expiry_s": 3600, "lifetime_s": 3600}, vendor="mturk")


def login(page, base: str) -> None:
    from tests.vendors import label_studio_server as lss

    page.goto(f"{base}/user/login/")
    page.fill("input[name=email]", lss.USERNAME)
    page.fill("input[name=password]", lss.PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit], input[type=submit]")


@pytest.mark.slow
def test_an_s3_image_pool_renders_in_label_studio_in_chromium(tmp_path, label_studio, browser, s3_endpoint, s3_bucket,
                                                              monkeypatch):
    """The labeling page of a real Label Studio, in real Chromium, shows the image from its
    presigned URL, served by the local S3 test server."""
    from label_studio_sdk import LabelStudio

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for c, cls in enumerate(("cat", "dog")):
        for i in range(5):
            s3.put_object(Bucket=s3_bucket, Key=f"photos/{cls}/{i}.png", Body=_png(40 * c + i, size=48))
    cfg = image_config(f"s3://{s3_bucket}/photos?endpoint_url={s3_endpoint}", project="lsimages",
                       vendor={"name": "label_studio", "params": {"image_url_expiry_s": 2 * 86400}},
                       **{"sampler.initial_size": 2})
    p = Project.prepare(parse_config(cfg), str(tmp_path / "p"))
    engine.run_round(p, 0, until="dispatch")
    batch = read_json(p.vendor.store, f"batches/{p.batch_id(0)}.json")
    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    item, task_id = sorted(batch["tasks"].items())[0]
    url = ls.tasks.get(str(task_id)).data["image"]
    query = parse_qs(urlparse(url).query)
    assert url.startswith(f"{s3_endpoint}/{s3_bucket}/photos/{item}?") and query["X-Amz-Expires"] == [str(2 * 86400)]
    assert "X-Amz-Signature" in query
    page = browser.new_page()
    served = []
    page.on("response", lambda r: served.append((r.url, r.status)) if r.url == url else None)
    login(page, label_studio.url)
    page.goto(f"{label_studio.url}/projects/{batch['project_id']}/data?task={task_id}")
    # the labeling editor's image (the task list shows a small thumbnail of it too): loaded and drawn large
    found = page.wait_for_function(
        """url => { const i = Array.from(document.querySelectorAll('img')).find(i => i.src === url && i.complete
                        && i.naturalWidth > 0 && i.getBoundingClientRect().width > 200);
                    return i && [i.naturalWidth, Math.round(i.getBoundingClientRect().width)]; }""",
        arg=url, timeout=120_000).json_value()
    assert found[0] == 48 and (url, 200) in served  # the original 48 px image, from the S3 server, by its URL
    page.screenshot(path=str(tmp_path / "label_studio_image.png"))
    page.close()
