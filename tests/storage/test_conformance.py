"""The shared Store conformance suite over the local directory and a real local S3 server."""

from __future__ import annotations

import uuid
from pathlib import Path

from crowdloop.storage import open_store
from crowdloop.storage.local import LocalStore
from crowdloop.storage.testing import check_store


def test_local_store_conforms(tmp_path: Path) -> None:
    check_store(lambda: LocalStore(tmp_path / "store"), large_object_bytes=3 * 1024 * 1024)


def test_s3_store_conforms(s3_endpoint: str, s3_bucket: str) -> None:
    from crowdloop.storage.s3 import S3Store

    url = f"s3://{s3_bucket}/projects/{uuid.uuid4().hex[:6]}?endpoint_url={s3_endpoint}"
    assert isinstance(open_store(url), S3Store)
    # 1005 keys crosses S3's 1000-key listing page; 6 MB crosses a 5 MB multipart threshold.
    check_store(lambda: _small_parts(open_store(url)), n_listed=1005, large_object_bytes=6 * 1024 * 1024)


def _small_parts(store):
    from boto3.s3.transfer import TransferConfig

    store.transfer = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    return store
