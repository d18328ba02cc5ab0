"""A digest of the pool a project was started with, cheap enough to recompute on every resume.

A project's records name items by id and its models were fitted on the pool's features; a
pool file that changed between runs would be used silently (features swapped under the same
ids) or break later (rows removed). ``Project.prepare`` records this digest in
``project.json`` when it creates a project and compares it on every resume.

What is hashed depends on the source, so that a large pool costs a streaming read at most:

* ``csv`` / ``parquet``: the file itself (streaming sha256, 1 MiB at a time); a csv file may
  grow by rows appended (``rows_appended``), a Parquet file by rows added after its first ones
  (``rows_sha256``);
* ``sharded``: the manifest (which holds every shard's sha256) and the id/label index;
* ``images``, ``fashion_mnist``: a listing of the folder (relative names and sizes; for an S3
  prefix, the key names), not every image's bytes; the files of linked class folders count
  (``models/folders.py``); a local ``images`` or ``text_folder`` pool may grow by files added
  (``folder_entries``, ``files_added``);
* ``sklearn``: the bundled set as loaded (small by nature);
* ``text_folder``, ``fortunes``: every text file's name and sha256 (the loader reads them all anyway);
* a pool source from a plug-in: its loader's ``digest(cfg)`` if it has one, else nothing is
  recorded and nothing is checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crowdloop import registry
from crowdloop.config import PoolConfig
from crowdloop.errors import PoolError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PoolDigest:
    """What was hashed (``what``: a file, folder or URL), how, and the sha256."""

    what: str
    how: str
    sha256: str
    # the digest an earlier version recorded for this same pool (a project created then resumes),
    # worked out only when the recorded one is not ``sha256``: it costs another pass over the pool
    earlier: Callable[[], str] | None = None
    size: int | None = None  # a csv file's bytes: a file grown by appending rows starts with them
    # a local folder pool's files (name, size or sha256), sorted: what ``sha256`` hashes; a folder
    # grown by files added holds every one of them unchanged
    entries: list[tuple[str, str]] | None = None

    def matches(self, recorded: str) -> bool:
        return recorded == self.sha256 or (self.earlier is not None and recorded == self.earlier())

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"what": self.what, "how": self.how, "sha256": self.sha256}
        if self.size is not None:
            out["bytes"] = self.size
        return out


def pool_digest(cfg: PoolConfig, loaded: Callable[[], Sequence[Any]] | None = None) -> PoolDigest | None:
    """The digest of the pool ``cfg`` names (None: its source offers none).

    ``loaded`` returns the pool's parts as already loaded (the project's pool and test split),
    so that a source hashed by content (``sklearn``) is not loaded a second time.
    """
    source = cfg.source
    path = cfg.path or ""
    if source == "csv":
        return PoolDigest(path, "sha256 of the file", file_sha256(Path(path)), size=_file_size(Path(path)))
    if source == "parquet":
        return PoolDigest(path, "sha256 of the file", file_sha256(Path(path)))
    if source == "sharded":
        return PoolDigest(path, "sha256 of the manifest and index", _sharded_sha256(path))
    entries = folder_entries(cfg)
    if source == "images":
        if entries is not None:
            return PoolDigest(path, "sha256 of the folder listing", entries_sha256(entries),
                              functools.partial(_listing_sha256, path, follow_links=False),
                              entries=entries if cfg.max_items is None else None)
        return PoolDigest(path, "sha256 of the folder listing", _listing_sha256(path))
    if source == "text_folder" and entries is not None:
        return PoolDigest(path, "sha256 of the text files", entries_sha256(entries),
                          entries=entries if cfg.max_items is None else None)
    if source in ("text_folder", "fortunes"):
        from crowdloop.models.text_pools import DEFAULT_FORTUNE_CATEGORIES, FORTUNES_DIR

        root = Path(path or FORTUNES_DIR)
        files = [root / c for c in (cfg.classes or DEFAULT_FORTUNE_CATEGORIES)] if source == "fortunes" else []
        return PoolDigest(str(root), "sha256 of the text files",
                          entries_sha256([(f.relative_to(root).as_posix(), file_sha256(f)) for f in files]))
    if source == "fashion_mnist":
        from crowdloop.models.images import FASHION_MNIST_DIR

        folder = cfg.path or str(FASHION_MNIST_DIR)
        return PoolDigest(folder, "sha256 of the folder listing", _listing_sha256(folder))
    if source == "sklearn":
        parts = loaded() if loaded is not None else (registry.pools.load(source)(cfg),)
        h = hashlib.sha256()
        for part in parts:
            h.update(b"-" if part is None else arrays_sha256(part).encode())
        return PoolDigest(f"scikit-learn's {cfg.name} set", "sha256 of the loaded set", h.hexdigest())
    digest = getattr(registry.pools.load(source), "digest", None)
    if digest is None:
        return None
    return PoolDigest(path or source, f"the {source!r} pool source's digest", str(digest(cfg)))


def folder_entries(cfg: PoolConfig) -> list[tuple[str, str]] | None:
    """Every file of a local ``images`` or ``text_folder`` pool as (relative name, size) —
    (name, sha256) for texts, which are small and read whole anyway —, sorted by name: what the
    pool's digest hashes. None for any other pool (and for a folder that is not there: the
    loader names it)."""
    if cfg.source not in ("images", "text_folder") or not cfg.path or "://" in cfg.path:
        return None
    root = Path(cfg.path)
    if not root.is_dir():
        return None
    from crowdloop.models.folders import list_files

    files = list_files(root)
    if cfg.source == "images":
        return [(f.relative_to(root).as_posix(), str(f.stat().st_size)) for f in files]
    return [(f.relative_to(root).as_posix(), file_sha256(f)) for f in files]


def entries_sha256(entries: Sequence[tuple[str, str]]) -> str:
    """sha256 over a folder's (name, size or sha256) entries, in name order."""
    h = hashlib.sha256()
    for name, value in sorted(entries):
        h.update(f"{name}\0{value}\n".encode())
    return h.hexdigest()


