"""The local-directory store: one file per key, atomic writes, create-only via hard links."""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from crowdloop.errors import ProjectLockedError, RecordExistsError, StoreError
from crowdloop.storage import KeyNotFoundError, validate_key

_TMP_PREFIX = ".tmp-"
_LOCK_DIR = ".locks"


class LocalStore:
    """Keys map to files under ``root``.

    Writes go to a temporary file and are then renamed (mutable records) or hard-linked
    (create-only records), so a reader never sees half a file and a process killed mid-write
    leaves at most a stray temporary file, which listing ignores.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            elif not self.root.is_dir():
                raise StoreError(f"project directory {self.root}: not found")
        except OSError as exc:
            raise StoreError(f"project directory {self.root}: cannot create it ({exc.strerror})") from None
        if not self.root.is_dir():
            raise StoreError(f"project directory {self.root}: not a directory")
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StoreError(f"project directory {self.root}: not readable and writable by this user")

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> LocalStore:
        parsed = urlparse(url)
        return cls(parsed.path if parsed.scheme == "file" else url, create=create)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFoundError(f"no record {key!r} in {self.url}") from None
        except IsADirectoryError:
            raise KeyNotFoundError(f"no record {key!r} in {self.url} (it is a prefix)") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key!r} in {self.url}: {exc.strerror}") from None

    def write_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            try:
                if create_only:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise RecordExistsError(f"record {key!r} already exists in {self.url}") from None
                else:
                    os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
        except OSError as exc:
            if isinstance(exc, RecordExistsError):
                raise
            raise StoreError(f"cannot write {key!r} in {self.url}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_key(prefix, allow_prefix=True)
        base = self.root / prefix if prefix.endswith("/") or not prefix else (self.root / prefix).parent
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete {key!r} in {self.url}: {exc.strerror}") from None

    @contextmanager
    def lock(self, name: str = "project") -> Iterator[None]:
        """An exclusive, non-blocking lock; the kernel drops it when the process dies."""
        validate_key(name)
        lock_dir = self.root / _LOCK_DIR
        lock_dir.mkdir(exist_ok=True)
        path = lock_dir / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                raise ProjectLockedError(
                    f"project {self.url} is in use by a running crowdloop process ({holder}); "
                    "wait for it to finish or stop it"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            yield
        finally:
            os.close(fd)
