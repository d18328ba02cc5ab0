"""Images for vendors whose workers open them by URL (capability ``images_by_url``).

MTurk workers and Label Studio's browser cannot open a file on the machine running the loop, so
such a vendor gets ``context.image_url(item_id, expires_s)``: an S3 presigned URL of the image.

* An image pool read from S3 (``pool.path: s3://bucket/prefix``): the item's own object.
* A local image folder (or a CSV/Parquet image column): the file is uploaded once to the
  project's store under ``media/<sha256><.ext>`` — content-addressed, so a file is stored once
  however often it is asked, and a rerun after a crash finds it — which needs the project store
  on S3. A project whose images cannot get a URL is refused before round 0 with one line.

A presigned URL is valid for the ``expires_s`` the vendor asks for (longer than its task's
lifetime; at most 7 days, the limit of SigV4 presigning) and only for reading that one object.
Credentials come from boto3's chain like the S3 store's; temporary credentials end a URL's
validity when they expire.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from crowdloop import keys
from crowdloop.config import PoolConfig
from crowdloop.errors import ConfigError, RecordExistsError, StoreError
from crowdloop.storage import Store, join_url

MAX_EXPIRY_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week


def pool_on_s3(pool: PoolConfig) -> bool:
    """An image-folder pool whose files live under an S3 prefix (item ids are the object keys)."""
    return pool.source == "images" and str(pool.path or "").startswith("s3://")


def store_on_s3(store: Store | str) -> bool:
    """Whether a project store (or its URL) is on S3."""
    return (store if isinstance(store, str) else store.url).startswith("s3://")


def check_reachable(pool: PoolConfig, store_url: str, content_kind: str | None, vendor: str) -> None:
    """One line if image items would have no URL: image files neither on S3 nor uploadable to it."""
    if content_kind != "image" or pool_on_s3(pool) or store_on_s3(store_url):
        return
    raise ConfigError(
        f"pool.path: vendor {vendor!r} shows images by URL, but the images of {pool.path!r} are local files and the "
        f"project store {store_url} is not on S3; put the images under s3://bucket/prefix (pool.path) or use an "
        "s3:// project store (storage.url), where they are uploaded once, content-addressed")


class ImageURLs:
    """Presigned URLs of a project's image items (see the module docstring)."""

    def __init__(self, pool: PoolConfig, store: Store, item_payload: Callable[[str], dict[str, Any]]) -> None:
        self.pool = pool
        self.store = store
        self.item_payload = item_payload
        self._uploaded: dict[str, str] = {}  # local path -> object URL, for this process
        self._lock = threading.Lock()

    def __call__(self, item_id: str, expires_s: float) -> str:
        """An http(s) URL of ``item_id``'s image, valid for ``expires_s`` seconds."""
        if not 0 < expires_s <= MAX_EXPIRY_S:
            raise ConfigError(f"image URL expiry {expires_s:g}s: expected more than 0 and at most {MAX_EXPIRY_S}s "
                              "(7 days, the limit of S3 presigned URLs)")
        payload = self.item_payload(item_id)
        path = payload.get("path") if payload.get("kind") == "image" else None
        if not path:
            raise StoreError(f"item {item_id!r} is not an image file (payload kind {payload.get('kind')!r}); it has no URL")
        source = join_url(str(self.pool.path), item_id) if pool_on_s3(self.pool) else self._upload(Path(path))
        return presign(source, expires_s, content_type=mimetypes.guess_type(str(path))[0])

    def _upload(self, path: Path) -> str:
        """``path`` stored once in the project store under its content hash; the object's s3:// URL."""
        with self._lock:
            known = self._uploaded.get(str(path))
        if known:
            return known
        if not store_on_s3(self.store):
            raise ConfigError(f"pool.path: image {str(path)!r} is a local file and the project store {self.store.url} "
                              "is not on S3, so it has no URL a remote worker can open")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"pool.path: cannot read image {str(path)!r}: {exc.strerror or exc}") from None
        key = f"{keys.MEDIA}{hashlib.sha256(data).hexdigest()}{path.suffix.lower()}"
        if not self.store.exists(key):
            with contextlib.suppress(RecordExistsError):  # the same content, stored by a concurrent or crashed attempt
                self.store.write_bytes(key, data, create_only=True)
        url = join_url(self.store.url, key)
        with self._lock:
            self._uploaded[str(path)] = url
        return url


_clients: dict[tuple[str | None, str], Any] = {}
_clients_lock = threading.Lock()


def _client(endpoint: str | None, bucket: str):
    """An S3 client that signs for ``bucket``'s own region (SigV4 presigning needs it)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    with _clients_lock:
        found = _clients.get((endpoint, bucket))
    if found is not None:
        return found
    session = boto3.session.Session()
    probe = session.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4"))
    try:
        head = probe.head_bucket(Bucket=bucket)
        region = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
    except (BotoCoreError, ClientError) as exc:
        raise StoreError(f"s3://{bucket}: cannot sign image URLs: {exc}") from None
    client = session.client("s3", endpoint_url=endpoint, region_name=region or probe.meta.region_name,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint else "auto"}))
    with _clients_lock:
        _clients[(endpoint, bucket)] = client
    return client


def presign(object_url: str, expires_s: float, *, content_type: str | None = None) -> str:
    """A presigned GET URL of ``s3://bucket/key[?endpoint_url=...]`` valid for ``expires_s`` seconds."""
    parsed = urlparse(object_url)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise StoreError(f"{object_url!r}: expected s3://bucket/key")
    endpoint = (parse_qs(parsed.query).get("endpoint_url") or [None])[0]
    params: dict[str, Any] = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
    if content_type:
        params["ResponseContentType"] = content_type  # S3 serves the image as an image, whatever it was stored as
    return _client(endpoint, parsed.netloc).generate_presigned_url("get_object", Params=params, ExpiresIn=int(expires_s))
