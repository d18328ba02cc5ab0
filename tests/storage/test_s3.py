"""S3 specifics: clear errors, conditional writes and their fallback, leased lock, retries."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.stub import Stubber

from crowdloop.errors import ProjectLockedError, RecordExistsError, StoreError
from crowdloop.storage import open_store
from crowdloop.storage.s3 import S3Store


def test_missing_bucket_is_one_line(s3_endpoint: str) -> None:
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-x' not found"):
        open_store(f"s3://no-such-bucket-x/p?endpoint_url={s3_endpoint}")


def test_missing_credentials_are_named(s3_endpoint: str, s3_bucket: str, monkeypatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StoreError, match="no AWS credentials found") as info:
        open_store(f"s3://{s3_bucket}/p?endpoint_url={s3_endpoint}")
    assert "\n" not in str(info.value)


def test_fallback_when_server_ignores_if_none_match(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "fallback", endpoint_url=s3_endpoint)
    store._conditional = False  # as on a server that ignores If-None-Match
    store.write_bytes("a.json", b"1", create_only=True)
    with pytest.raises(RecordExistsError):
        store.write_bytes("a.json", b"2", create_only=True)
    assert store.read_bytes("a.json") == b"1"


def test_conditional_support_is_detected_on_moto(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "probe", endpoint_url=s3_endpoint)
    assert store._supports_conditional() is True
    assert store.list() == []  # the probe object is cleaned up and never listed


def test_lock_of_a_dead_holder_expires(s3_endpoint: str, s3_bucket: str) -> None:
    # No sleeping past a sub-second lease (a loaded machine can stall longer than that between two
    # calls): the dead holder's lease is written valid for a minute, then as already expired.
    first = S3Store(s3_bucket, "lock", endpoint_url=s3_endpoint, lock_ttl_s=30.0)
    key = "lock/.crowdloop/locks/project.lock"
    # a lease written by a holder that died without releasing it
    first.client.put_object(Bucket=s3_bucket, Key=key, Body=f"{time.time() + 60:.3f} pid 1 on elsewhere".encode())
    with pytest.raises(ProjectLockedError, match=r"pid 1 on elsewhere.*rerun in \d+ s"), first.lock("project"):
        pass
    first.client.put_object(Bucket=s3_bucket, Key=key, Body=f"{time.time() - 1:.3f} pid 1 on elsewhere".encode())
    with (first.lock("project"),  # expired: taken over, then held
          pytest.raises(ProjectLockedError),
          S3Store(s3_bucket, "lock", endpoint_url=s3_endpoint).lock("project")):
        pass


def test_lock_is_renewed_while_held(s3_endpoint: str, s3_bucket: str) -> None:
    # a TTL of seconds, not tenths: on a loaded 2-core machine a renewal thread can wait ~1 s for the CPU
    store = S3Store(s3_bucket, "renew", endpoint_url=s3_endpoint, lock_ttl_s=4.0)
    with store.lock("project"):
        time.sleep(9.0)  # more than twice the TTL: only renewals keep it
        with pytest.raises(ProjectLockedError), S3Store(s3_bucket, "renew", endpoint_url=s3_endpoint).lock("project"):
            pass


def test_throttling_is_retried(s3_endpoint: str, s3_bucket: str) -> None:
    """A SlowDown (503) answer is retried by botocore, through a real request on the wire."""
    store = S3Store(s3_bucket, "retry", endpoint_url=s3_endpoint)
    store.write_bytes("k.json", b"ok")
    calls = {"n": 0}

    def throttle_twice(request, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            from botocore.awsrequest import AWSResponse

            return AWSResponse(request.url, 503, {}, _Raw(b"<Error><Code>SlowDown</Code></Error>"))
        return None

    store.client.meta.events.register_first("before-send.s3.GetObject", throttle_twice)
    assert store.read_bytes("k.json") == b"ok"
    assert calls["n"] == 3


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body

    def read(self, *_):
        return self.body


def test_access_denied_is_a_store_error(s3_bucket: str) -> None:
    client = boto3.client("s3", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("head_bucket", {}, {"Bucket": s3_bucket})
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        store = S3Store(s3_bucket, "x", client=client)
        with pytest.raises(StoreError, match=r"access denied when trying to read 'a\.json'"):
            store.read_bytes("a.json")
