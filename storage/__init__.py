"""Project stores: a small key/value protocol over a local directory or S3.

Keys look like ``rounds/0003/selection.json``. They are validated (no ``..``, no absolute
paths, no backslashes) so a key can never escape the project. Immutable records are written
with ``create_only=True``, which fails instead of overwriting, so a replay cannot rewrite
history.
"""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

from crowdloop import registry
from crowdloop.errors import InvalidKeyError, RecordExistsError, StoreError

__all__ = [
    "KeyNotFoundError",
    "PrefixedStore",
    "RecordExistsError",
    "Store",
    "join_url",
    "open_store",
    "read_json",
    "validate_key",
    "write_json",
]

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+@-]*$")


class KeyNotFoundError(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError's repr-quoting makes messages ugly
        return str(self.args[0]) if self.args else "key not found"


def validate_key(key: str, *, allow_prefix: bool = False) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``InvalidKeyError``.

    A prefix (for ``list``) may be empty or end with ``/``.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"store key {key!r}: expected a string")
    if allow_prefix and key == "":
        return key
    body = key[:-1] if allow_prefix and key.endswith("/") else key
    if not body or body.startswith("/") or "\\" in body or "\x00" in body:
        raise InvalidKeyError(f"store key {key!r}: expected a relative path like 'rounds/0001/selection.json'")
    for segment in body.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise InvalidKeyError(
                f"store key {key!r}: segment {segment!r} is not allowed (letters, digits and ._=+@- only; no '..')"
            )
    return key


@runtime_checkable
class Store(Protocol):
    """What every store implements. ``url`` identifies the store for other processes."""

    url: str

    def read_bytes(self, key: str) -> bytes: ...

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def lock(self, name: str = "project") -> AbstractContextManager[None]: ...


class PrefixedStore:
    """A view of another store under ``prefix/`` (e.g. the random baseline of a project)."""

    def __init__(self, parent: Store, prefix: str) -> None:
        self.parent = parent
        self.prefix = validate_key(prefix.rstrip("/")) + "/"
        self.url = join_url(parent.url, self.prefix.rstrip("/"))

    def _k(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def read_bytes(self, key: str) -> bytes:
        return self.parent.read_bytes(self._k(key))

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self.parent.write_bytes(self._k(key), data, create_only=create_only)

    def exists(self, key: str) -> bool:
        return self.parent.exists(self._k(key))

    def list(self, prefix: str = "") -> list[str]:
        validate_key(prefix, allow_prefix=True)
        n = len(self.prefix)
        return [k[n:] for k in self.parent.list(self.prefix + prefix)]

    def delete(self, key: str) -> None:
        self.parent.delete(self._k(key))

    def lock(self, name: str = "project") -> AbstractContextManager[None]:
        return self.parent.lock(f"{self.prefix.rstrip('/').replace('/', '-')}-{name}")


def join_url(url: str, prefix: str) -> str:
    """``url`` with ``prefix`` appended to its path, keeping a query (``?endpoint_url=...``)."""
    base, sep, query = url.partition("?")
    return f"{base.rstrip('/')}/{prefix}{sep}{query}"


def store_scheme(url: str) -> str:
    """The store plug-in a URL names: its scheme, or ``file`` for a plain path."""
    scheme = urlparse(url).scheme
    return scheme if len(scheme) > 1 else "file"  # 'C:' is a drive, not a scheme


def local_path(url: str) -> Path:
    """The absolute path a plain path or ``file://`` URL names (``~`` expanded)."""
    parsed = urlparse(url)
    return Path(parsed.path if parsed.scheme == "file" else url).expanduser().absolute()


def open_store(url: str, *, create: bool = True) -> Store:
    """Open a store by URL: a plain path or ``file://`` for local, ``s3://`` when installed.

    ``create=False`` refuses to make a new store (for commands that only read a project).
    """
    cls = registry.stores.load(store_scheme(url))
    return cls.from_url(url, create=create)


def read_json(store: Store, key: str, default: Any = ...) -> Any:
    """Read a JSON record; ``default`` (when given) is returned for a missing key."""
    try:
        data = store.read_bytes(key)
    except KeyNotFoundError:
        if default is ...:
            raise
        return default
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StoreError(f"store record {key!r} in {store.url} is not valid JSON: {exc}") from None


def write_json(store: Store, key: str, obj: Any, *, create_only: bool = False) -> None:
    store.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), create_only=create_only)


def write_json_once(store: Store, key: str, obj: Any) -> Any:
    """Record ``obj`` under ``key`` unless a record is there already; returns the record that
    stands: ``obj``, or the one a racing process (or an earlier attempt) wrote first. Two
    processes deciding the same thing thus go on with one decision."""
    try:
        write_json(store, key, obj, create_only=True)
    except RecordExistsError:
        return read_json(store, key)
    return obj


def store_identity(store: Store, key: str = "store.json") -> str:
    """A random id made once per store (``key``, create-only). External systems keyed by names
    a project chooses (a request token, a study name) take it in, so two stores of one project
    name — a store deleted and made again, a copy run beside the original — never find each
    other's work there: they pick the same items for their first batch and would name it alike."""
    import secrets

    return str(write_json_once(store, key, {"store_id": secrets.token_hex(8)})["store_id"])
