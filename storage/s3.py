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
  holder's lease expires after ``lock_ttl_s`` and the next run takes it over. Takeover and
  renewal are conditional on the lease's ETag (``If-Match``), so exactly one of several
  processes takes an expired lease, and a holder that lost its lease stops before its next
  write. A server that ignores ``If-Match`` (probed once) gets a best-effort fallback
  (delete, create, read back), with a warning: there, two takeovers in the same instant can
  both succeed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_log = logging.getLogger(__name__)


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
        self._conditional: bool | None = None  # honours If-None-Match on PUT (probed once)
        self._if_match: bool | None = None  # honours If-Match on PUT (probed once)
        self._leases: list[_Lease] = []  # locks this store holds; a lost one stops every write
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
        self._check_leases("write", key)
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

    def _supports_if_match(self) -> bool:
        """Probe once whether the server honours ``If-Match`` on PUT: a write conditioned on an
        ETag the object does not have must be refused (412). A server that ignores it (an old
        MinIO or moto) gets the lock's best-effort fallback, and a warning when it matters."""
        if self._if_match is None:
            probe = self._key(f"{_INTERNAL}/probe-{uuid.uuid4().hex}", internal=True)
            try:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"1")
                try:
                    self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"2", IfMatch=f'"{"0" * 32}"')
                    self._if_match = False
                except ClientError as exc:
                    if _code(exc) not in _PRECONDITION:
                        raise
                    self._if_match = True
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=probe)
        return self._if_match

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
        self._check_leases("delete", key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", key, exc) from None

    @contextmanager
    def lock(self, name: str = "project") -> Iterator[None]:
        """A leased lock object, renewed in the background while held.

        Taking over an expired lease and renewing one are conditional writes (``If-Match`` on
        the lease's ETag), so of two processes that both find a lease expired exactly one gets
        it, and a holder that stalled past its lease cannot overwrite its successor's. A holder
        whose lease was lost, or could not be renewed in time, refuses every later write and
        delete of this store with a one-line ``ProjectLockedError``: it stops before its next
        write instead of mixing its records with the successor's.
        """
        validate_key(name)
        full_key = self._key(f"{_INTERNAL}/locks/{name}.lock", internal=True)
        lease = _Lease(full_key, f"pid {os.getpid()} on {socket.gethostname()} ({uuid.uuid4().hex[:8]})")
        self._acquire(lease)
        self._leases.append(lease)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_ttl_s / 3) and lease.lost is None:
                try:
                    self._renew(lease)
                except (ClientError, BotoCoreError):
                    continue  # transient: try again; the lease's validity runs out on its own if this goes on

        thread = threading.Thread(target=renew, name=f"crowdloop-lock-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._leases.remove(lease)
            if lease.lost is None:
                self._release(lease)

    # -- the lease ------------------------------------------------------------------------
    def _lease_body(self, owner: str) -> bytes:
        return f"{time.time() + self.lock_ttl_s:.3f} {owner}".encode()

    def _put_lease(self, lease: _Lease, **condition: str) -> None:
        """Write a fresh lease for ``lease.owner`` under ``condition`` (``IfNoneMatch``/``IfMatch``).

        On success the lease is ours until ``lock_ttl_s`` after the request left (a little
        less, as a margin for clocks). A 412 is either a rival's lease or our own PUT whose
        answer was lost and retried by botocore: the lease's owner tells which.
        """
        sent = time.monotonic()
        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=lease.key, Body=self._lease_body(lease.owner),
                                            **condition)
            lease.etag = answer["ETag"]
        except ClientError as exc:
            if _code(exc) not in _PRECONDITION:
                raise
            found = self._read_lease(lease.key)
            if found is None or found[1] != lease.owner:
                raise _LeaseTaken(found[1] if found else None) from None
            lease.etag = found[2]  # our own write landed; its answer was lost
        lease.valid_until = sent + self.lock_ttl_s * _LEASE_MARGIN

    def _read_lease(self, full_key: str) -> tuple[float, str, str] | None:
        """(expires, owner, ETag) of the lease object, None when there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise
        expires, _, owner = answer["Body"].read().decode(errors="replace").partition(" ")
        try:
            return float(expires), owner, answer["ETag"]
        except ValueError:  # not a lease crowdloop wrote: treat it as expired, so it can be taken over
            return 0.0, owner or "an unreadable lease", answer["ETag"]

    def _acquire(self, lease: _Lease) -> None:
        try:
            for _ in range(3):
                found = self._read_lease(lease.key)
                try:
                    if found is None:
                        if self._supports_conditional():
                            self._put_lease(lease, IfNoneMatch="*")
                        else:  # the probed fallback: check-then-put, best effort (see _supports_if_match)
                            self._put_lease(lease)
                        return
                    expires, holder, etag = found
                    if holder == lease.owner:
                        lease.etag, lease.valid_until = etag, time.monotonic() + self.lock_ttl_s * _LEASE_MARGIN
                        return
                    left = expires - time.time()
                    if left > 0:
                        raise ProjectLockedError(
                            f"project {self.url} is in use by a running crowdloop process ({holder}); "
                            f"wait for it to finish, or rerun in {left:.0f} s if it has died")
                    if self._supports_if_match():  # take the expired lease over only if nobody else did
                        self._put_lease(lease, IfMatch=etag)
                    else:
                        self._takeover_without_if_match(lease, etag)
                    return
                except _LeaseTaken:
                    continue  # someone else wrote a lease in between: look again
                except ClientError as exc:
                    if _code(exc) in _NOT_FOUND:  # released between our read and our takeover: look again
                        continue
                    raise
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("lock", lease.key, exc) from None
        raise ProjectLockedError(f"project {self.url}: another run took the lock while this one was starting; "
                                 "wait for it to finish or stop it")

    def _takeover_without_if_match(self, lease: _Lease, etag: str) -> None:
        """Takeover on a server that ignores ``If-Match``: delete, create, read back. Best effort:
        two processes can still both win in a narrow window; the docs and a warning say so."""
        _log.warning("%s: the S3 server ignores If-Match, so taking over an expired project lock is best effort",
                     self.url)
        self.client.delete_object(Bucket=self.bucket, Key=lease.key)
        self._put_lease(lease, **({"IfNoneMatch": "*"} if self._supports_conditional() else {}))
        found = self._read_lease(lease.key)
        if found is None or found[1] != lease.owner:
            raise _LeaseTaken(found[1] if found else None)

    def _renew(self, lease: _Lease) -> None:
        """Extend our lease, only if it is still ours (``If-Match`` on its ETag); else mark it lost."""
        with lease.guard:  # the renewal thread and a writer that found the lease run out (_check_leases)
            self._renew_once(lease)

    def _renew_once(self, lease: _Lease) -> None:
        if lease.lost is not None:
            return
        try:
            if self._supports_if_match():
                self._put_lease(lease, IfMatch=lease.etag or "*")
            else:
                found = self._read_lease(lease.key)
                if found is None or found[1] != lease.owner:
                    raise _LeaseTaken(found[1] if found else None)
                self._put_lease(lease)
        except _LeaseTaken as exc:
            lease.lost = f"its lease was taken over by {exc.holder or 'nobody (it was deleted)'}"
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            lease.lost = "its lease was deleted by another process"

    def _release(self, lease: _Lease) -> None:
        """Delete our lease (conditionally: never a successor's); it expires on its own if this fails."""
        with contextlib.suppress(ClientError, BotoCoreError):
            if self._supports_if_match():
                self.client.delete_object(Bucket=self.bucket, Key=lease.key, IfMatch=lease.etag or "*")
            else:
                found = self._read_lease(lease.key)
                if found is not None and found[1] == lease.owner:
                    self.client.delete_object(Bucket=self.bucket, Key=lease.key)

    def _check_leases(self, action: str, key: str) -> None:
        """Refuse to write while a lock this store holds was lost or ran out (the holder must stop)."""
        for lease in self._leases:
            if lease.lost is None and time.monotonic() > lease.valid_until and self._supports_if_match():
                # The renewal thread fell behind (a loaded machine, a slow request). A renewal on
                # our lease's ETag succeeds only if nobody wrote the lease since our last write —
                # no takeover, no release — so the lease is still ours, and exclusively.
                with contextlib.suppress(ClientError, BotoCoreError):
                    self._renew(lease)
            reason = lease.lost
            if reason is None and time.monotonic() > lease.valid_until:
                reason = f"its lease could not be renewed for {self.lock_ttl_s * _LEASE_MARGIN:.0f} s"
            if reason:
                raise ProjectLockedError(
                    f"project {self.url}: this run lost the project lock ({reason}); stopped before trying to "
                    f"{action} {key!r} (another run may be working on the project)")


_LEASE_MARGIN = 0.9  # a holder trusts its lease for 90% of the TTL after the request that wrote it left


@dataclass
class _Lease:
    """A lock lease this process holds: who we are, the ETag of our last write, how long it holds."""

    key: str
    owner: str
    etag: str | None = None
    valid_until: float = 0.0  # time.monotonic() after which we may no longer rely on it
    lost: str | None = None  # why it is no longer ours (None: held)
    guard: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one renewal at a time


class _LeaseTaken(Exception):
    """A conditional lease write failed because another owner's lease is there."""

    def __init__(self, holder: str | None) -> None:
        super().__init__(holder)
        self.holder = holder
