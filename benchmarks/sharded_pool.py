"""Picking a batch from a 1M-row pool kept on S3 as shards, against the same pool in memory.

A pool of ``--rows`` × 64 float32 features (10 classes) is written with
``crowdloop.models.sharded.write_sharded_pool`` to a local S3-compatible server (moto's
standalone server on 127.0.0.1) in ``--rows-per-shard`` shards. Each measurement runs in
its own subprocess (peak RSS is the child's own ``VmHWM``, next to its RSS after imports): margin top-``--batch`` with
1000 rows excluded (already dispatched), via ``stream_top_k`` over

* ``s3-cold``: the sharded pool with an empty cache (every shard fetched from S3),
* ``s3-warm``: the same pool, shards memory-mapped from the local cache,
* ``in-memory``: the whole float32 matrix loaded into an array first (the old way),

plus ``predict_proba`` over the in-memory matrix as the floor.

    python benchmarks/sharded_pool.py --rows 1000000 --out benchmarks/results/sharded_pool.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, os, pickle, sys, time
import numpy as np
mode, url, model_path, batch, out = sys.argv[1:6]
from crowdloop.config import PoolConfig
from crowdloop.models.sharded import load_sharded_pool
from crowdloop.samplers.scoring import stream_top_k
from crowdloop.samplers.uncertainty import margin_sampling
def hwm_kb():  # this process's own peak RSS (ru_maxrss would carry the parent's over fork+exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
model = pickle.load(open(model_path, "rb"))
base_mb = hwm_kb() / 1024
start = time.perf_counter()
pool = load_sharded_pool(PoolConfig(source="sharded", path=url, classes=[str(i) for i in range(10)]))
X = pool.X if mode.startswith("s3") else np.asarray(pool.X)
loaded = time.perf_counter() - start
exclude = np.zeros(len(pool), dtype=bool); exclude[:: len(pool) // 1000] = True
t = time.perf_counter()
if mode == "floor":
    model.predict_proba(X)
    picked = []
else:
    picked = stream_top_k(model, X, margin_sampling.proba_score, batch_size=int(batch), rng=np.random.default_rng(0),
                          chunk_size=65536, exclude=exclude).tolist()
seconds = time.perf_counter() - t
fetches = pool.X._source.fetches
json.dump({"mode": mode, "open_seconds": round(loaded, 3), "select_seconds": round(seconds, 3),
           "total_seconds": round(loaded + seconds, 3), "shard_fetches": fetches, "baseline_rss_mb": round(base_mb, 1),
           "peak_rss_mb": round(hwm_kb() / 1024, 1), "picked": picked},
          open(out, "w"))
"""


ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    sys.path.insert(0, str(ROOT))  # the local S3 test server lives under tests/
    import boto3
    from sklearn.linear_model import LogisticRegression

    from crowdloop.models.sharded import write_sharded_pool
    from tests.s3_server import local_s3_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-shard", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    with local_s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        url = f"s3://bench/pool?endpoint_url={endpoint}"
        rng = np.random.default_rng(0)
        centers = rng.normal(size=(10, 64)).astype(np.float32)
        labels = rng.integers(0, 10, size=args.rows)
        X = (centers[labels] + rng.normal(scale=2.0, size=(args.rows, 64))).astype(np.float32)
        ids = np.array([f"r{i:07d}" for i in range(args.rows)], dtype=object)
        t = time.perf_counter()
        manifest = write_sharded_pool(url, X, ids, labels.astype(str).astype(object), classes=tuple(str(i) for i in range(10)),
                                      rows_per_shard=args.rows_per_shard)
        write_seconds = time.perf_counter() - t
        model = LogisticRegression(max_iter=300).fit(X[:2000], labels[:2000].astype(str))
        del X
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            model_path = str(Path(tmp) / "model.pkl")
            Path(model_path).write_bytes(pickle.dumps(model))
            cache = str(Path(tmp) / "cache")
            for mode in ("s3-cold", "s3-warm", "in-memory", "floor"):
                out = str(Path(tmp) / f"{mode}.json")
                env = dict(os.environ, CROWDLOOP_CACHE_DIR=cache, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
                subprocess.run([sys.executable, "-c", CHILD, mode, url, model_path, str(args.batch), out], env=env, check=True)
                results.append(json.loads(Path(out).read_text()))
                print({k: v for k, v in results[-1].items() if k != "picked"}, flush=True)
    same = results[0]["picked"] == results[1]["picked"] == results[2]["picked"]
    report = {"rows": args.rows, "features": 64, "rows_per_shard": args.rows_per_shard, "shards": len(manifest["shards"]),
              "batch": args.batch, "write_seconds": round(write_seconds, 2), "same_picks": same,
              "results": [{k: v for k, v in r.items() if k != "picked"} for r in results],
              "machine": f"{os.cpu_count()} cores, shared (other jobs running)"}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
