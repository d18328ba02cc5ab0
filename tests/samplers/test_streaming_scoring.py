"""Streaming selection over on-disk pools: same picks as in memory, excluded rows never picked,
memory bounded by the chunk, not the pool."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from modAL.uncertainty import _proba_margin
from sklearn.linear_model import LogisticRegression

from crowdloop.errors import SamplerError
from crowdloop.samplers import margin_sampling
from crowdloop.samplers.scoring import RowSource, score_top_k, stream_top_k


def neg_margin(p):
    return -_proba_margin(p)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 8)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    model = LogisticRegression(max_iter=200).fit(X[:300], y[:300])
    d = tmp_path_factory.mktemp("pool")
    np.save(d / "X.npy", X)
    table = pa.table({f"f{i}": X[:, i] for i in range(X.shape[1])})
    pq.write_table(table, d / "X.parquet", row_group_size=700)
    return model, X, d


def test_npy_and_parquet_give_the_in_memory_picks(pool):
    model, X, d = pool
    expected = score_top_k(model, X, neg_margin, batch_size=25, rng=np.random.default_rng(5), chunk_size=5000)
    for source, chunk in ((d / "X.npy", 333), (str(d / "X.parquet"), 512), (np.load(d / "X.npy", mmap_mode="r"), 1000)):
        got = stream_top_k(model, source, neg_margin, batch_size=25, rng=np.random.default_rng(5), chunk_size=chunk)
        np.testing.assert_array_equal(np.sort(got), np.sort(expected))
    assert len(RowSource(d / "X.parquet")) == len(X)


def test_excluded_rows_are_never_picked(pool):
    model, X, d = pool
    best = stream_top_k(model, d / "X.npy", neg_margin, batch_size=50, rng=np.random.default_rng(0))
    excl = np.zeros(len(X), dtype=bool)
    excl[best[:30]] = True  # the 30 most uncertain rows are already labeled
    got = stream_top_k(model, d / "X.npy", neg_margin, batch_size=50, rng=np.random.default_rng(0), exclude=excl)
    assert not excl[got].any() and len(np.unique(got)) == 50
    assert set(best[30:].tolist()) <= set(got.tolist())
    same = stream_top_k(model, d / "X.npy", neg_margin, batch_size=50, rng=np.random.default_rng(0),
                        exclude=np.flatnonzero(excl))
    np.testing.assert_array_equal(got, same)
    with pytest.raises(SamplerError, match="larger than the pool of 10 unlabeled"):
        stream_top_k(model, X[:40], neg_margin, batch_size=11, rng=np.random.default_rng(0),
                     exclude=np.arange(30))


def test_memory_is_bounded_by_the_chunk_not_the_pool(tmp_path):
    n, d = 400_000, 16  # 25.6 MB of float32 on disk
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(1)
    for s in range(0, n, 100_000):
        mm[s : s + 100_000] = rng.normal(size=(100_000, d))
    mm.flush()
    del mm
    model = LogisticRegression(max_iter=100).fit(rng.normal(size=(200, d)), np.arange(200) % 4)
    tracemalloc.start()
    picked = stream_top_k(model, path, neg_margin, batch_size=100, rng=np.random.default_rng(0), chunk_size=4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(np.unique(picked)) == 100
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 25.6 MB pool"  # rng keys per chunk, not per pool


def test_margin_sampler_streams_a_memmap(pool):
    model, X, d = pool
    mm = np.load(d / "X.npy", mmap_mode="r")
    a = margin_sampling(model, mm, batch_size=10, rng=np.random.default_rng(2), chunk_size=999)
    b = margin_sampling(model, X, batch_size=10, rng=np.random.default_rng(2), chunk_size=8192)
    np.testing.assert_array_equal(np.sort(a), np.sort(b))
