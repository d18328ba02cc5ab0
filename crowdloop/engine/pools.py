"""The pool a project labels: loaded once per process, split once, and vouched for by a digest.

A project, its random-baseline twin and every task of a run share one loaded pool (the loaders
are cached on the pool config and the file's size and mtime — a folder's: of every file in it —,
so a file changed on disk is read again). ``checked_pool_record`` is the digest recorded at creation and compared on resume.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crowdloop import keys, registry
from crowdloop.config import FeaturesConfig, PoolConfig
from crowdloop.errors import PoolError
from crowdloop.storage import PrefixedStore, Store, open_store

if TYPE_CHECKING:
    from crowdloop.engine.project import Project


def pool_file_stamp(cfg: PoolConfig) -> tuple[int, int] | None:
    """Size and mtime of a local pool file, so a file changed on disk is loaded again; for a
    folder, of every file in it (a file rewritten in a class folder leaves the folder's own
    mtime as it was, and a long-lived worker process would keep the old pool)."""
    if not cfg.path or "://" in cfg.path:
        return None
    try:
        st = os.stat(cfg.path)
        if not stat.S_ISDIR(st.st_mode):
            return (st.st_size, st.st_mtime_ns)
        from crowdloop.models.folders import list_files

        h = hashlib.sha256()
        files = list_files(Path(cfg.path))
        for f in files:
            fst = f.stat()
            h.update(f"{f}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
        return (len(files), int(h.hexdigest()[:15], 16))
    except (OSError, PoolError):
        return None  # the loader names the missing file, the loop or the dangling link


def load_pool(cfg: PoolConfig):
    """The pool as its ``pool.source`` loader returns it (before the test split), once per process."""
    return _load_pool_cached(cfg.model_dump_json(), pool_file_stamp(cfg))


@functools.lru_cache(maxsize=4)
def _load_pool_cached(pool_json: str, stamp: tuple[int, int] | None):
    cfg = PoolConfig.model_validate_json(pool_json)
    return registry.pools.load(cfg.source)(cfg)


def load_split(pool_json: str, seed: int, features: FeaturesConfig | None = None, store: Store | None = None, *,
               group_copies: bool = False, rows_at_start: int | None = None):
    """The pool and its test split, once per process: a project, its baseline twin and every task share it.

    A text pool with ``model.features`` is featurized before the split, once per process, with
    the featurizer the project's (root) store holds (``crowdloop.models.text.features_for``).
    ``group_copies``: copies of an item fall on its side of the split; ``rows_at_start``: the
    rows the project started with, when rows were appended since (``split_pool``)."""
    cfg = PoolConfig.model_validate_json(pool_json)
    stamp = pool_file_stamp(cfg)
    if features is None:
        return _load_split_cached(pool_json, seed, stamp, group_copies, rows_at_start)
    from crowdloop.models.text import featurized_split

    return featurized_split(cfg, seed, stamp, features, store, raw=load_pool(cfg), group_copies=group_copies,
                            rows_at_start=rows_at_start)


def features_store(store: Store) -> Store:
    """Where a project keeps its text featurizer: its own store, and for the random baseline twin
    (a ``PrefixedStore`` view, or reopened by its URL ``<project>/baseline`` in a flow) the store
    of the project it shadows, so both rank the same features and embeddings are computed once."""
    while isinstance(store, PrefixedStore):
        store = store.parent
    base, sep, query = store.url.partition("?")
    if base.rstrip("/").endswith("/" + keys.BASELINE):
        parent = open_store(base.rstrip("/")[: -len(keys.BASELINE) - 1] + sep + query, create=False)
        if parent.exists(keys.PROJECT):
            return parent
    return store


@functools.lru_cache(maxsize=4)
def _load_split_cached(pool_json: str, seed: int, stamp: tuple[int, int] | None, group_copies: bool = False,
                       rows_at_start: int | None = None):
    from crowdloop.models.datasets import split_pool

    cfg = PoolConfig.model_validate_json(pool_json)
    return split_pool(_load_pool_cached(pool_json, stamp), cfg.test_size, seed, group_copies=group_copies,
                      rows_at_start=rows_at_start)


def checked_pool_record(project: Project, existing: dict[str, Any] | None) -> dict[str, str] | None:
    """The pool digest to record; on resume, a one-line ``PoolError`` if the pool is not the one
    the project was created with (``models/digest.py`` says what is hashed for each source)."""
    from crowdloop.models.digest import pool_digest, rows_appended

    config, url = project.config, project.store.url
    digest = pool_digest(config.pool, loaded=lambda: (project.pool, project.test))
    recorded = (existing or {}).get("pool")
    if recorded is None or digest is None:
        if digest is None:
            return recorded
        record = digest.as_record()
        if digest.size is not None:  # a csv pool may grow by appended rows: what it started with
            record["rows_at_start"] = len(project.pool) + (0 if project.test is None else len(project.test))
            record["pool_items_at_start"] = len(project.pool)
        return record
    if not digest.matches(recorded["sha256"]) and "rows_at_start" in recorded \
            and rows_appended(Path(config.pool.path or ""), recorded):
        # rows appended: the rows it started with keep their split, audit reserve and stop set
        # (Project.items_at_start); the new ones join the pool (models/datasets.py, grown_split_indices)
        grown = [*recorded.get("grown", []), {"sha256": recorded["sha256"], "bytes": recorded["bytes"]}]
        return {**recorded, **digest.as_record(), "grown": grown}
    if not digest.matches(recorded["sha256"]):
        raise PoolError(f"pool.path: {digest.what} is not the pool project {url} was created with ({digest.how}: "
                        f"{digest.sha256[:12]}… now, {recorded['sha256'][:12]}… then); restore the original pool, "
                        "or start a new project (--project-dir) on this one that keeps the labels bought: "
                        f"`crowdloop export -p {url} --format gt-manifest --out labels.manifest`, then "
                        "pool.seed_labels: {path: labels.manifest} (docs/own_data.md, 'When the pool grows')")
    return recorded
