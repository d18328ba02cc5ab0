"""The S3 store (boto3): the same ``Store`` contract as the local directory.

URL form: ``s3://bucket/prefix`` with an optional ``?endpoint_url=http://host:port`` for
S3-compatible services (MinIO, moto, Ceph). Credentials come from boto3's chain (environment,
shared config, instance role), or from the secret block named by ``?credentials=<block>``
(config ``credentials.aws``, ``crowdloop/credentials.py``): the URL names the block, never a key.

* Create-only writes use a conditional ``PUT`` (``If-None-Match: *``); on a server that
  ignores the condition (probed once per store), they fall back to check-then-put, which the
  project lock makes safe because one run writes at a time.
* Listing paginates; throttling and 5xx answers are retried with botocore's adaptive mode.
* Objects above ``multipart_threshold`` go up in parts (``upload_fileobj``).
* The project lock is an object with a lease that a background thread renews; a killed
  holder's lease expires after ``lock_ttl_s`` and the next run takes it over.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlencode, urlparse

from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from crowdloop.credentials import Credentials
from crowdloop.errors import ProjectLockedError, RecordExistsError, StoreError
from crowdloop.redact import protect_loggers
from crowdloop.storage import KeyNotFoundError, validate_key

protect_loggers()  # botocore logs request headers (the access key id) at DEBUG

_INTERNAL = ".crowdloop"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store:
    """Keys map to objects ``prefix/key`` in ``bucket``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        credentials: str | None = None,
        client=None,
        create: bool = True,
        multipart_threshold: int = 64 * 1024 * 1024,
        lock_ttl_s: float = 30.0,
    ) -> None:
        if not bucket:
            raise StoreError("storage.url: an S3 URL needs a bucket, like s3://my-bucket/projects/demo")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.endpoint_url = endpoint_url
        params = {k: v for k, v in (("endpoint_url", endpoint_url), ("credentials", credentials)) if v}
        query = f"?{urlencode(params)}" if params else ""
        self.url = f"s3://{bucket}/{self.prefix}{query}" if self.prefix else f"s3://{bucket}{query}"
        # Own session (thread-safe, fresh credentials): from the named secret block, else boto3's chain.
        self.client = client or Credentials(aws=credentials).aws_session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 10, "mode": "adaptive"}, connect_timeout=10, read_timeout=60),
        )
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=16 * 1024 * 1024)
        self.lock_ttl_s = lock_ttl_s
        self._conditional: bool | None = None
        self._check_bucket(create)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> S3Store:
        parsed = urlparse(url)
        if parsed.scheme != "s3":
            raise StoreError(f"storage.url {url!r}: expected s3://bucket/prefix")
        query = parse_qs(parsed.query)
        endpoint = (query.get("endpoint_url") or [None])[0]
        credentials = (query.get("credentials") or [None])[0]
        return cls(parsed.netloc, parsed.path, endpoint_url=endpoint, credentials=credentials, create=create)

    # -- helpers ------------------------------------------------------------------------
    def _key(self, key: str, *, internal: bool = False) -> str:
        if not internal:
            validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, action: str, key: str, exc: Exception) -> StoreError:
        if isinstance(exc, NoCredentialsError):
            return StoreError(f"{self.url}: no AWS credentials found (boto3 credential chain: env, ~/.aws, instance role)")
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code == "NoSuchBucket":
                return StoreError(f"{self.url}: bucket {self.bucket!r} not found")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                return StoreError(f"{self.url}: access denied when trying to {action} {key!r} ({code})")
            return StoreError(f"{self.url}: cannot {action} {key!r}: {code or exc}")
        return StoreError(f"{self.url}: cannot {action} {key!r}: {exc}")

    def _check_bucket(self, create: bool) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND | {"NoSuchBucket"}:
                raise StoreError(f"{self.url}: bucket {self.bucket!r} not found (create it first)") from None
            raise self._fail("open", "", exc) from None
        except (BotoCoreError, NoCredentialsError) as exc:
            raise self._fail("open", "", exc) from None

    # -- Store protocol ---------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise KeyNotFoundError(f"no record {key!r} in {self.url}") from None
            raise self._fail("read", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from None

    def exists(self, key: str) -> bool:
        return self._exists(self._key(key))

    def _exists(self, full_key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=full_key)
            return True
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._fail("check", full_key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("check", full_key, exc) from None

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._write(self._key(key), key, data, create_only=create_only)

    def _write(self, full_key: str, key: str, data: bytes, *, create_only: bool) -> None:
        try:
            if create_only and len(data) < self.transfer.multipart_threshold and self._supports_conditional():
                try:
                    self.client.put_object(Bucket=self.bucket, Key=full_key, Body=data, IfNoneMatch="*")
                except ClientError as exc:
                    if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                        raise RecordExistsError(f"record {key!r} already exists in {self.url}") from None
                    raise
                return
            if create_only and self._exists(full_key):
                raise RecordExistsError(f"record {key!r} already exists in {self.url}")
            if len(data) >= self.transfer.multipart_threshold:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, full_key, Config=self.transfer)
            else:
                self.client.put_object(Bucket=self.bucket, Key=full_key, Body=data)
        except RecordExistsError:
            raise
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("write", key, exc) from None

    def _supports_conditional(self) -> bool:
        """Probe once whether the server honours ``If-None-Match: *`` on PUT."""
        if self._conditional is None:
            probe = self._key(f"{_INTERNAL}/probe-{uuid.uuid4().hex}", internal=True)
            try:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"1", IfNoneMatch="*")
            except ClientError as exc:
                if _code(exc) not in ("PreconditionFailed", "412"):
                    raise
                # A retry after a lost answer found our own first PUT: only a server that
                # honours the condition refuses a fresh, unique key like this one.
                self._conditional = True
                self.client.delete_object(Bucket=self.bucket, Key=probe)
                return True
            try:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"2", IfNoneMatch="*")
                self._conditional = False
            except ClientError as exc:
                self._conditional = _code(exc) in ("PreconditionFailed", "412")
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=probe)
        return self._conditional

    def list(self, prefix: str = "") -> list[str]:
        validate_key(prefix, allow_prefix=True)
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(base):]
                    if not key.startswith(".") and "/." not in key:
                        keys.append(key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("list", prefix, exc) from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", key, exc) from None

    @contextmanager
    def lock(self, name: str = "project") -> Iterator[None]:
        """A leased lock object, renewed in the background while held."""
        validate_key(name)
        full_key = self._key(f"{_INTERNAL}/locks/{name}.lock", internal=True)
        owner = f"pid {os.getpid()} on {socket.gethostname()} ({uuid.uuid4().hex[:8]})"
        self._acquire(full_key, owner)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_ttl_s / 3):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=full_key, Body=self._lease(owner))
                except (ClientError, BotoCoreError):
                    continue  # transient: the next renewal tries again well before expiry

        thread = threading.Thread(target=renew, name=f"crowdloop-lock-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(ClientError, BotoCoreError):  # the lease expires on its own
                self.client.delete_object(Bucket=self.bucket, Key=full_key)

    def _lease(self, owner: str) -> bytes:
        return f"{time.time() + self.lock_ttl_s:.3f} {owner}".encode()

    def _acquire(self, full_key: str, owner: str) -> None:
        for _ in range(2):
            try:
                self._write(full_key, full_key, self._lease(owner), create_only=True)
                return
            except RecordExistsError:
                try:
                    body = self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read().decode()
                except ClientError:
                    continue  # released between our write and read: try again
                expires, _, holder = body.partition(" ")
                if holder == owner:
                    return  # our own PUT landed but its answer was lost; botocore's retry found it
                left = float(expires) - time.time()
                if left > 0:
                    raise ProjectLockedError(
                        f"project {self.url} is in use by a running crowdloop process ({holder}); "
                        f"wait for it to finish, or rerun in {left:.0f} s if it has died"
                    ) from None
                self.client.delete_object(Bucket=self.bucket, Key=full_key)  # expired lease of a dead run
        raise ProjectLockedError(f"project {self.url}: could not take the lock; another run is starting")
