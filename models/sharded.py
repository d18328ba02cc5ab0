"""Pools stored as shards in a store (a local folder or ``s3://bucket/prefix``), read in chunks.

Layout under the pool URL, written once by :func:`write_sharded_pool`
(``crowdloop pool shard``) and never modified::

    pool.json            manifest: format, rows, features, classes, shards [{key, rows, sha256}]
    index.parquet        one row per item: id, label (ground truth or null)
    part-00000.npy ...   float32 features, ``rows_per_shard`` rows each

Ids and labels are small and read whole; the features never are. A shard is fetched from
the store the first time a row of it is needed, checked against the manifest's sha256, kept
in a local cache folder and memory-mapped from there, so a million-row pool on S3 costs
one GET per shard and memory bounded by the chunk being scored. Scoring streams shard by
shard (:meth:`ShardedRows.chunks`); training and evaluation read only the rows they use.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from crowdloop.config import PoolConfig
from crowdloop.errors import PoolError

FORMAT = "crowdloop-sharded-pool/1"
MANIFEST = "pool.json"
INDEX = "index.parquet"


def _open(url: str, *, create: bool):
    from crowdloop.storage import StoreError, open_store

    try:
        return open_store(url, create=create)
    except StoreError as exc:
        if not create:
            raise PoolError(f"pool.path: no sharded pool at {url!r} ({exc}); write one with `crowdloop pool shard`") from None
        raise PoolError(f"pool.path: cannot open {url!r}: {exc}") from None


def write_sharded_pool(
    url: str,
    X: np.ndarray,
    ids: np.ndarray,
    y: np.ndarray | None,
    *,
    classes: tuple[str, ...],
    feature_names: tuple[str, ...] = (),
    rows_per_shard: int = 100_000,
) -> dict:
    """Write a pool under ``url`` as float32 ``.npy`` shards plus a Parquet id/label index.

    Every object is written create-only and the manifest last, so a reader never sees a
    half-written pool and a rerun after a crash rewrites nothing that already landed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crowdloop.storage import RecordExistsError

    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, (int, np.integer)) or rows_per_shard < 1:
        raise PoolError(f"rows_per_shard={rows_per_shard!r}: expected a positive integer")
    X = np.asarray(X)
    if X.ndim != 2 or len(X) != len(ids) or (y is not None and len(y) != len(ids)):
        raise PoolError(f"pool: expected 2-D features with one row per id, got X {X.shape}, {len(ids)} ids")
    store = _open(url, create=True)
    if store.exists(MANIFEST):
        raise PoolError(f"pool.path: a sharded pool already exists at {url!r}; pools are immutable, write a new one")

    def put(key: str, data: bytes) -> None:
        try:
            store.write_bytes(key, data, create_only=True)
        except RecordExistsError:
            if store.read_bytes(key) != data:
                raise PoolError(f"pool.path: {key!r} at {url!r} exists with other content") from None

    shards = []
    for n, start in enumerate(range(0, len(X), int(rows_per_shard))):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(X[start : start + int(rows_per_shard)], dtype=np.float32))
        data = buf.getvalue()
        key = f"part-{n:05d}.npy"
        put(key, data)
        shards.append({"key": key, "rows": int(min(rows_per_shard, len(X) - start)),
                       "sha256": hashlib.sha256(data).hexdigest()})
    labels = None if y is None else [None if v is None else str(v) for v in y.tolist()]
    table = pa.table({"id": [str(v) for v in ids.tolist()], "label": pa.array(labels or [None] * len(ids), pa.string())})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put(INDEX, buf.getvalue())
    manifest = {"format": FORMAT, "rows": len(X), "features": list(feature_names) or [f"x{i}" for i in range(X.shape[1])],
                "classes": list(classes), "shards": shards}
    put(MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


class ShardedRows:
    """Rows ``index`` of a sharded pool's feature matrix, behaving enough like a 2-D array.

    Indexing (int, slice, integer or boolean array) returns a NumPy array of just those rows;
    ``chunks`` streams the rows shard by shard; ``np.asarray`` materializes everything (what a
    whole-pool fit asks for). ``take_view`` narrows the view without reading anything.
    """

    def __init__(self, source: _ShardSource, index: np.ndarray | None = None) -> None:
        self._source = source
        self._index = np.arange(source.n_rows, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self._index), self._source.n_features)

    ndim = 2
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self._index)

    def take_view(self, index: np.ndarray) -> ShardedRows:
        return ShardedRows(self._source, self._index[np.asarray(index)])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._source.rows(self._index[[int(key)]])[0]
        if isinstance(key, tuple):
            rows, cols = key[0], key[1:]
            return self[rows][(slice(None), *cols)]
        return self._source.rows(self._index[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._source.rows(self._index)
        return out if dtype is None else out.astype(dtype, copy=False)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` in order, at most ``chunk_size`` rows, never spanning shards."""
        bounds = self._source.bounds
        shard_of = np.searchsorted(bounds, self._index, side="right") - 1
        start = 0
        n = len(self._index)
        while start < n:
            shard = shard_of[start]
            stop = min(n, start + int(chunk_size))
            same = np.flatnonzero(shard_of[start:stop] != shard)
            if len(same):
                stop = start + int(same[0])
            yield start, self._source.rows(self._index[start:stop], stream=True)
            start = stop


class _ShardSource:
    """Fetches, verifies, caches and memory-maps the shards of one pool."""

    def __init__(self, url: str, manifest: dict, cache_dir: Path) -> None:
        self.url = url
        self.manifest = manifest
        self.shards = manifest["shards"]
        self.n_rows = int(manifest["rows"])
        self.n_features = len(manifest["features"])
        self.bounds = np.concatenate([[0], np.cumsum([s["rows"] for s in self.shards])]).astype(np.int64)
        self.cache_dir = cache_dir
        self.fetches = 0  # GETs of shard objects, for tests and benchmarks
        self._maps: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._store = None

    def __getstate__(self) -> dict:  # for process-based task runners: reopen maps and store there
        state = dict(self.__dict__)
        state.update(_maps={}, _lock=None, _store=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _shard(self, n: int) -> np.ndarray:
        with self._lock:
            if n in self._maps:
                return self._maps[n]
            shard = self.shards[n]
            path = self.cache_dir / f"{shard['sha256']}.npy"
            if not path.exists():
                if self._store is None:
                    self._store = _open(self.url, create=False)
                data = self._store.read_bytes(shard["key"])
                self.fetches += 1
                if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                    raise PoolError(f"pool.path: shard {shard['key']!r} at {self.url!r} does not match its manifest checksum")
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            array = np.load(path, mmap_mode="r")
            if array.shape != (shard["rows"], self.n_features):
                raise PoolError(f"pool.path: shard {shard['key']!r} has shape {array.shape}, "
                                f"manifest says ({shard['rows']}, {self.n_features})")
            self._maps[n] = array
            return array

    def rows(self, global_rows: np.ndarray, *, stream: bool = False) -> np.ndarray:
        """The feature rows ``global_rows`` (float32).

        ``stream=True`` (a scan in row order) reads the covered byte range with a plain file
        read instead of touching the memory map, so a pass over the whole pool does not leave
        every shard's pages resident in this process.
        """
        global_rows = np.asarray(global_rows, dtype=np.int64)
        out = np.empty((len(global_rows), self.n_features), dtype=np.float32)
        if not len(global_rows):
            return out
        shard_of = np.searchsorted(self.bounds, global_rows, side="right") - 1
        for n in np.unique(shard_of):
            at = np.flatnonzero(shard_of == n)
            local = global_rows[at] - self.bounds[n]
            shard = self._shard(int(n))
            if stream:
                first, last = int(local.min()), int(local.max()) + 1
                block = np.fromfile(shard.filename, dtype=shard.dtype, count=(last - first) * self.n_features,
                                    offset=shard.offset + first * self.n_features * shard.dtype.itemsize)
                block = block.reshape(-1, self.n_features)
                out[at] = block[local - first]
            else:
                out[at] = shard[local]
        return out


def _cache_dir(url: str) -> Path:
    root = Path(os.environ.get("CROWDLOOP_CACHE_DIR") or Path(tempfile.gettempdir()) / "crowdloop-cache")
    path = root / "pools" / hashlib.sha256(url.encode()).hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_sharded_pool(cfg: PoolConfig):
    """The pool under ``cfg.path`` (a folder or ``s3://bucket/prefix[?endpoint_url=...]``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from crowdloop.models.datasets import _finish
    from crowdloop.storage import KeyNotFoundError

    url = cfg.path or ""
    store = _open(url, create=False)
    try:
        manifest = json.loads(store.read_bytes(MANIFEST))
    except KeyNotFoundError:
        raise PoolError(f"pool.path: no sharded pool at {url!r} (missing {MANIFEST}; "
                        "write one with `crowdloop pool shard`)") from None
    except json.JSONDecodeError as exc:
        raise PoolError(f"pool.path: {MANIFEST} at {url!r} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise PoolError(f"pool.path: {MANIFEST} at {url!r} has format {found!r}, expected {FORMAT!r}")
    try:
        index = pq.read_table(io.BytesIO(store.read_bytes(INDEX)))
    except (KeyNotFoundError, pa.ArrowException) as exc:
        raise PoolError(f"pool.path: cannot read {INDEX} at {url!r}: {str(exc).splitlines()[0]}") from None
    if index.num_rows != manifest["rows"] or sum(s["rows"] for s in manifest["shards"]) != manifest["rows"]:
        raise PoolError(f"pool.path: {url!r} is inconsistent: index has {index.num_rows} rows, manifest {manifest['rows']}")
    ids = np.array(index.column("id").to_pylist(), dtype=object)
    labels = index.column("label").to_pylist()
    y = None if all(v is None for v in labels) else np.array(labels, dtype=object)
    if cfg.classes is None and manifest.get("classes"):
        cfg = cfg.model_copy(update={"classes": list(manifest["classes"])})
    X = ShardedRows(_ShardSource(url, manifest, _cache_dir(url)))
    return _finish(ids, X, y, cfg, manifest["features"])