def files_added(now: Sequence[tuple[str, str]], before: Sequence[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The entries a folder gained, when it holds every earlier file unchanged (same name, same
    size or content) and more; None when a file was removed, renamed or changed, or none added."""
    earlier = set(map(tuple, before))
    current = set(map(tuple, now))
    if not earlier <= current or len(current) == len(earlier):
        return None
    return sorted(current - earlier)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # file_sha256 names the problem


def rows_appended(path: Path, recorded: dict[str, Any]) -> bool:
    """Whether the csv file at ``path`` is the recorded one with rows appended: longer, and its
    first ``recorded["bytes"]`` bytes are the recorded file (which ended a line, so no row of it
    was continued). Only a record with a size can tell (projects created since it is kept)."""
    size = recorded.get("bytes")
    if not isinstance(size, int) or size <= 0:
        return False
    try:
        if path.stat().st_size <= size:
            return False
        with open(path, "rb") as fh:
            fh.seek(size - 1)
            ended_a_line = fh.read(1) == b"\n"
        return ended_a_line and file_sha256(path, first=size) == recorded.get("sha256")
    except (OSError, PoolError):
        return False


def file_sha256(path: Path, *, first: int | None = None) -> str:
    """Streaming sha256 of one file, or of its ``first`` bytes (memory: one chunk)."""
    h = hashlib.sha256()
    left = first
    try:
        with open(path, "rb") as fh:
            while (left is None or left > 0) and (chunk := fh.read(_CHUNK if left is None else min(_CHUNK, left))):
                h.update(chunk)
                if left is not None:
                    left -= len(chunk)
    except OSError as exc:
        raise PoolError(f"pool.path: cannot read {str(path)!r}: {exc.strerror}") from None
    return h.hexdigest()


def arrays_sha256(pool: Any) -> str:
    """sha256 over a loaded pool's ids, ground truth and features (for small, in-memory sets)."""
    h = hashlib.sha256()
    for part in (np.asarray(pool.ids).astype(str), None if pool.y is None else np.asarray(pool.y).astype(str)):
        h.update(b"\0".join(v.encode() for v in part.tolist()) if part is not None else b"-")
        h.update(b"\1")
    shown = getattr(pool, "shown", None)
    if shown is not None:  # features encoded from the cells (models/tabular.py): the cells are what was given
        h.update(json.dumps([[_canonical(v) for v in row] for row in shown.tolist()]).encode())
    else:
        h.update(np.ascontiguousarray(pool.X).tobytes())
    return h.hexdigest()


def _canonical(cell: Any) -> Any:
    """A table cell as the digest reads it: a number as a float, so a Parquet file rewritten with
    rows added, whose integer column became a float column for a new empty cell, reads its first
    rows back the same (2007 == 2007.0), as the features' bytes always did."""
    if cell is None or isinstance(cell, str):
        return cell
    if isinstance(cell, int | float):  # bool too
        return float(cell)
    return str(cell)


def rows_sha256(pool: Any, n: int) -> str:
    """sha256 over a loaded pool's first ``n`` rows: ids, ground truth, features and what
    annotators see. A Parquet file is rewritten whole when rows are added, so its bytes cannot
    tell; its first rows, read back equal, can."""
    first = pool.subset(np.arange(n))
    h = hashlib.sha256(arrays_sha256(first).encode())
    if first.content is not None:
        h.update(b"\0".join(str(v).encode() for v in first.content.tolist()))
    return h.hexdigest()


def _sharded_sha256(url: str) -> str:
    from crowdloop.models.sharded import INDEX, MANIFEST, _open
    from crowdloop.storage import KeyNotFoundError

    store = _open(url, create=False)
    h = hashlib.sha256()
    for key in (MANIFEST, INDEX):
        try:
            h.update(hashlib.sha256(store.read_bytes(key)).digest())
        except KeyNotFoundError:
            raise PoolError(f"pool.path: no sharded pool at {url!r} (missing {key})") from None
    return h.hexdigest()


def _listing_sha256(path: str, *, follow_links: bool = True) -> str:
    """Names (and, for a local folder, sizes) of every file under ``path``, sorted: the files
    ``models/folders.py`` lists, which the image loader reads. ``follow_links=False`` is the
    listing recorded before folder links were followed (it left out the files of a linked
    class folder), still accepted from projects that recorded it."""
    h = hashlib.sha256()
    if path.startswith("s3://"):
        from crowdloop.storage import StoreError, open_store

        try:
            names = [(key, "") for key in open_store(path, create=False).list("")]
        except StoreError as exc:
            raise PoolError(f"pool.path: cannot list {path!r}: {exc}") from None
    else:
        root = Path(path)
        if not root.is_dir():
            raise PoolError(f"pool.path: directory {path!r} not found")
        if follow_links:
            from crowdloop.models.folders import list_files

            names = [(f.relative_to(root).as_posix(), str(f.stat().st_size)) for f in list_files(root)]
        else:
            names = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if not name.startswith("."):
                        full = Path(dirpath) / name
                        names.append((full.relative_to(root).as_posix(), str(full.stat().st_size)))
    for name, size in sorted(names):
        h.update(f"{name}\0{size}\n".encode())
    return h.hexdigest()
