"""Chunked scoring with a running top-k: memory stays O(chunk_size + k) whatever the pool size."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from crowdloop._validation import check_batch_size
from crowdloop.errors import SamplerError
from crowdloop.rows import is_sparse, n_rows, row_range

ScoreFn = Callable[[np.ndarray], np.ndarray]


def check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise SamplerError(f"rng={rng!r}: expected a numpy.random.Generator (np.random.default_rng(seed))")
    return rng


def _top_k(scores: np.ndarray, keys: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """The ``k`` rows with the highest score; exact ties broken by the random ``keys``."""
    if len(scores) > k:
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= threshold
        scores, keys, index = scores[keep], keys[keep], index[keep]
    order = np.lexsort((keys, -scores))[:k]
    return scores[order], keys[order], index[order]


def score_top_k(
    model: object,
    X: np.ndarray,
    score_fn: ScoreFn,
    *,
    batch_size: int,
    rng: np.random.Generator,
    chunk_size: int = 8192,
) -> np.ndarray:
    """Indices of the ``batch_size`` rows of ``X`` with the highest ``score_fn(predict_proba)``.

    ``X`` may be a memory-mapped array: it is read ``chunk_size`` rows at a time. One random
    key per row is drawn in row order, so the result does not depend on ``chunk_size``.
    Time O(n · cost(predict_proba)), memory O(chunk_size · n_classes + batch_size).
    """
    return stream_top_k(model, X, score_fn, batch_size=batch_size, rng=rng, chunk_size=chunk_size)


# -- streaming over pools that do not fit in memory ------------------------------------------


class RowSource:
    """Rows of a pool read ``chunk_size`` at a time: an array (or ``np.memmap``), a SciPy sparse
    matrix (CSR row slices, never densified), a ``.npy`` file (memory-mapped, never loaded
    whole), a Parquet file (read one row group / batch at a time) or any object with its own
    ``chunks(chunk_size)`` (a sharded pool's rows; a text pool's rows, featurized per chunk).

    Parquet rows are the numeric ``columns`` (default: all) stacked as float32 features.
    """

    def __init__(self, source: object, *, columns: list[str] | None = None) -> None:
        self.columns = columns
        self._parquet = None
        self._chunked = None
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if path.endswith(".npy"):
                self._array = np.load(path, mmap_mode="r")
            elif path.endswith((".parquet", ".pq")):
                import pyarrow.parquet as pq

                self._parquet = pq.ParquetFile(path)
                self._array = None
            else:
                raise SamplerError(f"source={path!r}: expected a .npy or .parquet file, or an array")
        elif is_sparse(source):
            self._array = source.tocsr()
        elif hasattr(source, "chunks") and hasattr(source, "__len__"):  # e.g. a sharded or text pool's rows
            self._array = source
            self._chunked = source
        elif hasattr(source, "__len__") and hasattr(source, "__getitem__"):
            self._array = source
        else:
            raise SamplerError(f"source={source!r}: expected an array, a .npy path or a .parquet path")

    def __len__(self) -> int:
        if self._parquet is not None:
            return int(self._parquet.metadata.num_rows)
        return n_rows(self._array)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, rows)``; at most ``chunk_size`` rows (one Parquet batch) in memory."""
        if self._parquet is not None:
            start = 0
            for batch in self._parquet.iter_batches(batch_size=int(chunk_size), columns=self.columns):
                rows = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)])
                yield start, rows.astype(np.float32, copy=False)
                start += batch.num_rows
            return
        if self._chunked is not None:
            yield from self._chunked.chunks(int(chunk_size))
            return
        n = n_rows(self._array)
        for start in range(0, n, int(chunk_size)):
            yield start, row_range(self._array, start, min(n, start + int(chunk_size)))


def stream_top_k(
    model: object,
    source: object,
    score_fn: ScoreFn,
    *,
    batch_size: int,
    rng: np.random.Generator,
    chunk_size: int = 8192,
    exclude: np.ndarray | None = None,
    columns: list[str] | None = None,
) -> np.ndarray:
    """Global row indices of the ``batch_size`` best-scoring rows of a (possibly on-disk) pool.

    ``exclude`` is a boolean mask (or index array) of rows that must never be picked (labeled
    or already dispatched), so the caller does not have to copy the candidate rows out of a
    million-row memory map. Random tie-break keys are drawn for every row in row order, so the
    result depends neither on ``chunk_size`` nor on the storage format.
    Time O(n · cost(predict_proba)); memory O(chunk_size · (n_features + n_classes) + batch_size).
    """
    rng = check_rng(rng)
    rows = source if isinstance(source, RowSource) else RowSource(source, columns=columns)
    n = len(rows)
    mask = None
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.dtype == bool:
            if exclude.shape != (n,):
                raise SamplerError(f"exclude has shape {exclude.shape}: expected a boolean mask of shape ({n},)")
            mask = exclude
        else:
            mask = np.zeros(n, dtype=bool)
            if len(exclude) and (exclude.min() < 0 or exclude.max() >= n):
                raise SamplerError(f"exclude: indices must lie in [0, {n}), got range [{exclude.min()}, {exclude.max()}]")
            mask[exclude.astype(np.int64)] = True
    n_candidates = n - (int(mask.sum()) if mask is not None else 0)
    k = check_batch_size(batch_size, n_candidates)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise SamplerError(f"chunk_size={chunk_size!r}: expected a positive integer")
    best_scores = np.empty(0)
    best_keys = np.empty(0)
    best_index = np.empty(0, dtype=np.int64)
    for start, chunk in rows.chunks(int(chunk_size)):
        stop = start + n_rows(chunk)
        keys = rng.random(stop - start)
        index = np.arange(start, stop, dtype=np.int64)
        if mask is not None:
            keep = ~mask[start:stop]
            if not keep.any():
                continue
            chunk, keys, index = chunk[keep], keys[keep], index[keep]
        proba = np.asarray(model.predict_proba(chunk))
        scores = np.asarray(score_fn(proba), dtype=np.float64)
        if scores.shape != (n_rows(chunk),):
            raise SamplerError(f"score function returned shape {scores.shape}, expected ({n_rows(chunk)},)")
        best_scores, best_keys, best_index = _top_k(
            np.concatenate([best_scores, scores]),
            np.concatenate([best_keys, keys]),
            np.concatenate([best_index, index]),
            k,
        )
    return best_index
