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
               group_copies: bool = False, rows_at_start: int | None = None, appended: tuple[str, ...] = ()):
    """The pool and its test split, once per process: a project, its baseline twin and every task share it.

    A text pool with ``model.features`` is featurized before the split, once per process, with
    the featurizer the project's (root) store holds (``crowdloop.models.text.features_for``).
    ``group_copies``: copies of an item fall on its side of the split; ``rows_at_start``: the
    rows the project started with, when rows were appended since (``split_pool``); ``appended``:
    the ids of files added to a folder pool since, whose rows follow the others (``in_start_order``)."""
    from crowdloop.models.datasets import in_start_order

    cfg = PoolConfig.model_validate_json(pool_json)
    stamp = pool_file_stamp(cfg)
    if features is None:
        return _load_split_cached(pool_json, seed, stamp, group_copies, rows_at_start, appended)
    from crowdloop.models.text import featurized_split

    return featurized_split(cfg, seed, stamp, features, store, raw=in_start_order(load_pool(cfg), appended),
                            group_copies=group_copies, rows_at_start=rows_at_start, appended=appended)


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
                       rows_at_start: int | None = None, appended: tuple[str, ...] = ()):
    from crowdloop.models.datasets import in_start_order, refit_encoding, split_pool

    cfg = PoolConfig.model_validate_json(pool_json)
    pool = in_start_order(_load_pool_cached(pool_json, stamp), appended)
    if rows_at_start is not None:  # table features as encoded when the project started (models/tabular.py)
        pool = refit_encoding(pool, cfg.categorical_columns, rows_at_start)
    return split_pool(pool, cfg.test_size, seed, group_copies=group_copies, rows_at_start=rows_at_start)


def checked_pool_record(project: Project, existing: dict[str, Any] | None) -> dict[str, str] | None:
    """The pool digest to record; on resume, a one-line ``PoolError`` if the pool is not the one
    the project was created with (``models/digest.py`` says what is hashed for each source)."""
    from crowdloop.models.digest import pool_digest

    config, url = project.config, project.store.url
    digest = pool_digest(config.pool, loaded=lambda: (project.pool, project.test))
    recorded = (existing or {}).get("pool")
    if recorded is None or digest is None:
        if digest is None:
            return recorded
        record = digest.as_record()
        if digest.size is not None or digest.entries is not None or config.pool.source == "parquet":
            # a pool that may grow: what it started with
            record["rows_at_start"] = len(project.pool) + (0 if project.test is None else len(project.test))
            record["pool_items_at_start"] = len(project.pool)
            record["classes"] = list(project.classes)
            if config.pool.source == "parquet":
                record.update(_rows_record(config.pool))
        return record
    if digest.matches(recorded["sha256"]):  # (matching may cost a second pass: an older kind of digest)
        return recorded
    growth = _growth(project, digest, recorded)
    if growth is None:
        raise PoolError(f"pool.path: {digest.what} is not the pool project {url} was created with ({digest.how}: "
                        f"{digest.sha256[:12]}… now, {recorded['sha256'][:12]}… then); restore the original pool, "
                        "or start a new project (--project-dir) on this one that keeps the labels bought: "
                        f"`crowdloop export -p {url} --format gt-manifest --out labels.manifest`, then "
                        "pool.seed_labels: {path: labels.manifest} (docs/own_data.md, 'When the pool grows')")
    # the rows it started with keep their split, audit reserve and stop set (Project.items_at_start);
    # the new ones join the pool (models/datasets.py: grown_split_indices, in_start_order)
    _check_same_classes(project, recorded)
    stage, now = growth
    grown = [*recorded.get("grown", []), {"sha256": recorded["sha256"], **stage}]
    return {**recorded, **digest.as_record(), **now, "grown": grown}


def grows_by_files(record: dict[str, Any]) -> bool:
    """Whether a pool record is a folder pool's that may grow by files added (its listing kept
    under ``pool-listings/``): a csv record holds its ``bytes``, a Parquet one its ``rows_sha256``."""
    return "rows_at_start" in record and "bytes" not in record and "rows_sha256" not in record


