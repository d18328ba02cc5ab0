"""Pool-scoring throughput with 1 vs 2 Dask workers: margin top-k over a memory-mapped pool.

Each worker scores contiguous shards of a memory-mapped .npy pool (1M rows × 64 float32
features, 10 classes by default) with ``crowdloop.samplers.scoring.score_top_k``; the client
merges the per-shard top-k, as ``engine.select`` does for sharded rounds.

    python benchmarks/dask_scoring.py --rows 1000000 --shards 8 --out benchmarks/results/dask_scoring.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def score_shard(path: str, start: int, stop: int, model, k: int, seed: int):
    from crowdloop.samplers.scoring import score_top_k
    from crowdloop.samplers.uncertainty import margin_sampling

    X = np.load(path, mmap_mode="r")
    rows = score_top_k(model, X[start:stop], margin_sampling.proba_score, batch_size=k,
                       rng=np.random.default_rng([seed, start]), chunk_size=65536)
    scores = margin_sampling.proba_score(model.predict_proba(np.asarray(X[start:stop][rows])))
    return (rows + start).tolist(), scores.tolist()


def main() -> None:
    from dask.distributed import Client, LocalCluster
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "pool.npy")
        X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.rows, args.features))
        for start in range(0, args.rows, 100_000):
            X[start:start + 100_000] = rng.normal(size=(min(100_000, args.rows - start), args.features))
        X.flush()
        y = rng.integers(10, size=2000)
        model = LogisticRegression(max_iter=300).fit(np.asarray(X[:2000]), y)
        bounds = np.linspace(0, args.rows, args.shards + 1).astype(int)
        results = []
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                remote_model = client.scatter(model, broadcast=True)
                times = []
                for rep in range(args.repeats):
                    start = time.perf_counter()
                    futures = [client.submit(score_shard, path, int(a), int(b), remote_model, args.batch, rep, pure=False)
                               for a, b in itertools.pairwise(bounds)]
                    parts = client.gather(futures)
                    rows = [(s, i) for idx, sc in parts for i, s in zip(idx, sc, strict=True)]
                    chosen = [i for s, i in sorted(rows, reverse=True)[: args.batch]]
                    times.append(time.perf_counter() - start)
                    assert len(set(chosen)) == args.batch
                best = min(times)
                results.append({"workers": workers, "rows": args.rows, "shards": args.shards, "batch": args.batch,
                                "seconds_best": round(best, 3), "seconds_all": [round(t, 3) for t in times],
                                "rows_per_second": round(args.rows / best)})
                print(f"{workers} worker(s): best {best:.2f} s, {args.rows / best / 1e6:.2f} M rows/s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