def _growth(project: Project, digest: Any, recorded: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """How a pool that no longer matches its recorded digest grew: the stage ``pool.grown`` keeps
    and the record fields the growth updates; None when it did not grow but changed (or was
    recorded before it could tell). A csv file: rows appended after its recorded bytes; a
    Parquet file: its recorded rows read back the same, with rows after them; a folder: every
    file it had, unchanged, and more."""
    from crowdloop.models.digest import rows_appended

    cfg = project.config.pool
    if "rows_at_start" not in recorded:
        return None
    if "bytes" in recorded:
        return ({"bytes": recorded["bytes"]}, {}) if rows_appended(Path(cfg.path or ""), recorded) else None
    if "rows_sha256" in recorded:
        return ({"rows": recorded["rows"]}, _rows_record(cfg)) if _parquet_rows_added(cfg, recorded) else None
    added = _files_added(project, digest, recorded)
    return None if added is None else ({"added": [list(e) for e in added]}, {})


def _check_same_classes(project: Project, recorded: dict[str, Any]) -> None:
    """A pool that grew keeps the classes it started with: an item asked before a new class
    existed could not be given it, so the labels bought would be wrong without a word."""
    classes = recorded.get("classes")
    if classes is None:
        return  # recorded before classes were kept
    now = [str(c) for c in load_pool(project.config.pool).classes]
    if now != classes:
        new = [c for c in now if c not in classes]
        raise PoolError(f"pool.path: the rows added to {project.config.pool.path!r} bring class(es) {new} that project "
                        f"{project.store.url} did not start with ({classes}); items asked before could not be given "
                        "them: start a new project with the new classes (docs/own_data.md, 'When the pool grows')")


def _rows_record(cfg: PoolConfig) -> dict[str, Any]:
    """A Parquet pool's rows and their digest (``models/digest.py``, ``rows_sha256``)."""
    from crowdloop.models.digest import rows_sha256

    raw = load_pool(cfg)
    return {"rows": len(raw), "rows_sha256": rows_sha256(raw, len(raw))}


def _parquet_rows_added(cfg: PoolConfig, recorded: dict[str, Any]) -> bool:
    """Whether a Parquet pool holds the recorded rows, read back the same, and rows after them."""
    from crowdloop.models.digest import rows_sha256

    if cfg.source != "parquet":
        return False
    raw = load_pool(cfg)
    n = int(recorded["rows"])
    return len(raw) > n and rows_sha256(raw, n) == recorded["rows_sha256"]


def _files_added(project: Project, digest: Any, recorded: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The files added to a folder pool since its recorded digest, when every file it had is there
    unchanged (``models/digest.py``, ``files_added``); None for anything else."""
    from crowdloop.models.digest import files_added
    from crowdloop.storage import read_json

    if digest.entries is None:
        return None
    before = read_json(project.store, keys.pool_listing_key(recorded["sha256"]), default=None)
    if before is None:
        return None  # a project from before folders could grow: refused as any change
    return files_added(digest.entries, [tuple(e) for e in before["entries"]])


def write_pool_listing(project: Project, record: dict[str, Any] | None) -> None:
    """Keep the listing of a folder pool's files under its digest, before ``project.json`` names
    it: at creation the folder's files, after a growth the earlier listing plus the files added.
    Content-addressed, so a run that died after writing it writes the same again."""
    from crowdloop.models.digest import entries_sha256, folder_entries
    from crowdloop.storage import read_json, write_json_once

    if not record or not grows_by_files(record):
        return
    key = keys.pool_listing_key(record["sha256"])
    if project.store.exists(key):
        return
    grown = record.get("grown") or []
    if grown and "added" in grown[-1]:
        before = read_json(project.store, keys.pool_listing_key(grown[-1]["sha256"]))["entries"]
        entries = sorted([tuple(e) for e in before] + [tuple(e) for e in grown[-1]["added"]])
    else:
        entries = folder_entries(project.config.pool) or []
    if entries_sha256(entries) != record["sha256"]:
        # the folder changed since its digest was taken (or the digest is an older kind): no
        # listing, so any change is refused on the next run, as for a pool that cannot grow
        return
    write_json_once(project.store, key, {"entries": [list(e) for e in entries]})


def appended_ids(record: dict[str, Any]) -> tuple[str, ...]:
    """The ids of the files added to a folder pool, growth after growth (each growth's in name
    order): the rows that follow those the project started with."""
    return tuple(name for stage in record.get("grown") or [] for name, _ in stage.get("added", []))
